"""Captions -> umT5 embeddings, as Wan 2.1 conditions its DiT (model.text_encoder='umt5').

An imported umT5 (`relic import-umt5 --source=DIR --out=OUT`) is a params-only checkpoint
(relic_jax/weights/store.py) plus OUT/tokenizer/, the checkpoint's own tokenizer files. The
tokenizer is umT5's SentencePiece (Unigram) model in Hugging Face's `tokenizer.json` form, run
by the maintained `tokenizers` library. It is used as Wan's text encoder calls it
(`padding="max_length", truncation=True, add_special_tokens=True` at data.text_len tokens):
the text is cleaned (HTML entities unescaped twice, runs of whitespace collapsed, stripped),
tokenized, `</s>` appended, cut to text_len tokens and padded with `<pad>`; the encoder's
output is zeroed past the caption's tokens (Wan cuts each context to its length and the DiT
zero-pads it back to text_len, which is the same input). Wan also runs `ftfy.fix_text` to
repair mis-decoded Unicode; we do not (captions are taken as valid UTF-8).

`TextEncoder(path, text_len)` holds the tokenizer and the params on the config's mesh (sharded
by the umT5's logical axes under the config's rules) and a jitted encode, compiled once per
batch size: `encoder(["a caption", ...])` -> float32 [N, text_len, d_model]. The null text of
classifier-free guidance and of caption dropout is `encoder([""])`, the embedding of the empty
caption (its `</s>` token's hidden state, then zeros): what the diffusers Wan pipeline feeds
the unconditional branch when no negative prompt is given (training/teacher.py).
"""

import dataclasses
import functools
import hashlib
import html
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from relic_jax import checkpoint as ckpt_lib
from relic_jax.models.umt5 import UMT5Config, UMT5Encoder
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.parallel.sharding import abstract_params
from relic_jax.weights.store import load_params

TOKENIZER_DIR = "tokenizer"  # inside an imported umT5
# What a Hugging Face tokenizer directory holds; tokenizer.json is the one read.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model")


class TextEncoderError(ValueError):
  """The umT5 text encoder or its tokenizer cannot be loaded or used as configured."""


def clean(text: str) -> str:
  """Wan's caption cleaning, without ftfy: HTML entities unescaped (twice), whitespace runs
  collapsed to one space, the ends stripped."""
  return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def find_tokenizer(source: str) -> str | None:
  """The directory holding a checkpoint's tokenizer.json: source itself, source/tokenizer, or
  its sibling ../tokenizer (a diffusers Wan pipeline keeps text_encoder/ and tokenizer/ side
  by side); None if there is none."""
  for d in (source, os.path.join(source, TOKENIZER_DIR),
            os.path.join(os.path.dirname(os.path.abspath(source)), TOKENIZER_DIR)):
    if os.path.isfile(os.path.join(d, "tokenizer.json")):
      return d
  return None


def tokenizer_files(directory: str) -> dict[str, str]:
  """{file name: path} of the tokenizer files present in directory (TOKENIZER_FILES)."""
  return {n: os.path.join(directory, n) for n in TOKENIZER_FILES
          if os.path.isfile(os.path.join(directory, n))}


class Tokenizer:
  """A Hugging Face tokenizer.json (umT5's SentencePiece Unigram model) run by `tokenizers`:
  texts -> (ids [B, length] int32, mask [B, length] int32), as Wan's tokenizer call."""

  def __init__(self, directory: str):
    import tokenizers  # noqa: PLC0415 (only where captions are encoded)
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      extra = (" (it holds spiece.model, the SentencePiece model, but not its tokenizer.json)"
               if os.path.isfile(os.path.join(directory, "spiece.model")) else "")
      raise TextEncoderError(
          f"no tokenizer.json in {directory}{extra}. Fix: use the checkpoint's Hugging Face "
          "tokenizer directory (google/umt5-xxl's, or the tokenizer/ folder of a diffusers Wan "
          "pipeline), or write one with transformers: AutoTokenizer.from_pretrained(DIR)"
          ".save_pretrained(DIR).")
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library's own parse error, whatever its class
      raise TextEncoderError(f"{path} is not a tokenizer.json `tokenizers` can read ({e}). "
                             "Fix: use the checkpoint's own tokenizer files.") from None
    pad = "<pad>"  # umT5's; a directory's own settings name it
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
      p = os.path.join(directory, name)
      if os.path.isfile(p):
        with open(p) as f:
          p = json.load(f).get("pad_token") or pad
        pad = p["content"] if isinstance(p, dict) else p
    self.pad_token = pad
    self.pad_id = self._tok.token_to_id(pad)
    if self.pad_id is None:
      raise TextEncoderError(f"the tokenizer in {directory} has no pad token {pad!r}. Fix: use "
                             "umT5's tokenizer (<pad> = 0, </s> = 1).")
    with open(path, "rb") as f:
      self.fingerprint = hashlib.sha256(f.read()).hexdigest()[:16]

  def __call__(self, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    tok = self._tok
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=self.pad_id, pad_token=self.pad_token)
    enc = tok.encode_batch([clean(t) for t in texts], add_special_tokens=True)
    ids = np.array([e.ids for e in enc], np.int32).reshape(len(texts), length)
    mask = np.array([e.attention_mask for e in enc], np.int32).reshape(len(texts), length)
    return ids, mask


def read_config(path: str) -> UMT5Config:
  """The UMT5Config of an imported umT5 (its model_config.json)."""
  cfg_path = os.path.join(path, "model_config.json")
  if not os.path.isfile(os.path.join(path, "meta.json")) or not os.path.isfile(cfg_path):
    raise TextEncoderError(
        f"{os.path.abspath(path)} holds no imported umT5 (model_config.json / meta.json "
        "missing: not an import, or an interrupted one). Fix: run `relic import-umt5 "
        "--source=<umT5 checkpoint> --out=DIR` and set config.model.text_encoder_from=DIR.")
  with open(cfg_path) as f:
    raw = json.load(f)
  names = {f.name for f in dataclasses.fields(UMT5Config)}
  if not {"vocab_size", "d_model", "num_layers"} <= set(raw):
    raise TextEncoderError(f"{cfg_path} is not a umT5 config (it has {sorted(raw)[:6]}...). "
                           "Fix: point config.model.text_encoder_from at `relic import-umt5`'s "
                           "--out, not at another import.")
  return UMT5Config(**{k: v for k, v in raw.items() if k in names})


def load_umt5(path: str, mesh, rules, dtype: str | None = None):
  """(UMT5Config, params) of an imported umT5, restored straight into the mesh's shardings
  (the umT5's logical axes under `rules`); dtype overrides the compute dtype."""
  saved = read_config(path)
  cfg = dataclasses.replace(saved, dtype=dtype) if dtype else saved
  init = functools.partial(_init, cfg)
  abstract = abstract_params(init, mesh, rules)
  meta = ckpt_lib.describe_model(dataclasses.asdict(saved), abstract)
  return cfg, load_params(path, abstract, meta)


def _init(cfg: UMT5Config, rng):
  ids = jnp.zeros((1, 2), jnp.int32)
  return UMT5Encoder(cfg).init(rng, ids, jnp.ones_like(ids))["params"]


class TextEncoder:
  """Captions -> umT5 embeddings [N, text_len, d_model] float32 with an imported umT5 (params
  on the mesh) and its tokenizer; `fingerprint` names both (the latent cache records it)."""

  def __init__(self, path: str, text_len: int, mesh, rules, dtype: str | None = None,
               batch_size: int = 8):
    path = os.path.abspath(path)
    tok_dir = os.path.join(path, TOKENIZER_DIR)
    if not os.path.isdir(tok_dir):
      read_config(path)  # the clearer error first when the folder is no import at all
      raise TextEncoderError(f"{path} has no {TOKENIZER_DIR}/ folder. Fix: import the umT5 "
                             "again with `relic import-umt5`, which copies the checkpoint's "
                             "tokenizer files.")
    self.tokenizer = Tokenizer(tok_dir)
    self.config, self.params = load_umt5(path, mesh, rules, dtype)
    self.text_len, self.batch_size, self._mesh = int(text_len), int(batch_size), mesh
    self.dim = self.config.d_model
    with open(os.path.join(path, "meta.json"), "rb") as f:
      params_hash = hashlib.sha256(f.read()).hexdigest()[:16]
    self.fingerprint = f"umt5:{params_hash}:{self.tokenizer.fingerprint}"
    model = UMT5Encoder(self.config)
    self._apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))

  def __call__(self, captions: list[str]) -> np.ndarray:
    out = []
    for s in range(0, len(captions), self.batch_size):
      part = list(captions[s:s + self.batch_size])
      n = len(part)
      part += [""] * (self.batch_size - n)  # one compiled batch size
      ids, mask = self.tokenizer(part, self.text_len)
      with jax.set_mesh(self._mesh):
        out.append(np.asarray(self._apply(self.params, ids, mask))[:n])
    if not out:
      return np.zeros((0, self.text_len, self.dim), np.float32)
    return np.concatenate(out)


def from_config(cfg, batch_size: int = 8) -> TextEncoder:
  """The TextEncoder of config.model.text_encoder_from on the config's mesh, in
  config.model.dtype."""
  path = cfg.model.text_encoder_from
  if not path:
    raise TextEncoderError(
        "config.model.text_encoder='umt5' needs config.model.text_encoder_from, the umT5 "
        "imported by `relic import-umt5`. Fix: run `relic import-umt5 --source=<umT5 "
        "checkpoint> --out=DIR`, then pass --config.model.text_encoder_from=DIR.")
  return TextEncoder(path, cfg.data.text_len, mesh_lib.make_mesh(cfg.mesh),
                     mesh_lib.rules(cfg.mesh), cfg.model.dtype, batch_size)
