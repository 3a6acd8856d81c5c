"""The training batches a stage after the VAE reads: the synthetic latents, or the latent cache
(data.source = "latents": config.data.latent_dir or <workdir>/latents) with its actions, poses
and text, as per-process batches of config.train.batch_size with get_state()/set_state()."""

import ml_collections

from data_pipeline.loader import CachedLatents, make_train_iterator
from relic_jax.workdir import Workdir


def train_iterator(cfg: ml_collections.ConfigDict, workdir: str):
  """The grain iterator over cfg's data source, the latent cache found by <workdir>'s layout."""
  if cfg.data.source == "latents":
    source = CachedLatents(cfg, Workdir.of(cfg, workdir).latents)
    return make_train_iterator(cfg, source=source)
  return make_train_iterator(cfg)
