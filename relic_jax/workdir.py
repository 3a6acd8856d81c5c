"""The layout of a run's workdir: one object that says where every stage reads and writes.

  <root>/data            the episode dataset (config.data.dir overrides it)
  <root>/pose_estimator  the evaluation's pose estimator
  <root>/vae, vae_tiny   the VAE and its tiny streaming decoder
  <root>/latents         the latent cache (config.data.latent_dir overrides it)
  <root>/teacher         the bidirectional teacher (+ latent_stats.json, curriculum phases)
  <root>/ode_init        the student's ODE initialisation
  <root>/distill         the distilled student
  <root>/evaluate        the evaluation's per-case intermediates
  <root>/results         the evaluation's report (metrics, videos, plots)
  <root>/generate        `relic generate`'s videos
  <root>/pipeline        the pipeline's done-markers, one <stage>.json per finished stage

Nothing here touches the disk; a stage creates what it writes.
"""

import dataclasses
import os

import ml_collections

LATENT_STATS = "latent_stats.json"


@dataclasses.dataclass(frozen=True)
class Workdir:
  """The directories of one run. `data` and `latents` follow config.data.dir / latent_dir
  when those are set (a dataset or cache shared between runs)."""
  root: str
  data_dir: str = ""
  latent_dir: str = ""

  @classmethod
  def of(cls, cfg: ml_collections.ConfigDict, root: str | None) -> "Workdir":
    """The layout of `root` for `cfg`. root may be None only for a config whose dataset has a
    directory of its own (config.data.dir): nothing else has a place then."""
    if not root and not cfg.data.dir:
      raise ValueError("set config.data.dir or pass --workdir (the dataset goes to "
                       "<workdir>/data)")
    return cls(root=root or "", data_dir=cfg.data.dir or "",
               latent_dir=cfg.data.get("latent_dir", "") or "")

  def _under(self, name: str) -> str:
    if not self.root:
      raise ValueError(f"no --workdir: '{name}' has no place. Fix: pass --workdir=DIR.")
    return os.path.join(self.root, name)

  def stage_dir(self, name: str) -> str:
    """<root>/<name>, or the dataset / latent cache directory for 'data' / 'latents'."""
    if name == "data":
      return self.data
    if name == "latents":
      return self.latents
    return self._under(name)

  @property
  def data(self) -> str:
    return self.data_dir or self._under("data")

  @property
  def latents(self) -> str:
    return self.latent_dir or self._under("latents")

  @property
  def pose_estimator(self) -> str:
    return self._under("pose_estimator")

  @property
  def vae(self) -> str:
    return self._under("vae")

  @property
  def vae_tiny(self) -> str:
    return self._under("vae_tiny")

  @property
  def teacher(self) -> str:
    return self._under("teacher")

  @property
  def latent_stats(self) -> str:
    """The latent cache's statistics the teacher trained with (and generation de-normalises
    by), copied beside the teacher."""
    return os.path.join(self.teacher, LATENT_STATS)

  @property
  def ode_init(self) -> str:
    return self._under("ode_init")

  @property
  def distill(self) -> str:
    return self._under("distill")

  @property
  def evaluate(self) -> str:
    return self._under("evaluate")

  @property
  def results(self) -> str:
    return self._under("results")

  @property
  def generate(self) -> str:
    return self._under("generate")

  @property
  def pipeline(self) -> str:
    return self._under("pipeline")

  def marker(self, stage: str) -> str:
    """The pipeline's done-marker of `stage`."""
    return os.path.join(self.pipeline, f"{stage}.json")
