"""Writes a dataset of shards resumably: complete shards are kept, partial ones redone.

A dataset is described by a JSON-able `config` (what determines each episode) and a list of
shard jobs; job i produces the episodes of shard i through a picklable function. Each job
writes its shard and index atomically (data_pipeline/shards.py); the manifest is written once
every shard is complete. Re-running with the same config skips the complete shards (those whose
index lists exactly the job's episodes, so a dataset can be grown by adding jobs); a directory
holding data of a different config is refused, naming the first field that differs (unless it
holds no complete shard yet: then there is nothing to lose and the new config takes over).
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
from relic_jax.io_utils import write_json_atomic

STATE = "dataset_config.json"


def config_hash(config: dict) -> str:
  blob = json.dumps({"format": shards_lib.FORMAT, "config": config}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _first_difference(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
      if d:
        return d
    return None
  return None if a == b else f"{prefix or 'config'}: {b!r} there, {a!r} now"


def _claim(directory: str, config: dict) -> str:
  """Records the config in the directory, or checks it against the one recorded there."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, STATE)
  digest = config_hash(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    complete = glob.glob(os.path.join(directory, "shard-*.json"))
    if old["config_hash"] != digest and not complete:
      write_json_atomic(path, {"config": config, "config_hash": digest})  # nothing to lose
    elif old["config_hash"] != digest:
      diff = _first_difference(json.loads(json.dumps(config)), old["config"])
      raise DataError(f"{directory} holds a dataset made with a different config ({diff}). "
                      "Fix: write to another directory (config.data.dir or --workdir), or "
                      "delete this one to regenerate it.")
  else:
    write_json_atomic(path, {"config": config, "config_hash": digest})
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
                  names_of: Callable[[Any], list[str]] | None = None) -> dict:
  """Writes shard i from make_episodes(jobs[i]) for every shard not already complete, in
  `workers` processes, then the manifest. `names_of(job)`, if given, lists the episode names a
  job makes; a shard whose index lists others is redone. Returns the manifest plus a "timing"
  entry for this run (frames written, seconds)."""
  digest = _claim(directory, config)
  removed = shards_lib.clean_partial(directory)
  done, todo = {}, []
  for i in range(len(jobs)):
    meta = shards_lib.load_index(directory, i)
    same = names_of is None or [e["name"] for e in (meta or {}).get("episodes", [])] == list(
        names_of(jobs[i]))
    if meta is not None and meta.get("config_hash") == digest and same:
      done[i] = meta
    else:
      todo.append(i)
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
                                 "partial_files_removed": len(removed)}}


def _progress(total, initial, enabled, unit):
  if not enabled:
    return None
  return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)
