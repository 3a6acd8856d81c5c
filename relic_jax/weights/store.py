"""Params-only checkpoints: what `relic import-wan` writes and `config.train.init_from` reads.

OUT/params/          Orbax checkpoint of the params pytree (sharded writes where the arrays are)
OUT/tokenizer/       (an imported umT5 only) the checkpoint's tokenizer files
OUT/model_config.json  the model config (`config.model` fields) the params belong to
OUT/meta.json        format, model config and param shapes (checked on restore); written last,
                     so a directory without it is an interrupted import
"""

import json
import os
import shutil

import ml_collections
import orbax.checkpoint as ocp

from relic_jax import checkpoint as ckpt_lib
from relic_jax.io_utils import write_json_atomic


def save_params(out: str, model_cfg: ml_collections.ConfigDict, model_meta: dict, params,
                extra: dict | None = None, files: dict[str, str] | None = None) -> None:
  """Writes params (numpy or sharded jax arrays) to `out`, replacing an incomplete earlier
  attempt; refuses to overwrite a complete one. files: {path inside out: source file} copied
  in before meta.json (an imported text encoder's tokenizer)."""
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, "meta.json")):
    raise ckpt_lib.CheckpointError(f"{out} already holds imported params. Fix: choose another "
                                   "--out, or delete it to import again.")
  if os.path.exists(out):
    shutil.rmtree(out)  # an interrupted import: start over
  os.makedirs(out)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out, "params"), params)
  checkpointer.wait_until_finished()
  checkpointer.close()
  for rel, src in (files or {}).items():
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    shutil.copyfile(src, os.path.join(out, rel))
  write_json_atomic(os.path.join(out, "model_config.json"),
                             json.loads(model_cfg.to_json()))
  write_json_atomic(os.path.join(out, "meta.json"), {**model_meta, **(extra or {})})


def load_params(path: str, target, expected_meta: dict):
  """Restores params saved by `save_params` into `target` (ShapeDtypeStructs carrying the
  wanted shardings), after checking they belong to the expected model."""
  path = os.path.abspath(path)
  meta_path = os.path.join(path, "meta.json")
  if not os.path.isfile(meta_path):
    raise ckpt_lib.CheckpointError(
        f"{path} holds no imported params (no meta.json: missing, or an interrupted import). "
        "Fix: run `relic import-wan --source=... --out=...` to completion, or fix "
        "config.train.init_from.")
  with open(meta_path) as f:
    meta = json.load(f)
  ckpt_lib.check_compatible(meta, expected_meta, path)
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(os.path.join(path, "params"), target)
  checkpointer.close()
  return params

