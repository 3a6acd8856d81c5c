"""Grain loaders: per-process, deterministic, checkpointable iterators of training batches.

The trainer is data-source-agnostic: it asks for an iterator of per-process batches (dicts of
numpy arrays with a leading batch axis) that has `get_state()` / `set_state()`, and saves that
state with every checkpoint.

  make_train_iterator(cfg)           latent clips for the DiT: the synthetic source (the teacher
                                     demo) or the latent cache (`relic encode`)
  make_clip_iterator(cfg, data_dir)  video clips cut from episode shards (`relic data`) and
                                     augmented (data_pipeline/clips.py)

Both shuffle by config.seed, repeat forever, batch the global batch and deal it out: process p
takes rows [p*L, (p+1)*L) of every global batch (L = global batch / process count), so the
assembled global batch is the same whatever the number of hosts, and the processes' examples are
disjoint and together cover the data.
"""

import grain
import jax
import ml_collections
import numpy as np

# Clip cutting lives in data_pipeline/clips.py; the names other modules still import from the
# loader are re-exported here.
from data_pipeline.clips import (ClipAugment, ClipSource, clip_frames, crop_box,  # noqa: F401
                                 detokenize_caption, make_clip_source, palindrome_indices,
                                 tokenize_caption)
from data_pipeline.episode import DataError
from data_pipeline import latent_cache
from data_pipeline.latent_cache import LatentCacheSource
from data_pipeline.synthetic import SyntheticLatents
from relic_jax.config.choices import DataSource, TextEncoder


def make_source(cfg: ml_collections.ConfigDict, latent_dir: str = ""):
  """The DiT's examples: {"latents", "text"} (+ "actions", "poses" from the latent cache)."""
  d, m = cfg.data, cfg.model
  if d.source == DataSource.SYNTHETIC:
    return SyntheticLatents(d.num_examples, d.latent_frames, d.latent_height, d.latent_width,
                            m.in_channels, d.text_len, m.text_dim, seed=cfg.seed)
  if d.source == DataSource.LATENTS:
    return CachedLatents(cfg, latent_dir or d.latent_dir)
  raise ValueError(f"config.data.source={d.source!r} is unknown. Fix: use one of "
                   f"{', '.join(map(repr, DataSource.values()))}.")


class CachedLatents:
  """The latent cache as DiT examples of config.data.latent_frames latent frames (a prefix of
  the cache's longer clips, see latent_cache.LatentCacheSource): latents normalised per
  channel by the cache's latent_stats, (z - mean) / std (data.normalize_latents), the caption
  as "text" (byte tokens [L] int32, or with model.text_encoder='umt5' its umT5 embedding
  [L, D] float32, and then "null_text", the empty caption's, for caption dropout and
  guidance), the per-video-frame actions and poses of the prefix, and its "action_scale"
  (metres per action unit, float32: what integrates actions back to poses)."""

  def __init__(self, cfg: ml_collections.ConfigDict, cache_dir: str):
    if not cache_dir:
      raise DataError("config.data.source='latents' needs the latent cache's directory. Fix: "
                      "run `relic encode` and pass --workdir (the cache is <workdir>/latents) "
                      "or set config.data.latent_dir.")
    d = cfg.data
    self._source = LatentCacheSource(cache_dir, latent_frames=d.latent_frames)
    clip = self._source.meta["clip"]
    want = {"text_len": d.text_len, "height": d.latent_height * d.spatial_stride,
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
    self._null = None
    if cfg.model.text_encoder == TextEncoder.UMT5:
      if self._source.text == latent_cache.BYTES:
        raise DataError(f"config.model.text_encoder='umt5' but the latent cache at {cache_dir} "
                        "holds byte captions only. Fix: re-run `relic encode` with this config "
                        "(it encodes the captions with config.model.text_encoder_from).")
      self._null = self._source.null_text()
      if self._null.shape[-1] != cfg.model.text_dim:
        raise DataError(f"the latent cache at {cache_dir} holds {self._null.shape[-1]}-d text "
                        f"embeddings, but model.text_dim={cfg.model.text_dim}. Fix: set "
                        f"model.text_dim={self._null.shape[-1]}, or re-run `relic encode`.")
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
    out = {"latents": z.astype(np.float32), "text": x["text_tokens"].astype(np.int32),
           "actions": x["actions"], "poses": x["poses"],
           "action_scale": np.float32(x["action_scale"])}
    if self._null is not None:
      out["text"], out["null_text"] = x["text_embedding"], self._null
    return out


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
