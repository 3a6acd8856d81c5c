"""`relic data`: generates the ViZDoom exploration dataset described by config.data.gen."""

import functools
import os

import ml_collections
import numpy as np

from data_pipeline import doom
from data_pipeline.writer import write_dataset
from relic_jax.workdir import Workdir


def dataset_dir(cfg: ml_collections.ConfigDict, workdir: str | None) -> str:
  """config.data.dir, or <workdir>/data (`Workdir.data`)."""
  return Workdir.of(cfg, workdir).data


def episode_plan(cfg: ml_collections.ConfigDict) -> list[list[tuple[str, str, int]]]:
  """Per shard, its episodes as (name, map, seed): episode i < num_episodes is on training map
  i mod len(maps), with a seed derived from (config.seed, i); then heldout_map_episodes
  episodes on the held-out maps (in turn), the dataset's last ones, so that
  data.heldout_episodes (validated equal) holds out exactly the held-out maps."""
  g = cfg.data.gen
  maps = doom.map_list(g.wads, g.maps, g.heldout_maps)
  plan = [(maps[i % len(maps)], i) for i in range(g.num_episodes)]
  plan += [(g.heldout_maps[j % len(g.heldout_maps)], g.num_episodes + j)
           for j in range(g.heldout_map_episodes)]
  episodes = []
  for map_path, i in plan:
    seed = int(np.random.SeedSequence([cfg.seed, i]).generate_state(1, np.uint32)[0])
    episodes.append((f"ep{i:06d}-{map_path.replace('/', '-')}", map_path, seed))
  per = g.episodes_per_shard
  return [episodes[s:s + per] for s in range(0, len(episodes), per)]


def _make_episodes(gen_cfg: doom.GenConfig, job):
  return [doom.generate_episode(m, seed, gen_cfg, name) for name, m, seed in job]


def generation_config(cfg: ml_collections.ConfigDict) -> dict:
  """What determines each episode, recorded with the data. Not the number of episodes (episode
  i does not depend on it, so a dataset without held-out-map episodes can be grown) nor the
  worker count."""
  g = cfg.data.gen.to_dict()
  g.pop("workers")
  g.pop("num_episodes")
  if not g["heldout_map_episodes"]:
    g.pop("heldout_map_episodes")  # datasets made before the field existed stay valid
  return {"source": "vizdoom", "seed": cfg.seed, **{k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in g.items()}}


def generate(cfg: ml_collections.ConfigDict, out_dir: str, progress: bool = True) -> dict:
  g = cfg.data.gen
  gen_cfg = doom.GenConfig.from_config(g)
  workers = g.workers or os.cpu_count() or 1
  return write_dataset(out_dir, generation_config(cfg), episode_plan(cfg),
                       functools.partial(_make_episodes, gen_cfg), codec=g.codec,
                       quality=g.jpeg_quality, workers=workers, progress=progress,
                       names_of=lambda job: [name for name, _, _ in job])
