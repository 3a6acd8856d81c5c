"""Writes a dataset of shards resumably: complete shards are kept, partial ones redone.

A dataset is described by a JSON-able `config` (what determines each episode) and a list of
shard jobs; job i produces the episodes of shard i through a picklable function. Each job
writes its shard and index atomically (data_pipeline/shards.py); the manifest is written once
every shard is complete. Re-running with the same config skips the complete shards (those whose
index lists exactly the job's episodes, so a dataset can be grown by adding jobs, and whose
size and SHA-256 match their index: a damaged or missing shard is said and rewritten); a
directory holding data of a different config is refused, naming every field that differs
(unless it holds no complete shard yet: then there is nothing to lose and the new config takes
over). A config may summarise its source in a "fingerprint" field; the source's files
(`source_files`: name -> description) are then recorded beside it, so that a changed source is
reported as the files added, removed or changed, not as two hashes.
"""

import glob
import hashlib
import json
import multiprocessing
import os
import time
from typing import Any, Callable, Sequence

from tqdm import tqdm

from data_pipeline import shards as shards_lib
from data_pipeline.episode import DataError, Episode
from relic_jax.io_utils import short_repr as _short
from relic_jax.io_utils import write_json_atomic

STATE = shards_lib.STATE
SOURCE_FIELDS = ("fingerprint", "episodes")  # config fields that `source_files` explains
MAX_LISTED = 4  # names listed per kind of change; the rest are counted


def config_hash(config: dict) -> str:
  blob = json.dumps({"format": shards_lib.FORMAT, "config": config}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _differences(a, b, prefix="") -> list[str]:
  """Every differing field of two JSON-like configs (a now, b recorded), dicts recursed."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)]
  return [] if a == b else [f"{prefix or 'config'}: {_short(b)} there, {_short(a)} now"]


def _listed(names: list[str]) -> str:
  more = len(names) - MAX_LISTED
  return ", ".join(names[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def source_changes(old: dict, new: dict) -> str:
  """What changed between two `source_files` records (name -> description), by name: whole
  episodes (top-level directories) added or removed, then files added, removed or changed."""
  top = lambda names: {n.split("/", 1)[0] for n in names if "/" in n}
  old_eps, new_eps = top(old), top(new)
  eps_added, eps_removed = sorted(new_eps - old_eps), sorted(old_eps - new_eps)
  gone = set(eps_added) | set(eps_removed)
  inside = lambda n: "/" in n and n.split("/", 1)[0] in gone
  added = sorted(n for n in set(new) - set(old) if not inside(n))
  removed = sorted(n for n in set(old) - set(new) if not inside(n))
  changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
  parts = []
  if eps_added:
    parts.append(f"episode(s) added: {_listed(eps_added)}")
  if eps_removed:
    parts.append(f"episode(s) removed: {_listed(eps_removed)}")
  if added:
    parts.append(f"file(s) added: {_listed(added)}")
  if removed:
    parts.append(f"file(s) removed: {_listed(removed)}")
  if changed:
    parts.append("changed: " + _listed([f"{n} (was {old[n]}; now {new[n]})" for n in changed]))
  return "; ".join(parts) or "the files are the same, their order differs"


def _difference(config: dict, old: dict, files: dict | None) -> str:
  """Why a config differs from the recorded state `old`, said plainly."""
  now = json.loads(json.dumps(config))
  recorded = old["config"]
  old_files = old.get("source_files")
  parts = []
  if isinstance(files, dict) and isinstance(old_files, dict):
    if files != old_files:
      parts.append("the source changed since the dataset was written: "
                   + source_changes(old_files, files))
    explained = SOURCE_FIELDS
  elif now.get("fingerprint") != recorded.get("fingerprint"):
    parts.append("the source's files changed since the dataset was written (their names, sizes "
                 "or the small files' contents; the directory does not record which files)")
    explained = ("fingerprint",)
  else:
    explained = ()
  parts += _differences({k: v for k, v in now.items() if k not in explained},
                        {k: v for k, v in recorded.items() if k not in explained})
  return "; ".join(parts) or "config hash differs"


def _read_state(path: str) -> dict | None:
  """The recorded state, or None when it is damaged (reported by the caller if it matters)."""
  try:
    old = shards_lib.read_json_object(path, "")
  except DataError:
    return None
  if not (isinstance(old.get("config"), dict) and isinstance(old.get("config_hash"), str)):
    return None
  return old


def _foreign(complete: list[str], digest: str) -> list[str]:
  """The shards whose index says they were made with another config than that of hash
  `digest` (a damaged index says nothing: that shard is rewritten anyway)."""
  out = []
  for index in complete:
    try:
      made_with = shards_lib.read_json_object(index, "").get("config_hash", digest)
    except DataError:
      continue
    if made_with != digest:
      out.append(os.path.basename(index)[:-len(".json")] + ".arrayrecord")
  return out


def _claim(directory: str, config: dict, source_files: dict | None = None) -> str:
  """Records the config (and the source's files) in the directory, or checks it against the
  one recorded there."""
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise DataError(f"the dataset directory {directory} cannot be created ({e.strerror}: "
                    f"{e.filename}). Fix: point config.data.dir or --workdir at a directory you "
                    "can write (not a file).") from None
  path = os.path.join(directory, STATE)
  digest = config_hash(config)
  state = {"config": config, "config_hash": digest}
  if source_files is not None:
    state["source_files"] = source_files
  complete = sorted(glob.glob(os.path.join(directory, "shard-*.json")))
  if not os.path.exists(path):
    foreign = _foreign(complete, digest)
    if foreign:  # made with another config, which is not recorded: refuse to overwrite them
      raise DataError(f"{directory} holds shards made with another config ({_listed(foreign)}) "
                      f"but no {STATE} recording it. Fix: restore {path}, or delete "
                      f"{directory} to start the dataset over, or write to another directory "
                      "(config.data.dir or --workdir).")
    if complete:
      print(f"[relic] {path} was missing; recreated (every complete shard was made with this "
            "config)", flush=True)
    write_json_atomic(path, state)
    return digest
  old = _read_state(path)
  if old is None and complete:
    raise DataError(f"{path} is damaged (not the JSON object recording the config this dataset "
                    f"was made with). Fix: restore it; or delete that file alone: a re-run with "
                    "the config the shards were made with recreates it and keeps them; or delete "
                    f"{directory} to start the dataset over.")
  if old is None or not complete:
    write_json_atomic(path, state)  # nothing to lose
  elif old["config_hash"] != digest:
    raise DataError(f"{directory} holds a dataset made with a different config "
                    f"({_difference(config, old, source_files)}). Fix: restore what it was made "
                    f"from (the source or the config) to finish it, or delete {directory} to "
                    "start it over, or write to another directory (config.data.dir or "
                    "--workdir).")
  elif source_files is not None and old.get("source_files") != source_files:
    write_json_atomic(path, state)  # same config: the record of the files is completed
  return digest


def _run_job(args):
  directory, index, make_episodes, job, codec, quality, digest = args
  t0 = time.perf_counter()
  episodes = make_episodes(job)
  t1 = time.perf_counter()
  meta = shards_lib.write_shard(directory, index, episodes, codec, quality, digest)
  return index, meta, t1 - t0, time.perf_counter() - t1


def write_dataset(directory: str, config: dict, jobs: Sequence[Any],
                  make_episodes: Callable[[Any], list[Episode]], codec: str = "jpeg",
                  quality: int = 95, workers: int = 1, progress: bool = True,
                  names_of: Callable[[Any], list[str]] | None = None,
                  source_files: dict | None = None) -> dict:
  """Writes shard i from make_episodes(jobs[i]) for every shard not already complete, in
  `workers` processes, then the manifest. `names_of(job)`, if given, lists the episode names a
  job makes; a shard whose index lists others is redone. A complete shard's SHA-256 is checked
  (the file is read once) and a damaged one rewritten, saying so. `source_files`: see the
  module docstring. Returns the manifest plus a "timing" entry for this run (frames written,
  shards repaired, seconds)."""
  digest = _claim(directory, config, source_files)
  removed = shards_lib.clean_partial(directory)
  done, todo, repaired = {}, [], []
  for i in range(len(jobs)):
    meta, problem = shards_lib.shard_status(directory, i)
    same = names_of is None or [e.get("name") for e in (meta or {}).get("episodes", [])] == list(
        names_of(jobs[i]))
    if meta is not None and meta.get("config_hash") == digest and same:
      done[i] = meta
      continue
    todo.append(i)
    if problem is not None:
      print(f"[relic] {os.path.join(directory, shards_lib.shard_name(i))}: {problem}; "
            "rewriting it", flush=True)
      repaired.append(shards_lib.shard_name(i))
      # without its index the old shard counts as partial until the new one replaces it
      os.remove(os.path.join(directory, shards_lib.index_name(i)))
  args = [(directory, i, make_episodes, jobs[i], codec, quality, digest) for i in todo]
  t0 = time.perf_counter()
  frames = 0
  bar = _progress(len(jobs), len(done), progress, "shards")
  if workers <= 1 or len(args) <= 1:
    results = map(_run_job, args)
  else:
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(args)))
    results = pool.imap_unordered(_run_job, args)
  try:
    for index, meta, _, _ in results:
      done[index] = meta
      frames += meta["num_records"]
      if bar is not None:
        bar.update(1)
  finally:
    if workers > 1 and len(args) > 1:
      pool.terminate()
    if bar is not None:
      bar.close()
  seconds = time.perf_counter() - t0
  manifest = shards_lib.write_manifest(directory, config, digest,
                                       [done[i] for i in range(len(jobs))])
  return {**manifest, "timing": {"shards_written": len(todo), "shards_skipped": len(jobs) -
                                 len(todo), "frames_written": frames, "seconds": seconds,
                                 "partial_files_removed": len(removed),
                                 "shards_repaired": len(repaired)}}


def _progress(total, initial, enabled, unit):
  if not enabled:
    return None
  return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)
