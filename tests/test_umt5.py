"""The umT5 / T5 v1.1 text encoder (relic_jax/models/umt5.py), its import
(relic_jax/weights/umt5.py) and the captions -> embeddings path (relic_jax/inference/text.py):
random small `transformers` encoders of several shapes give the same hidden states within 1e-4
in float32, padding included; a wrong checkpoint is refused naming the tensor; the tokenizer
gives the ids `transformers` gives with Wan's call; the imported encoder with its tokenizer
encodes captions as transformers does, on one device and sharded over a mesh."""

import dataclasses
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from relic_jax.models import umt5 as umt5_lib  # noqa: E402
from relic_jax.weights.umt5 import UMT5ImportError, import_umt5, umt5_encode  # noqa: E402

SHAPES = [  # (d_model, d_kv, d_ff, layers, heads, buckets, max_distance, length)
    (40, 12, 72, 3, 5, 16, 20, 45),   # past max_distance: the log-spaced and the last buckets
    (33, 7, 50, 2, 3, 32, 128, 19),   # odd sizes, T5's default buckets
    (64, 16, 96, 1, 4, 8, 9, 30),
]


CORPUS = ["a red door in a grey corridor", "the camera turns left toward a lit room",
          "stone walls, a wooden crate and a blue light", "first-person view of a maze"]


def save_tokenizer(directory: str, vocab_size: int = 90) -> str:
  """A small Unigram tokenizer (umT5's kind: Metaspace, <pad> 0, </s> 1 appended, <unk> 2),
  trained on CORPUS and saved by transformers as a tokenizer directory."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.Unigram())
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(CORPUS * 20, trainers.UnigramTrainer(
      vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
  tok.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
      unk_token="<unk>").save_pretrained(directory)
  return directory


def _hf(kind, shape, seed):
  d, dkv, dff, layers, heads, buckets, maxd, _ = shape
  torch.manual_seed(seed)
  cls, cfg_cls = ((transformers.UMT5EncoderModel, transformers.UMT5Config) if kind == "umt5"
                  else (transformers.T5EncoderModel, transformers.T5Config))
  cfg = cfg_cls(vocab_size=101, d_model=d, d_kv=dkv, d_ff=dff, num_layers=layers,
                num_heads=heads, relative_attention_num_buckets=buckets,
                relative_attention_max_distance=maxd, feed_forward_proj="gated-gelu",
                dropout_rate=0.0)
  model = cls(cfg).eval()
  return model, cfg.to_dict(), {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["umt5", "t5"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}x{s[3]}L{s[-1]}")
def test_hidden_states_match_transformers(kind, shape):
  model, hf_cfg, sd = _hf(kind, shape, seed=shape[0])
  length = shape[-1]
  ids = torch.randint(1, 101, (3, length))
  mask = torch.ones(3, length, dtype=torch.long)
  mask[1, length // 2:] = 0
  mask[2, 3:] = 0
  with torch.no_grad():
    ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  ref = ref * mask.numpy()[..., None]  # Wan zeroes the padding positions
  cfg, params = import_umt5(sd, hf_cfg)
  assert cfg.per_layer_bias == (kind == "umt5" or shape[3] == 1)
  # an encoder saved without the shared table keeps it as encoder.embed_tokens
  renamed = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v
             for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
  np.testing.assert_array_equal(import_umt5(renamed, hf_cfg)[1]["token_embedding"]["embedding"],
                                params["token_embedding"]["embedding"])
  out = np.asarray(umt5_encode(cfg, params, ids.numpy(), mask.numpy()))
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  assert not out[2, 3:].any()


def test_scanned_and_unrolled_layers_agree_and_bf16_stays_close():
  _, hf_cfg, sd = _hf("umt5", SHAPES[0], seed=1)
  cfg, params = import_umt5(sd, hf_cfg)
  ids = np.random.default_rng(0).integers(1, 101, (2, 17)).astype(np.int32)
  mask = np.ones((2, 17), np.int32)
  scanned = np.asarray(umt5_encode(cfg, params, ids, mask))
  unrolled_cfg = dataclasses.replace(cfg, scan_layers=False)
  layers = params["layers"]
  unrolled = {k: v for k, v in params.items() if k != "layers"}
  for i in range(cfg.num_layers):
    unrolled[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], layers)
  np.testing.assert_allclose(np.asarray(umt5_encode(unrolled_cfg, unrolled, ids, mask)),
                             scanned, atol=1e-5)
  bf16 = np.asarray(umt5_encode(dataclasses.replace(cfg, dtype="bfloat16"), params, ids, mask))
  assert bf16.dtype == np.float32
  assert np.abs(bf16 - scanned).max() < 0.05 * np.abs(scanned).max()


def test_relative_buckets_are_transformers():
  from transformers.models.t5.modeling_t5 import T5Attention
  for buckets, maxd, length in ((32, 128, 300), (16, 20, 45), (8, 9, 12)):
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets,
                                                max_distance=maxd).numpy()
    np.testing.assert_array_equal(
        np.asarray(umt5_lib.relative_buckets(length, length, buckets, maxd)), ref)


def test_a_wrong_checkpoint_is_refused_naming_the_tensor():
  _, hf_cfg, sd = _hf("umt5", SHAPES[1], seed=2)
  missing = dict(sd)
  del missing["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
  with pytest.raises(UMT5ImportError, match=r"no tensor 'encoder.block.1.layer.1.DenseReluDense"):
    import_umt5(missing, hf_cfg)
  with pytest.raises(UMT5ImportError, match=r"'encoder.block.0.layer.0.SelfAttention.q.weight' has "
                     r"shape \(21, 33\), the config.json implies \(24, 33\)"):
    import_umt5(sd, {**hf_cfg, "num_heads": 4, "d_kv": 6})
  with pytest.raises(UMT5ImportError, match="gated GELU"):
    import_umt5(sd, {**hf_cfg, "feed_forward_proj": "relu", "dense_act_fn": "relu"})


def test_relic_import_umt5_writes_params_that_encode_the_same(tmp_path):
  """`relic import-umt5 --source=DIR --out=DIR` on a saved transformers checkpoint
  (safetensors + config.json): the written params encode as the state dict's do; a folder
  without a umT5 checkpoint is refused with relic's error, not a traceback."""
  from relic_jax import checkpoint as ckpt_lib
  from relic_jax.weights.store import load_params
  from tests.helpers import run_cli
  model, hf_cfg, sd = _hf("umt5", SHAPES[1], seed=3)
  src, out = str(tmp_path / "umt5"), str(tmp_path / "imported")
  model.save_pretrained(src, safe_serialization=True)
  save_tokenizer(src)
  r = run_cli("import-umt5", "--config=experiments/tiny.py", f"--source={src}", f"--out={out}")
  assert r.returncode == 0, r.stderr
  assert "imported the umT5 encoder" in r.stdout
  cfg, want = import_umt5(sd, hf_cfg)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), want)
  got = load_params(out, abstract, ckpt_lib.describe_model(dataclasses.asdict(cfg), abstract))
  ids = np.arange(1, 11, dtype=np.int32)[None]
  mask = np.ones_like(ids)
  np.testing.assert_array_equal(np.asarray(umt5_encode(cfg, got, ids, mask)),
                                np.asarray(umt5_encode(cfg, want, ids, mask)))
  bad = run_cli("import-umt5", "--config=experiments/tiny.py", f"--source={tmp_path}",
                f"--out={out}2")
  assert bad.returncode == 2 and "relic: error:" in bad.stderr, bad.stderr[-500:]
  os.remove(os.path.join(src, "config.json"))
  bad = run_cli("import-umt5", "--config=experiments/tiny.py", f"--source={src}",
                f"--out={out}3")
  assert bad.returncode == 2 and "config.json has no 'vocab_size'" in bad.stderr, bad.stderr[-500:]


def test_tokenizer_is_wans_call_of_transformers(tmp_path):
  """Our tokenizer (the `tokenizers` library on tokenizer.json) gives the ids and mask that
  transformers' AutoTokenizer gives with Wan's call (max_length padding, truncation, </s>),
  on Wan's cleaned text; a long caption keeps </s> as its last token."""
  from relic_jax.inference.text import Tokenizer, TextEncoderError, clean
  d = save_tokenizer(str(tmp_path / "tok"))
  texts = ["a red door", "", "  the camera\n turns &amp;amp; left ", " ".join(CORPUS)]
  ours = Tokenizer(d)
  ids, mask = ours(texts, 16)
  ref = transformers.AutoTokenizer.from_pretrained(d)(
      [clean(t) for t in texts], padding="max_length", truncation=True, max_length=16,
      add_special_tokens=True)
  np.testing.assert_array_equal(ids, np.asarray(ref["input_ids"]))
  np.testing.assert_array_equal(mask, np.asarray(ref["attention_mask"]))
  assert clean("  the camera\n turns &amp;amp; left ") == "the camera turns & left"
  assert ids[1].tolist() == [1] + [0] * 15 and ids[3, -1] == 1 and mask[3].all()
  assert ours.pad_id == 0 and ids.dtype == np.int32
  os.remove(os.path.join(d, "tokenizer.json"))
  with pytest.raises(TextEncoderError, match="no tokenizer.json"):
    Tokenizer(d)


def test_text_encoder_encodes_captions_as_transformers_on_one_device_and_sharded(tmp_path):
  """`relic import-umt5` with the tokenizer beside the weights, then TextEncoder: captions ->
  the transformers model's hidden states of the tokenized captions (padding zeroed), the same
  on a (fsdp 4, tensor 2) mesh with the params sharded by their logical axes."""
  from relic_jax.inference.text import TextEncoder
  from relic_jax.parallel import mesh as mesh_lib
  from relic_jax.config import get_base_config
  from tests.helpers import run_cli
  model, _, _ = _hf("umt5", (40, 10, 72, 3, 4, 16, 20, 0), seed=5)  # 4 heads: 2 per shard
  src = str(tmp_path / "pipe" / "text_encoder")
  model.save_pretrained(src, safe_serialization=True)
  save_tokenizer(str(tmp_path / "pipe" / "tokenizer"))  # a diffusers pipeline's layout
  out = str(tmp_path / "umt5")
  r = run_cli("import-umt5", "--config=experiments/tiny.py", f"--source={tmp_path / 'pipe'}",
              f"--out={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert sorted(os.listdir(os.path.join(out, "tokenizer"))) == ["tokenizer.json",
                                                               "tokenizer_config.json"]
  captions = ["a red door in a grey corridor", "", "stone walls"]
  enc = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "pipe" / "tokenizer"))(
      captions, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  with torch.no_grad():
    ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  ref = ref * mask.numpy()[..., None]

  def encoder(shape):
    ms = get_base_config().mesh
    ms.shape.update(shape)
    return TextEncoder(out, 24, mesh_lib.make_mesh(ms), mesh_lib.rules(ms), batch_size=2)

  one = encoder({"data": 8, "fsdp": 1, "context": 1, "tensor": 1})  # params replicated
  got = one(captions)
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
  assert got.shape == (3, 24, 40) and not got[1, 1:].any() and got[1, 0].any()
  sharded = encoder({"data": 1, "fsdp": 4, "context": 1, "tensor": 2})
  q = sharded.params["layers"]["q"]["kernel"]
  assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape == (3, 10, 20)
  np.testing.assert_allclose(sharded(captions), got, atol=1e-5, rtol=0)
  assert sharded.fingerprint == one.fingerprint


def test_import_umt5_needs_its_tokenizer(tmp_path):
  model, _, _ = _hf("umt5", SHAPES[1], seed=6)
  src = str(tmp_path / "umt5")
  model.save_pretrained(src, safe_serialization=True)
  from tests.helpers import run_cli
  r = run_cli("import-umt5", "--config=experiments/tiny.py", f"--source={src}",
              f"--out={tmp_path / 'out'}")
  assert r.returncode == 2 and "no tokenizer.json in" in r.stderr, r.stderr[-800:]
  assert not os.path.exists(tmp_path / "out")


def test_a_missing_or_wrong_text_encoder_from_is_named(tmp_path):
  import experiments.tiny as tiny
  from relic_jax.inference.text import TextEncoderError, from_config
  cfg = tiny.get_config()
  cfg.model.text_encoder = "umt5"
  with pytest.raises(TextEncoderError, match=r"needs config.model.text_encoder_from.*Fix: run "
                                             r"`relic import-umt5"):
    from_config(cfg)
  cfg.model.text_encoder_from = str(tmp_path)
  with pytest.raises(TextEncoderError, match=r"holds no imported umT5"):
    from_config(cfg)
