"""Grain loaders: per-process, deterministic, checkpointable iterators of training batches.

The trainer is data-source-agnostic: it asks for an iterator of per-process batches (dicts of
numpy arrays with a leading batch axis) that has `get_state()` / `set_state()`, and saves that
state with every checkpoint.

  make_train_iterator(cfg)           latent clips for the DiT: the synthetic source (the teacher
                                     demo) or the latent cache (`relic encode`)
  make_clip_iterator(cfg, data_dir)  video clips cut from episode shards (`relic data`)

Both shuffle by config.seed, repeat forever, batch the global batch and deal it out: process p
takes rows [p*L, (p+1)*L) of every global batch (L = global batch / process count), so the
assembled global batch is the same whatever the number of hosts, and the processes' examples are
disjoint and together cover the data.
"""

import math

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from data_pipeline import poses as poses_lib
from data_pipeline import shards as shards_lib
from data_pipeline.episode import DataError
from data_pipeline.synthetic import SyntheticLatents


def make_source(cfg: ml_collections.ConfigDict, latent_dir: str = ""):
  """The DiT's examples: {"latents", "text"} (+ "actions", "poses" from the latent cache)."""
  d, m = cfg.data, cfg.model
  if d.source == "synthetic":
    return SyntheticLatents(d.num_examples, d.latent_frames, d.latent_height, d.latent_width,
                            m.in_channels, d.text_len, m.text_dim, seed=cfg.seed)
  if d.source == "latents":
    return CachedLatents(cfg, latent_dir or d.latent_dir)
  raise ValueError(f"config.data.source={d.source!r} is unknown. Fix: use 'synthetic' or "
                   "'latents'.")


class CachedLatents:
  """The latent cache as DiT examples: latents normalised per channel by the cache's
  latent_stats, (z - mean) / std (data.normalize_latents), caption byte tokens as "text", and
  the per-video-frame actions and poses."""

  def __init__(self, cfg: ml_collections.ConfigDict, cache_dir: str):
    from data_pipeline.latent_cache import LatentCacheSource
    if not cache_dir:
      raise DataError("config.data.source='latents' needs the latent cache's directory. Fix: "
                      "run `relic encode` and pass --workdir (the cache is <workdir>/latents) "
                      "or set config.data.latent_dir.")
    self._source = LatentCacheSource(cache_dir)
    clip, d = self._source.meta["clip"], cfg.data
    want = {"latent_frames": d.latent_frames, "text_len": d.text_len,
            "height": d.latent_height * d.spatial_stride,
            "width": d.latent_width * d.spatial_stride}
    for k, v in want.items():
      if clip[k] != v:
        raise DataError(f"the latent cache at {cache_dir} holds clips with {k}={clip[k]}, but "
                        f"the config asks for {v}. Fix: re-run `relic encode` with this config, "
                        "or use the config that built the cache.")
    self.stats = self._source.meta.get("latent_stats")
    self._norm = None
    if d.normalize_latents:
      if self.stats is None:
        raise DataError(f"the latent cache at {cache_dir} has no latent_stats. Fix: re-run "
                        "`relic encode` to complete it.")
      self._norm = (np.asarray(self.stats["mean"], np.float32),
                    np.asarray(self.stats["std"], np.float32))
    channels = len(self.stats["mean"]) if self.stats else cfg.model.in_channels
    if channels != cfg.model.in_channels:
      raise DataError(f"the latent cache at {cache_dir} has {channels} latent channels, but "
                      f"model.in_channels={cfg.model.in_channels}. Fix: set model.in_channels "
                      f"(and out_channels) to {channels}.")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    x = self._source[index]
    z = x["latents"]
    if self._norm is not None:
      z = (z - self._norm[0]) / self._norm[1]
    return {"latents": z.astype(np.float32), "text": x["text_tokens"].astype(np.int32),
            "actions": x["actions"], "poses": x["poses"]}


def per_process_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"config.train.batch_size={global_batch} does not split over "
                     f"{process_count} processes. Fix: use a multiple of {process_count}.")
  return global_batch // process_count


def make_train_iterator(cfg: ml_collections.ConfigDict, process_index: int | None = None,
                        process_count: int | None = None, latent_dir: str = "", source=None):
  """Infinite, shuffled (per epoch, by seed) batches for this process. The global batch is the
  concatenation of every process's batch in process order, and equals the batch a single
  process would read: results do not depend on the number of hosts. latent_dir: the latent
  cache for data.source='latents' (default: config.data.latent_dir). source: an already
  opened `make_source(cfg, ...)`, not opened again."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  source = make_source(cfg, latent_dir) if source is None else source
  local_batch = per_process_batch_size(cfg.train.batch_size, process_count)
  if len(source) < cfg.train.batch_size:
    raise ValueError(f"config.data.num_examples={len(source)} is smaller than one global batch "
                     f"({cfg.train.batch_size}). Fix: use more examples or a smaller batch.")
  ds = grain.MapDataset.source(source)
  if cfg.data.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  return _deal(ds.repeat(), local_batch, process_index, process_count)


def _deal(ds, local_batch, process_index, process_count, num_threads=2):
  # Batch first, then deal the batches out: process p takes rows [p*L, (p+1)*L) of every global
  # batch, so the assembled global batch is the same whatever the number of processes.
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds[process_index::process_count]
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
  return iter(ds)


# ------------------------------------------------------------------ video clips from shards


def clip_frames(latent_frames: int, temporal_stride: int = 4) -> int:
  """Video frames of a clip of `latent_frames` latents: 1 + 4k (the first frame alone)."""
  return 1 + temporal_stride * (latent_frames - 1)


def tokenize_caption(caption: str, length: int) -> np.ndarray:
  """Byte-level tokens of a caption [length] int32: UTF-8 bytes + 1, 0 = padding."""
  raw = np.frombuffer(caption.encode("utf-8")[:length], np.uint8).astype(np.int32) + 1
  return np.pad(raw, (0, length - len(raw)))


def detokenize_caption(tokens) -> str:
  """The inverse of `tokenize_caption` (padding dropped)."""
  t = np.asarray(tokens)
  return bytes((t[t > 0] - 1).astype(np.uint8)).decode("utf-8", "replace")


SPLITS = ("train", "heldout", "all")


def split_episodes(n: int, split: str, heldout: int, data_dir: str = "") -> list[int]:
  """Episode indices of a split: the last `heldout` episodes are held out (evaluation), the
  rest are for training."""
  if split not in SPLITS:
    raise DataError(f"split {split!r} is unknown. Fix: use one of {', '.join(SPLITS)}.")
  if split != "all" and not 0 <= heldout < n:
    raise DataError(f"config.data.heldout_episodes={heldout} leaves no training episode of the "
                    f"{n} in {data_dir}. Fix: hold out fewer, or generate more episodes.")
  if split == "train":
    return list(range(n - heldout))
  if split == "heldout":
    return list(range(n - heldout, n))
  return list(range(n))


class ClipSource:
  """A grain random-access source of video clips of `num_frames` consecutive frames: every
  (episode, start) with start a multiple of `stride` and the clip inside the episode.

  Element: frames [F, H, W, 3] uint8 (stored size), camera [F, 4, 4] float64 (our convention),
  caption tokens, and the clip's episode index and start frame.
  """

  def __init__(self, data_dir: str, num_frames: int, stride: int, text_len: int,
               verify: bool = True, split: str = "all", heldout_episodes: int = 0):
    manifest = shards_lib.read_manifest(data_dir)
    self._entries = shards_lib.episode_entries(manifest)
    self._reader = shards_lib.ShardReader(data_dir, manifest, verify)
    self._frames, self._text_len = num_frames, text_len
    episodes = split_episodes(len(self._entries), split, heldout_episodes, data_dir)
    self._clips = [(e, s) for e in episodes
                   for s in range(0, self._entries[e][1]["num_frames"] - num_frames + 1, stride)]
    if not self._clips:
      longest = max((entry["num_frames"] for _, entry in self._entries), default=0)
      raise DataError(f"no episode in {data_dir} is long enough for a clip of {num_frames} "
                      f"frames (the longest has {longest}). Fix: generate longer episodes "
                      "(config.data.gen.frames_per_episode) or use fewer latent frames.")

  def __len__(self) -> int:
    return len(self._clips)

  def __getitem__(self, index: int) -> dict:
    e, start = self._clips[index]
    shard, entry = self._entries[e]
    records = self._reader.read_episode(shard, entry, start, start + self._frames)
    return {"frames": np.stack([r["image"] for r in records]),
            "camera": np.stack([r["pose"] for r in records]),
            "text_tokens": tokenize_caption(entry["caption"], self._text_len),
            "episode": np.int32(e), "start": np.int32(start)}


def palindrome_indices(num_frames: int, turn: int) -> np.ndarray:
  """Frame order of RELIC's time-reverse augmentation: forward 0..turn, then back, num_frames
  in all (needs turn >= num_frames / 2)."""
  back = num_frames - turn - 1
  return np.concatenate([np.arange(turn + 1), np.arange(turn - 1, turn - 1 - back, -1)])


def crop_box(height, width, out_h, out_w, rng=None):
  """The largest out_h:out_w box inside height x width: centred, or at a random place."""
  if width * out_h > height * out_w:
    ch, cw = height, int(round(height * out_w / out_h))
  else:
    ch, cw = int(round(width * out_h / out_w)), width
  y0, x0 = (height - ch) // 2, (width - cw) // 2
  if rng is not None:
    y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
  return y0, x0, ch, cw


class ClipAugment:
  """Per clip (grain RandomMap): the palindrome augmentation with probability `palindrome_prob`
  (turn point t* ~ U[F/2, F), as RELIC), crop to the output aspect and resize to out_h x out_w,
  then the network inputs computed from the (augmented) poses: actions [F, 13] normalised by the
  clip's mean displacement, and the pose features [F, 12] relative to the clip's first frame."""

  def __init__(self, out_h: int, out_w: int, palindrome_prob: float, crop: str):
    self.out_h, self.out_w, self.p, self.crop = out_h, out_w, palindrome_prob, crop

  def __call__(self, clip: dict, rng: np.random.Generator) -> dict:
    frames, camera = clip["frames"], clip["camera"]
    n = len(frames)
    turn = -1
    if self.p > 0 and rng.random() < self.p:
      turn = int(rng.integers(math.ceil(n / 2), n))
      order = palindrome_indices(n, turn)
      frames, camera = frames[order], camera[order]
    h, w = frames.shape[1:3]
    y0, x0, ch, cw = crop_box(h, w, self.out_h, self.out_w,
                              rng if self.crop == "random" else None)
    if (ch, cw) != (self.out_h, self.out_w) or (y0, x0) != (0, 0):
      frames = np.stack([np.asarray(Image.fromarray(f[y0:y0 + ch, x0:x0 + cw]).resize(
          (self.out_w, self.out_h), Image.Resampling.BILINEAR)) for f in frames])
    actions, scale = poses_lib.actions_from_poses(camera)
    return {"frames": frames, "actions": actions, "poses": poses_lib.pose_features(camera),
            "camera": camera.astype(np.float32), "action_scale": np.float32(scale),
            "text_tokens": clip["text_tokens"], "episode": clip["episode"],
            "start": clip["start"], "turn": np.int32(turn)}


def make_clip_source(cfg: ml_collections.ConfigDict, data_dir: str,
                     split: str = "train") -> ClipSource:
  """Clips of the training episodes (split="train": all but the last data.heldout_episodes),
  the held-out ones, or all."""
  d = cfg.data
  return ClipSource(data_dir, clip_frames(d.latent_frames, cfg.model.cond_frames_per_latent),
                    d.clip_stride, d.text_len, d.verify_checksums, split, d.heldout_episodes)


def make_clip_iterator(cfg: ml_collections.ConfigDict, data_dir: str,
                       process_index: int | None = None, process_count: int | None = None,
                       num_threads: int = 2):
  """Infinite batches of augmented video clips for this process (see the module docstring):
  frames [L, F, H, W, 3] uint8 with H = spatial_stride * latent_height, actions [L, F, 13],
  poses [L, F, 12], camera [L, F, 4, 4], text_tokens [L, text_len], and the clip's episode,
  start and palindrome turn (-1: none). Deterministic given config.seed; the iterator's state
  (get_state/set_state) resumes it exactly."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  d = cfg.data
  source = make_clip_source(cfg, data_dir)
  local_batch = per_process_batch_size(cfg.train.batch_size, process_count)
  if len(source) < cfg.train.batch_size:
    raise DataError(f"{data_dir} yields {len(source)} clips, fewer than one global batch "
                    f"({cfg.train.batch_size}). Fix: generate more episodes or use a smaller "
                    "batch or config.data.clip_stride.")
  ds = grain.MapDataset.source(source)
  if d.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  augment = ClipAugment(d.spatial_stride * d.latent_height, d.spatial_stride * d.latent_width,
                        d.palindrome_prob, d.crop)
  ds = ds.repeat().random_map(augment, seed=cfg.seed)
  return _deal(ds, local_batch, process_index, process_count, num_threads)
