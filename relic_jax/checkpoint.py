"""Orbax checkpoints holding everything a run needs to continue: the train state (params, EMA
params, optimizer state, step), the data iterator's state, and metadata describing the model.

Every save is atomic (Orbax writes to a temporary directory and renames it when complete), so a
kill at any moment leaves the previous checkpoints intact. A restore reads the metadata first
and refuses, with a clear message, a checkpoint written by a different model. The state is
restored into an abstract target that carries the *current* mesh's shardings, so a run can
resume on a different mesh or device count.

For inference and for the stages that read a finished stage's weights, `load_latest_params` restores
only one params sub-tree of a saved state (`params`, `ema_params`, `gen_ema`, ...) into an
abstract params tree, without building an optimizer or a train state (maxtext's
`checkpointing.load_params_from_path` does the same): Orbax reads only that sub-tree's arrays.
"""

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from relic_jax.io_utils import one_line

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used with this run; the message says why and what to do."""


class CheckpointWriteError(CheckpointError):
  """Writing a checkpoint failed (disk full, directory gone, no permission): the run stops at
  once; Orbax's background threads may still be failing, so the CLI exits without waiting."""


def param_shapes(params) -> dict[str, list[int]]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


def describe_model(model_cfg: dict, params) -> dict:
  return {"format": FORMAT_VERSION, "model": model_cfg, "param_shapes": param_shapes(params)}


def check_compatible(found: dict, expected: dict, where: str) -> None:
  if found.get("format") != FORMAT_VERSION:
    raise CheckpointError(f"{where}: checkpoint format {found.get('format')!r} is not "
                          f"{FORMAT_VERSION}. Fix: restore it with the relic_jax version that "
                          "wrote it, or start a fresh --workdir.")
  a, b = found.get("param_shapes", {}), expected["param_shapes"]
  if a == b:
    return
  diff = model_differences(found.get("model", {}), expected["model"])
  missing = sorted(set(b) - set(a))
  unexpected = sorted(set(a) - set(b))
  shape = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
  detail = []
  if shape:
    detail.append(f"param {shape[0]} has shape {a[shape[0]]} in the checkpoint but "
                  f"{b[shape[0]]} in this model")
  if missing:
    detail.append(f"param {missing[0]} is missing from the checkpoint")
  if unexpected:
    detail.append(f"the checkpoint has param {unexpected[0]} this model lacks")
  raise CheckpointError(
      f"{where} was written by a different model ({'; '.join(detail)}). "
      + (f"Config differences: {diff}. " if diff else "")
      + "Fix: use the config that wrote it, or a fresh --workdir.")


def model_differences(found: dict, expected: dict) -> str:
  """The model config fields a checkpoint (found) and a config (expected) disagree on, beyond
  the layout-only ones, as "model.k: checkpoint a, config b; ..." ("" when none)."""
  # The checkpoint's copy went through JSON (tuples became lists); compare like with like.
  expected = json.loads(json.dumps(expected))
  fields = sorted(k for k in set(found) | set(expected)
                  if found.get(k) != expected.get(k) and k not in ("scan_layers", "remat_policy"))
  return "; ".join(f"model.{k}: checkpoint {found.get(k)!r}, config {expected.get(k)!r}"
                   for k in fields)


def check_model(run_dir: str, model_cfg: dict) -> None:
  """Refuses a run directory whose latest checkpoint was written by another model (its
  recorded model config differs from model_cfg beyond the layout-only fields): what a
  finished run that is skipped, not restored, still has to check."""
  step = latest_step(run_dir)
  if step is None:
    return
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), 1, async_save=False)
  try:
    where, meta = ckpt.read_meta(step)
  finally:
    ckpt.close()
  diff = model_differences(meta.get("model", {}), model_cfg)
  if diff:
    raise CheckpointError(f"{where} was written by a different model ({diff}). Fix: use the "
                          "config that wrote it, or a fresh --workdir.")


def has_checkpoint(run_dir: str) -> bool:
  """Whether a run directory (a stage's workdir) holds at least one saved step."""
  d = os.path.join(run_dir, "checkpoints")
  return os.path.isdir(d) and any(x.isdigit() for x in os.listdir(d))


def latest_step(run_dir: str) -> int | None:
  """The latest step saved in run_dir/checkpoints, None when there is none."""
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    return None  # (opening a Checkpointer would create the directory)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), 1, async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with items state / data / meta."""

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    """Saves step (in the background when async); a failed write, this one's or the previous
    background one's, is a CheckpointError: one line, naming the directory and the latest
    complete step, and the run stops there."""
    if self._saving is not None:
      self.wait()  # the previous background write's failure is that step's, not this one's
    self._saving = step
    try:
      self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # OSError, tensorstore's ValueError, orbax's own: all one failure
      raise self._write_failed(step, e) from None

  def _write_failed(self, step: int, e: Exception) -> CheckpointError:
    self._failed = True
    cause = one_line(e)
    try:
      done = [s for s in self._mngr.all_steps() if s != step]
    except Exception:  # noqa: BLE001 (the directory itself may be gone)
      done = []
    latest = max(done) if done else None
    return CheckpointWriteError(
        f"writing the checkpoint of step {step} to {self.directory} failed "
        f"({type(e).__name__}: {cause}). Fix: check that the disk has space and that the "
        "directory exists and is writable, then rerun the same command: it resumes from "
        + (f"step {latest}, the latest complete checkpoint." if latest is not None else
           "the start (no complete checkpoint)."))

  def read_meta(self, step: int) -> tuple[str, dict]:
    """(the step's path, its metadata); a CheckpointError when it cannot be read."""
    where = os.path.join(self.directory, str(step))
    try:
      meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # unreadable metadata: corrupt or foreign directory
      raise CheckpointError(f"{where}: cannot read the checkpoint metadata ({e}). Fix: delete "
                            "this step directory to fall back to an older one, or use a fresh "
                            "--workdir.") from e
    return where, meta

  def _check_meta(self, step: int, expected_meta: dict) -> str:
    """Reads step's metadata and refuses a checkpoint of another model -> the step's path."""
    where, meta = self.read_meta(step)
    check_compatible(meta, expected_meta, where)
    return where

  def restore(self, step: int, target, expected_meta: dict) -> tuple[Any, dict]:
    where = self._check_meta(step, expected_meta)
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f"{where}: restoring the train state failed ({e}). Fix: delete this "
                            "step directory to fall back to an older one.") from e
    return out["state"], out["data"]

  def restore_params(self, step: int, key: str, target, expected_meta: dict):
    """Only the sub-tree `key` of step's saved state (a partial restore: the other fields, the
    optimizer state above all, are neither read nor allocated) into `target`, an abstract
    params tree carrying the wanted shardings; expected_meta describes the params."""
    where = self._check_meta(step, expected_meta)
    item = {key: target}
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True)))
    except Exception as e:
      raise CheckpointError(f"{where}: restoring the {key} of the train state failed ({e}). "
                            "Fix: delete this step directory to fall back to an older one.") from e
    return out["state"][key]

  _failed = False
  _saving = None  # the step of the last save started

  def check(self) -> None:
    """Raises the failure of a finished background write (does not wait): the loop calls it
    after every step, so a run stops within a step of the disk failing, not at its next
    checkpoint."""
    try:
      self._mngr.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._write_failed(self._saving, e) from None

  def wait(self) -> None:
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # a background write failed
      raise self._write_failed(self._saving, e) from None

  def close(self) -> None:
    """Waits for a background write and closes; after a failed write (already reported) it
    only closes, so the one error is the one the run stops with."""
    try:
      if not self._failed:
        self.wait()
    finally:
      try:
        self._mngr.close()
      except Exception:  # noqa: BLE001 (closing after a failure: the failure was reported)
        if not self._failed:
          raise


def load_latest_params(run_dir: str, key: str, target, model_config: dict, fix: str):
  """The params sub-tree `key` of the latest step saved in run_dir/checkpoints (see
  `Checkpointer.restore_params`), after checking they belong to model_config. fix: what the
  error says to do when run_dir holds no checkpoint."""
  directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
  if not has_checkpoint(run_dir):  # (opening a Checkpointer would create the directory)
    raise CheckpointError(f"{directory} holds no checkpoint. Fix: {fix}")
  ckpt = Checkpointer(directory, keep=1, async_save=False)
  try:
    return ckpt.restore_params(ckpt.latest_step(), key, target,
                               describe_model(model_config, target))
  finally:
    ckpt.close()
