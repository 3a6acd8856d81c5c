"""The evaluation's cases on recorded episodes: the held-out episodes of the run's own dataset.

`relic evaluate` takes its truth from one of two places (config.evaluate.truth):
  "doom"      ViZDoom renders scripted cameras on held-out maps (evaluate.render_truth): a
              renderer, so the scripts can be made to revisit views
  "recorded"  the held-out episodes of the dataset (the last data.heldout_episodes, as
              data_pipeline.clips.split_episodes holds them out of training): their frames,
              poses and caption as recorded, so the revisits are only those the recorded
              camera happens to make (an episode without any has no memory metrics)
  "auto"      (default) "recorded" when the dataset was ingested (`relic data ingest`: its
              manifest's config says source "ingest"), "doom" otherwise (or without a dataset)

A recorded case starts at the episode's frame 0 and is cut to whole blocks of the student:
1 + 4 model.block_frames k frames, the largest k within the episode and within
config.evaluate.max_seconds. Its frame rate must be the model's (config.generate.fps): the
actions a model is given are per frame, so an episode at another rate would ask for other
motions per frame than it shows.

  truth_kind(cfg, workdir)   "doom" or "recorded" (resolving "auto")
  cases(cfg, data_dir)       the RecordedCase of every held-out episode, checked
  read(cfg, data_dir, case)  its frames (as stored), poses and caption
"""

import dataclasses
import math
import os

import ml_collections
import numpy as np

from data_pipeline import shards as shards_lib
from data_pipeline.clips import split_episodes
from data_pipeline.episode import DataError
from relic_jax.workdir import Workdir

TRUTHS = ("auto", "doom", "recorded")  # config.evaluate.truth (validated in config/validation)
FPS_TOLERANCE = 1e-6  # relative: a rate written as 17.5 or 35 / 2


@dataclasses.dataclass(frozen=True)
class RecordedCase:
  """One held-out episode as an evaluation case."""
  name: str             # the episode's name in the dataset (also the case's)
  index: int            # its index in the dataset (manifest order)
  frames: int           # frames evaluated, from frame 0: 1 + 4 block_frames k
  recorded_frames: int  # frames the episode has
  fps: float
  caption: str
  dataset: str          # the dataset's config hash: a cached generation names what it is of

  @property
  def truth_id(self) -> str:
    """What the truth of this case is: a cached generation of another truth is redone."""
    return f"{self.dataset}/{self.name}/{self.frames}"


def truth_kind(cfg: ml_collections.ConfigDict, workdir: str | None) -> str:
  """config.evaluate.truth with "auto" resolved: "recorded" for an ingested dataset, else
  "doom" (a ViZDoom dataset, or none: the Doom truth needs no dataset)."""
  truth = cfg.evaluate.truth
  if truth not in TRUTHS:
    raise DataError(f"config.evaluate.truth={truth!r} is unknown. Fix: use one of "
                    f"{', '.join(map(repr, TRUTHS))}.")
  if truth != "auto":
    return truth
  data_dir = Workdir.of(cfg, workdir).data
  if not os.path.exists(os.path.join(data_dir, shards_lib.MANIFEST)):
    return "doom"
  return "recorded" if shards_lib.is_ingested(shards_lib.read_manifest(data_dir)) else "doom"


def case_frames(recorded: int, cfg: ml_collections.ConfigDict) -> int:
  """The frames evaluated of an episode of `recorded` frames: 1 + fpb k for the largest k
  within the episode and within config.evaluate.max_seconds (0 when not even one block fits)."""
  fpb = 4 * cfg.model.block_frames
  limit = math.floor(cfg.evaluate.max_seconds * cfg.generate.fps + 1e-9)  # frames after frame 0
  return 1 + fpb * (min(recorded - 1, limit) // fpb)


def cases(cfg: ml_collections.ConfigDict, data_dir: str) -> list[RecordedCase]:
  """The held-out episodes of the dataset at data_dir as cases, each checked (frame rate,
  length) before anything is generated."""
  manifest = shards_lib.read_manifest(data_dir)
  entries = shards_lib.episode_entries(manifest)
  held = cfg.data.heldout_episodes
  if held < 1:
    raise DataError(f"config.data.heldout_episodes={held}: the dataset in {data_dir} has no "
                    "held-out episode to evaluate on. Fix: hold out at least one episode (and "
                    "train on the rest), or set config.evaluate.truth='doom'.")
  fpb = 4 * cfg.model.block_frames
  fps = float(cfg.generate.fps)
  out = []
  for i in split_episodes(len(entries), "heldout", held, data_dir):
    entry = entries[i][1]
    name, n, ep_fps = entry["name"], int(entry["num_frames"]), float(entry["fps"])
    if abs(ep_fps - fps) > FPS_TOLERANCE * fps:
      raise DataError(
          f"held-out episode {name!r} of {data_dir} is recorded at {ep_fps:g} fps but the model "
          f"generates at config.generate.fps={fps:g}: its actions would ask for other motions "
          f"per frame than the recording shows. Fix: record or resample the episodes at "
          f"{fps:g} fps (frames and poses alike) and ingest them again, or evaluate a model "
          f"trained at {ep_fps:g} fps (config.generate.fps={ep_fps:g}).")
    frames = case_frames(n, cfg)
    if frames < 1 + fpb:
      raise DataError(
          f"held-out episode {name!r} of {data_dir} has {n} frames and "
          f"config.evaluate.max_seconds={cfg.evaluate.max_seconds:g} s allows "
          f"{math.floor(cfg.evaluate.max_seconds * fps + 1e-9) + 1}; a case needs at least one "
          f"block after frame 0 ({1 + fpb} frames). Fix: hold out longer episodes, or raise "
          "config.evaluate.max_seconds.")
    out.append(RecordedCase(name, i, frames, n, ep_fps, str(entry["caption"]),
                            str(manifest.get("config_hash", ""))))
  return out


def read(cfg: ml_collections.ConfigDict, data_dir: str, case: RecordedCase):
  """(frames [F, H, W, 3] uint8 as stored, poses [F, 4, 4] float64 (ours)) of a case's
  evaluated frames, read from the shards (CRC-checked; SHA-256 per data.verify_checksums)."""
  manifest = shards_lib.read_manifest(data_dir)
  shard, entry = shards_lib.episode_entries(manifest)[case.index]
  if entry["name"] != case.name:
    raise DataError(f"{data_dir} changed during the evaluation: episode {case.index} is "
                    f"{entry['name']!r}, not {case.name!r}. Fix: run the evaluation again.")
  reader = shards_lib.ShardReader(data_dir, manifest, cfg.data.verify_checksums)
  records = reader.read_episode(shard, entry, 0, case.frames)
  return (np.stack([r["image"] for r in records]),
          np.stack([r["pose"] for r in records]).astype(np.float64))
