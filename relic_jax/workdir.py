"""The layout of a run's workdir: one object that says where every stage reads and writes.

  <root>/data            the episode dataset (config.data.dir overrides it)
  <root>/pose_estimator  the evaluation's pose estimator
  <root>/vae, vae_tiny   the VAE and its tiny streaming decoder (+ vae/pretrained.json when
                         the VAE is a pretrained one used as is: where from, its latent stats)
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
    """The directory of the place `name` (one of PLACES)."""
    if name not in PLACES:
      raise ValueError(f"{name!r} is not a place of a workdir; the places: "
                       f"{', '.join(PLACES)}.")
    return getattr(self, name)

  @property
  def data(self) -> str:
    return self.data_dir or self._under("data")

  @property
  def latents(self) -> str:
    return self.latent_dir or self._under("latents")

  @property
  def latent_stats(self) -> str:
    """The latent cache's statistics the teacher trained with (and generation de-normalises
    by), copied beside the teacher."""
    return os.path.join(self.teacher, LATENT_STATS)

  @property
  def vae_pretrained(self) -> str:
    """Where a VAE used as is came from and its own latent statistics (`relic train_vae`
    with config.vae.init_from and vae.finetune_steps = 0; `relic encode` normalises by them)."""
    return os.path.join(self.vae, "pretrained.json")

  def marker(self, stage: str) -> str:
    """The pipeline's done-marker of `stage`."""
    return os.path.join(self.pipeline, f"{stage}.json")


# The places of a run (the module docstring says what each holds); every one but data and
# latents (above) is <root>/<its name>.
PLACES = ("data", "pose_estimator", "vae", "vae_tiny", "latents", "teacher", "ode_init",
          "distill", "evaluate", "results", "generate", "pipeline", "play")
for _name in PLACES:
  if not hasattr(Workdir, _name):
    setattr(Workdir, _name, property(lambda self, name=_name: self._under(name),
                                     doc=f"<root>/{_name}"))
del _name
