"""The VAE stage (`relic train_vae`): the Wan 2.1 causal video VAE trained on the data
pipeline's clips, then evaluated on held-out episodes.

Loss per clip x in [-1, 1] (1 + 4k frames): with (mean, logvar) = encode(x) and
z = mean + exp(logvar / 2) eps,
  loss = |decode(z) - x|_1 (mean over pixels) + vae.kl_weight * KL(q(z|x) || N(0, I)) (mean
  over latent elements).
The stage trains with the generic trainer (checkpoints, resume, logging, NaN guard) in
<workdir>/vae, with config.train overridden by config.vae.train, and can start from imported
Wan 2.1 VAE weights (config.vae.init_from, see `relic import-wan-vae`). At the end it evaluates
the final params on clips of the held-out episodes: PSNR and SSIM per frame
(<workdir>/vae/eval.json) and a side-by-side MP4, input | reconstruction
(<workdir>/vae/reconstruction.mp4).
"""

import dataclasses
import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline import latent_cache, loader
from data_pipeline.generate import dataset_dir
from data_pipeline.preview import VideoUnavailable, write_video
from relic_jax.config import derive
from relic_jax.config.choices import TextEncoder
from relic_jax.evaluation import metrics as img_metrics
from relic_jax.inference import loading
from relic_jax.inference import text as text_lib
from relic_jax import checkpoint as ckpt_lib
from relic_jax.io_utils import write_json_atomic
from relic_jax.models import tiny_decoder as tiny_lib
from relic_jax.models import vae as vae_lib
from relic_jax.models.tiny_decoder import TinyDecoderConfig
from relic_jax.models.vae import VAEConfig, to_uint8, to_unit
from relic_jax.training import trainer
from relic_jax.weights import pretrained
from relic_jax.workdir import Workdir


def stage_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """cfg with config.train overridden by config.vae.train (and train.init_from by
  vae.init_from, train.steps by vae.finetune_steps when there is one): what the trainer runs
  for the VAE stage."""
  out = cfg.copy_and_resolve_references()
  init = pretrained.resolve(cfg.vae.init_from, "vae.init_from")
  with out.unlocked():
    for k, v in cfg.vae.train.items():
      out.train[k] = v
    out.train.init_from = init or ""
    if init:
      out.train.steps = cfg.vae.finetune_steps
  return out


CURRICULUM_FILE = "curriculum.json"


class VAECurriculumError(ValueError):
  """A VAE run directory trained with other clip phases than the config's."""


def phases(cfg: ml_collections.ConfigDict) -> list[tuple[int, int, int]]:
  """(latent_frames, steps, batch_size) of each VAE training phase: vae.train's (on clips of
  data.latent_frames; vae.finetune_steps from a pretrained VAE), then vae.clip_curriculum's."""
  run = stage_config(cfg)
  first = (int(cfg.data.latent_frames), int(run.train.steps), int(run.train.batch_size))
  return [first] + [tuple(int(x) for x in p) for p in cfg.vae.get("clip_curriculum", ())]


def phase_dirs(cfg: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Each phase's run directory: <workdir>/vae/clips_<i>_<frames>f, the last <workdir>/vae."""
  out, ph = stage_workdir(workdir), phases(cfg)
  return [out if i == len(ph) - 1 else os.path.join(out, f"clips_{i}_{frames}f")
          for i, (frames, _, _) in enumerate(ph)]


def phase_config(cfg: ml_collections.ConfigDict, i: int) -> ml_collections.ConfigDict:
  """stage_config(cfg) for phase i: its clip length, steps and batch size; phases after the
  first start from the previous phase's params (passed to the trainer), not init_from."""
  out = stage_config(cfg)
  frames, steps, batch = phases(cfg)[i]
  with out.unlocked():
    out.data.latent_frames, out.train.steps, out.train.batch_size = frames, steps, batch
    if i > 0:
      out.train.init_from = ""
  return out


def _check_phases(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a <workdir>/vae trained with other phases: the last phase shares the directory
  and would resume from the wrong run. Only the last phase's steps may change."""
  out, ph = stage_workdir(workdir), phases(cfg)
  path = os.path.join(out, CURRICULUM_FILE)
  fix = (f"Fix: set config.vae.clip_curriculum back to the recorded phases, or train in a "
         f"fresh --workdir (or delete {out}).")
  if os.path.exists(path):
    with open(path) as f:
      old = [tuple(p) for p in json.load(f)["phases"]]
    if len(old) != len(ph) or old[:-1] != ph[:-1] or old[-1][::2] != ph[-1][::2]:
      raise VAECurriculumError(f"{path} records the VAE phases (latent_frames, steps, "
                               f"batch_size) {old}, but this config asks for {ph}. {fix}")
  elif len(ph) > 1 and ckpt_lib.has_checkpoint(out):
    raise VAECurriculumError(f"{out} holds a VAE trained without config.vae.clip_curriculum, "
                             f"whose last phase would resume from it. {fix}")


def _train_phases(cfg: ml_collections.ConfigDict, workdir: str, data_dir: str) -> dict:
  """Trains (or resumes) every VAE phase; a finished phase is skipped, a new one starts from
  the previous phase's final params. Returns the last phase's final metrics."""
  _check_phases(cfg, workdir)
  ph, dirs = phases(cfg), phase_dirs(cfg, workdir)
  if jax.process_index() == 0:
    os.makedirs(dirs[-1], exist_ok=True)
    write_json_atomic(os.path.join(dirs[-1], CURRICULUM_FILE), {"phases": ph})
  final: dict = {}
  for i, run_dir in enumerate(dirs):
    pcfg = phase_config(cfg, i)
    latest = ckpt_lib.latest_step(run_dir)
    if latest is not None and latest >= ph[i][1]:
      print(f"[relic] vae phase {i + 1}/{len(ph)} ({ph[i][0]} latent frames) in {run_dir}: "
            f"already done (step {latest}), skipped", flush=True)
      final = {"step": latest}
      continue
    init = None
    if i > 0 and latest is None:
      init = loading.load_vae(pcfg, workdir, run_dir=dirs[i - 1])[1]
    if len(ph) > 1:
      print(f"[relic] vae phase {i + 1}/{len(ph)} ({ph[i][0]} latent frames, {ph[i][1]} "
            f"steps, batch {ph[i][2]}) in {run_dir}", flush=True)
    final = trainer.train(pcfg, run_dir, VAETask(pcfg),
                          FramesOnly(loader.make_clip_iterator(pcfg, data_dir)),
                          init_params=init)
  return final


def used_as_is(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the stage takes a pretrained VAE (vae.init_from) unchanged: evaluated, not
  trained (vae.finetune_steps = 0)."""
  return bool(pretrained.resolve(cfg.vae.init_from, "vae.init_from")) and (
      cfg.vae.finetune_steps == 0)


def stage_workdir(workdir: str) -> str:
  return Workdir(root=workdir).vae


class FramesOnly:
  """A clip iterator restricted to some keys, keeping get_state/set_state."""

  def __init__(self, iterator, keys=("frames",)):
    self._it, self._keys = iterator, keys

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    return {k: batch[k] for k in self._keys}

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


class VAETask:
  """A `trainer.Task`: reconstruction + KL of video clips."""
  has_aux = True

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    d = cfg.data
    self.vae = VAEConfig.from_config(cfg.vae, d.spatial_stride)
    self.model_config = dataclasses.asdict(self.vae)
    self.frames = loader.clip_frames(d.latent_frames, self.vae.temporal_stride)
    self.height = d.latent_height * d.spatial_stride
    self.width = d.latent_width * d.spatial_stride
    self._flops = None  # flops_per_example(), counted once per task

  def example_batch(self, batch_size: int) -> dict:
    return {"frames": np.zeros((batch_size, self.frames, self.height, self.width, 3), np.uint8)}

  def init_params(self, rng):
    return vae_lib.init_params(self.vae, rng)

  def import_params(self, path: str):
    """Params from a diffusers AutoencoderKLWan folder or pipeline root (vae.init_from)."""
    return pretrained.vae_params(path, self.vae)[0]

  def loss_fn(self, params, batch, rng):
    x = to_unit(batch["frames"])
    mean, logvar = vae_lib.encode(params, self.vae, x)
    z = vae_lib.sample(rng, mean, logvar)
    recon = vae_lib.decode(params, self.vae, z, clamp=False).astype(jnp.float32)
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    l1 = jnp.abs(recon - x).mean()
    mse = jnp.square(recon - x).mean()
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar).mean()
    loss = l1 + self.cfg.vae.kl_weight * kl
    return loss, {"l1": l1, "mse": mse, "kl": kl, "psnr": 10.0 * jnp.log10(4.0 / mse)}

  def flops_per_example(self) -> float:
    """XLA's count for one clip's encode + decode (the VAE has no simple analytic form)."""
    if self._flops is None:
      self._flops = self._count_flops()
    return self._flops

  def _count_flops(self) -> float:
    x = jax.ShapeDtypeStruct((1, self.frames, self.height, self.width, 3), jnp.float32)
    params = jax.eval_shape(self.init_params, jax.random.key(0))

    def fwd(p, v):
      return vae_lib.decode(p, self.vae, vae_lib.encode(p, self.vae, v)[0], clamp=False)
    cost = jax.jit(fwd).lower(params, x).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))

  def tokens_per_example(self) -> int:
    """Pixels per clip (the trainer's tokens/s is pixels/s for this stage)."""
    return self.frames * self.height * self.width


def reconstruct_fn(vae: vae_lib.VAEConfig):
  """A jitted uint8 clip batch -> (latent mean, reconstruction in [-1, 1])."""
  @jax.jit
  def run(params, frames):
    mean, _ = vae_lib.encode(params, vae, to_unit(frames))
    return mean, vae_lib.decode(params, vae, mean)
  return run


def eval_latent_frames(cfg) -> int:
  """The evaluated clips' latent frames: vae.eval_latent_frames, else the longest clip a DiT
  stage reads from the latent cache (derive.cache_frames)."""
  return int(cfg.vae.get("eval_latent_frames", 0) or derive.cache_frames(cfg))


def evaluate(cfg, params, data_dir: str, out_dir: str, max_clips: int | None = None,
             tiny_params=None) -> dict:
  """PSNR/SSIM of held-out reconstructions (the latent mean decoded) and a side-by-side MP4
  (input | VAE decoder | tiny decoder, when tiny_params are given), on clips of
  eval_latent_frames(cfg)."""
  source = loader.make_clip_source(cfg, data_dir, split="heldout",
                                   latent_frames=eval_latent_frames(cfg))
  augment = loader.ClipAugment(cfg.data.latent_height * cfg.data.spatial_stride,
                               cfg.data.latent_width * cfg.data.spatial_stride, 0.0, "center")
  n = min(len(source), max_clips or cfg.vae.eval_clips)
  # evenly spread over the held-out clips
  picks = np.unique(np.linspace(0, len(source) - 1, n).round().astype(int))
  run = reconstruct_fn(VAEConfig.from_config(cfg.vae))
  tiny_cfg = TinyDecoderConfig.from_config(cfg.vae)
  tiny = jax.jit(lambda p, z: tiny_lib.decode(p, tiny_cfg, z))
  psnrs, ssims, tiny_psnrs, tiny_ssims, pairs = [], [], [], [], []
  for i in picks:
    frames = augment(source[int(i)], np.random.default_rng(0))["frames"]
    mean, recon = run(params, frames[None])
    recon = to_uint8(recon[0])
    psnrs.append(img_metrics.psnr(frames, recon))
    ssims.append(img_metrics.ssim(frames, recon))
    panels = [frames, recon]
    if tiny_params is not None:
      fast = to_uint8(tiny(tiny_params, mean)[0])
      tiny_psnrs.append(img_metrics.psnr(frames, fast))
      tiny_ssims.append(img_metrics.ssim(frames, fast))
      panels.append(fast)
    if len(pairs) < 4:
      pairs.append(np.concatenate(panels, axis=2))
  psnrs, ssims = np.concatenate(psnrs), np.concatenate(ssims)
  os.makedirs(out_dir, exist_ok=True)
  try:
    video = write_video(os.path.join(out_dir, "reconstruction.mp4"), np.concatenate(pairs),
                        fps=8.0, captions_per_frame=None)
  except VideoUnavailable as e:  # the figures do not need the video
    print(f"[relic] train_vae: no reconstruction video: {e}", flush=True)
    video = None
  result = {"heldout_psnr": float(np.mean(np.minimum(psnrs, 100.0))),
            "heldout_ssim": float(np.mean(ssims)), "clips": int(len(picks)),
            "frames": int(len(psnrs)), "clip_frames": int(frames.shape[0]), "video": video,
            "tiny_decoder_psnr": (float(np.mean(np.minimum(np.concatenate(tiny_psnrs), 100.0)))
                                  if tiny_psnrs else None),
            "tiny_decoder_ssim": (float(np.mean(np.concatenate(tiny_ssims)))
                                  if tiny_ssims else None)}
  write_json_atomic(os.path.join(out_dir, "eval.json"), result)
  return result


class TinyDecoderTask:
  """A `trainer.Task`: the tiny decoder regresses the clip (L1) from the frozen VAE encoder's
  latent means. The VAE's params are constants of the step (fine for VAEs of tiny/small size;
  a 127M-param Wan VAE would rather encode once into the latent cache first)."""
  has_aux = True

  def __init__(self, cfg: ml_collections.ConfigDict, vae_params):
    self.cfg = cfg
    self.vae_task = VAETask(cfg)
    self.vae = self.vae_task.vae
    self.tiny = TinyDecoderConfig.from_config(cfg.vae)
    self.model_config = dataclasses.asdict(self.tiny)
    self._vae_params = vae_params

  def example_batch(self, batch_size: int) -> dict:
    return self.vae_task.example_batch(batch_size)

  def init_params(self, rng):
    return tiny_lib.init_params(self.tiny, rng)

  def loss_fn(self, params, batch, rng):
    del rng
    x = to_unit(batch["frames"])
    z = jax.lax.stop_gradient(vae_lib.encode(self._vae_params, self.vae, x)[0])
    recon = tiny_lib.decode(params, self.tiny, z, clamp=False)
    l1 = jnp.abs(recon - x).mean()
    mse = jnp.square(recon - x).mean()
    return l1, {"l1": l1, "mse": mse, "psnr": 10.0 * jnp.log10(4.0 / mse)}

  def flops_per_example(self) -> float:
    return 0.0  # not reported for this stage

  def tokens_per_example(self) -> int:
    return self.vae_task.tokens_per_example()


def tiny_stage_config(cfg):
  """The tiny decoder's run: vae.tiny_steps on the last VAE phase's clips and batch size."""
  out = phase_config(cfg, len(phases(cfg)) - 1)
  with out.unlocked():
    out.train.steps = cfg.vae.tiny_steps
    out.train.init_from = ""
  return out


def train_vae(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the VAE, then the tiny decoder on its latents (vae.tiny_steps > 0),
  then evaluates both on held-out clips; returns the VAE's final metrics with "eval"."""
  data_dir = dataset_dir(cfg, workdir)
  run_cfg = stage_config(cfg)
  task = VAETask(run_cfg)
  out = stage_workdir(workdir)
  w = Workdir(root=workdir)
  init = run_cfg.train.init_from
  as_is = used_as_is(cfg)
  if as_is:
    # the pretrained VAE unchanged: its params become this workdir's step-0 checkpoint, so
    # every later stage loads it as it loads a trained one
    params, stats = pretrained.vae_params(init, task.vae)
    if not ckpt_lib.has_checkpoint(out):
      trainer.save_params_checkpoint(run_cfg, out, task, params)
    write_json_atomic(w.vae_pretrained, {"init_from": init, "latent_stats": stats})
    final = {"step": 0, "init_from": init, "trained": False,
             "param_count": int(sum(np.size(x) for x in jax.tree.leaves(params)))}
  else:
    final = _train_phases(cfg, workdir, data_dir)
    if os.path.exists(w.vae_pretrained):
      os.remove(w.vae_pretrained)  # trained here: its latents are not the pretrained ones
  _, params = loading.load_vae(cfg, workdir)
  tiny_params = None
  shipped = (pretrained.tiny_decoder_params(init, TinyDecoderConfig.from_config(cfg.vae))
             if as_is else None)
  if shipped is not None:
    tiny_cfg = tiny_stage_config(cfg)
    if not ckpt_lib.has_checkpoint(w.vae_tiny):
      trainer.save_params_checkpoint(tiny_cfg, w.vae_tiny, TinyDecoderTask(tiny_cfg, params),
                                     shipped)
    final["tiny"] = {"step": 0, "init_from": init, "trained": False}
    _, tiny_params = loading.load_tiny_decoder(cfg, workdir)
  elif cfg.vae.tiny_steps > 0:
    tiny_cfg = tiny_stage_config(cfg)
    tiny_task = TinyDecoderTask(tiny_cfg, params)
    _retire_stale_tiny(w.vae_tiny, params_fingerprint(params))
    final["tiny"] = trainer.train(tiny_cfg, w.vae_tiny, tiny_task,
                                  FramesOnly(loader.make_clip_iterator(tiny_cfg, data_dir)))
    _, tiny_params = loading.load_tiny_decoder(cfg, workdir)
  final["eval"] = evaluate(run_cfg, params, data_dir, out, tiny_params=tiny_params)
  return final


TINY_VAE_FILE = "vae.json"


def _retire_stale_tiny(tiny_dir: str, vae_fingerprint: str) -> None:
  """The tiny decoder regresses frames from one VAE's latents: one trained on another VAE
  (its recorded fingerprint differs, e.g. the VAE trained on) is moved to <tiny_dir>.stale
  (replacing an older one) and retrained; then the current VAE's fingerprint is recorded. A
  run without a record (before it existed) is taken as trained on the current VAE."""
  path = os.path.join(tiny_dir, TINY_VAE_FILE)
  if jax.process_index() != 0:
    return
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f).get("vae_fingerprint")
    if old != vae_fingerprint:
      stale = tiny_dir.rstrip(os.sep) + ".stale"
      shutil.rmtree(stale, ignore_errors=True)
      os.replace(tiny_dir, stale)
      print(f"[relic] the tiny decoder in {tiny_dir} was trained on another VAE ({old}, now "
            f"{vae_fingerprint}): moved to {stale}, retraining it", flush=True)
  os.makedirs(tiny_dir, exist_ok=True)
  write_json_atomic(path, {"vae_fingerprint": vae_fingerprint})


def params_fingerprint(params) -> str:
  """A content hash of a params pytree (names, shapes, dtypes and bytes)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype};".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def encode_dataset(cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
                   stop_after: int | None = None) -> dict:
  """`relic encode`: the latest VAE checkpoint of <workdir>/vae encodes every training clip into
  the latent cache (config.data.latent_dir or <workdir>/latents), and with
  model.text_encoder='umt5' the umT5 of model.text_encoder_from every distinct caption;
  resumable, rebuilt when the VAE checkpoint or the text encoder changes."""
  vae, params = loading.load_vae(cfg, workdir)
  encode = jax.jit(lambda p, f: vae_lib.encode(p, vae, to_unit(f))[0])
  stats = None  # a pretrained VAE's own latent statistics (as Wan's), else computed
  pre = Workdir(root=workdir).vae_pretrained
  if os.path.exists(pre):
    with open(pre) as f:
      stats = json.load(f)["latent_stats"]

  def encode_fn(frames):
    return np.asarray(encode(params, frames))
  text = {}
  if cfg.model.text_encoder == TextEncoder.UMT5:  # the captions' umT5 embeddings, cached too
    encoder = text_lib.from_config(cfg)
    text = {"text_fn": encoder, "text_fingerprint": encoder.fingerprint}
  cache_dir = Workdir.of(cfg, workdir).latents
  return latent_cache.build(cfg, dataset_dir(cfg, workdir), cache_dir, encode_fn,
                            params_fingerprint(params), vae.z_dim,
                            batch_size=cfg.data.encode_batch_size, progress=progress,
                            stop_after=stop_after, stats=stats, **text)
