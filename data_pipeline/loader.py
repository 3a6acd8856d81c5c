"""Grain loaders: per-process, deterministic, checkpointable iterators of training batches.

The trainer is data-source-agnostic: it asks `make_train_iterator(cfg)` for an iterator of
per-process batches (dicts of numpy arrays with a leading batch axis) that has
`get_state()` / `set_state()`, and saves that state with every checkpoint.
"""

import grain
import jax
import ml_collections

from data_pipeline.synthetic import SyntheticLatents


def make_source(cfg: ml_collections.ConfigDict):
  d, m = cfg.data, cfg.model
  if d.source == "synthetic":
    return SyntheticLatents(d.num_examples, d.latent_frames, d.latent_height, d.latent_width,
                            m.in_channels, d.text_len, m.text_dim, seed=cfg.seed)
  raise ValueError(f"config.data.source={d.source!r} is unknown. Fix: use 'synthetic'.")


def per_process_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"config.train.batch_size={global_batch} does not split over "
                     f"{process_count} processes. Fix: use a multiple of {process_count}.")
  return global_batch // process_count


def make_train_iterator(cfg: ml_collections.ConfigDict, process_index: int | None = None,
                        process_count: int | None = None):
  """Infinite, shuffled (per epoch, by seed) batches for this process. The global batch is the
  concatenation of every process's batch in process order, and equals the batch a single
  process would read: results do not depend on the number of hosts."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  source = make_source(cfg)
  local_batch = per_process_batch_size(cfg.train.batch_size, process_count)
  if len(source) < cfg.train.batch_size:
    raise ValueError(f"config.data.num_examples={len(source)} is smaller than one global batch "
                     f"({cfg.train.batch_size}). Fix: use more examples or a smaller batch.")
  ds = grain.MapDataset.source(source)
  if cfg.data.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds.repeat()
  # Batch first, then deal the batches out: process p takes rows [p*L, (p+1)*L) of every global
  # batch, so the assembled global batch is the same whatever the number of processes.
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds[process_index::process_count]
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  return iter(ds)
