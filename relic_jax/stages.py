"""The bodies of the `relic` stages that need no command-line flags beyond --config and
--workdir: the CLI (relic_jax/cli.py) and the pipeline (relic_jax/pipeline.py) both call them.
Each prints a one-line summary of what it did and where its outputs are."""

import json
import os


def data(cfg, workdir):
  """`relic data`: generate the ViZDoom episode dataset in config.data.dir or <workdir>/data."""
  import time
  from data_pipeline.generate import dataset_dir, generate
  out = dataset_dir(cfg, workdir)
  t0 = time.time()
  m = generate(cfg, out, progress=cfg.train.progress_bar)
  report_dataset(m, out, t0)


def report_dataset(m, out, t0):
  import time
  timing = m["timing"]
  print(json.dumps({k: m[k] for k in ("num_shards", "num_episodes", "num_frames")} | timing,
                   sort_keys=True))
  rate = timing["frames_written"] / max(timing["seconds"], 1e-9)
  print(f"[relic] dataset in {out}: {m['num_episodes']} episodes, {m['num_frames']} frames in "
        f"{m['num_shards']} shards ({timing['shards_written']} written now at {rate:.0f} "
        f"frames/s, {timing['shards_skipped']} already complete) in {time.time() - t0:.1f}s")


def train_vae(cfg, workdir):
  from relic_jax.training.vae_train import stage_workdir, train_vae
  final = train_vae(cfg, workdir)
  print(json.dumps(final, sort_keys=True))
  ev = final["eval"]
  print(f"[relic] VAE done: checkpoints in {stage_workdir(workdir)}/checkpoints; held-out PSNR "
        f"{ev['heldout_psnr']:.2f} dB, SSIM {ev['heldout_ssim']:.3f} over {ev['frames']} "
        f"frames; input | reconstruction video {ev['video']}")


def encode(cfg, workdir):
  from relic_jax.training.vae_train import encode_dataset
  r = encode_dataset(cfg, workdir, progress=cfg.train.progress_bar)
  print(json.dumps(r, sort_keys=True))
  why = f" (rebuilt: {r['rebuilt']})" if r["rebuilt"] else ""
  print(f"[relic] latent cache {r['dir']}: {r['num_clips']} clips, {r['encoded_now']} encoded "
        f"now in {r['seconds']:.1f}s, {r['skipped']} already there{why}")


def train_teacher(cfg, workdir):
  """Trains the teacher in <workdir>/teacher (through config.train.horizon_curriculum when set:
  earlier horizons in <workdir>/teacher/horizon_<i>_<frames>f), on the synthetic latents or on
  the latent cache (data.source='latents': config.data.latent_dir or <workdir>/latents, as
  `relic encode` wrote it); the cache's latent_stats, which the teacher's latents are
  normalised by, are copied to <workdir>/teacher/latent_stats.json for generation."""
  from data_pipeline.loader import CachedLatents, make_train_iterator
  from relic_jax.io_utils import write_json_atomic
  from relic_jax.training.teacher import train_teacher
  out = os.path.join(workdir, "teacher")

  def make_iterator(phase_cfg):
    if phase_cfg.data.source != "latents":
      return make_train_iterator(phase_cfg)
    latent_dir = phase_cfg.data.latent_dir or os.path.join(workdir, "latents")
    source = CachedLatents(phase_cfg, latent_dir)  # checks the cache against the config
    if phase_cfg.data.normalize_latents:
      os.makedirs(out, exist_ok=True)
      write_json_atomic(os.path.join(out, "latent_stats.json"), source.stats)
    return make_train_iterator(phase_cfg, source=source)

  final = train_teacher(cfg, workdir, make_iterator)
  print(json.dumps(final, sort_keys=True))
  print(f"[relic] done: checkpoints in {out}/checkpoints, TensorBoard logs in "
        f"{out}/tensorboard, final metrics in {out}/final_metrics.json")


def ode_init(cfg, workdir):
  from relic_jax.training.ode_init import ode_init, stage_workdir
  final = ode_init(cfg, workdir, progress=cfg.train.progress_bar)
  print(json.dumps(final, sort_keys=True))
  out = stage_workdir(workdir)
  print(f"[relic] ODE initialisation done: regression loss {final.get('first_loss', 0):.4f} -> "
        f"{final.get('loss', 0):.4f}; trajectories in {out}/trajectories, the student in "
        f"{out}/checkpoints")


def distill(cfg, workdir):
  from relic_jax.training.distill import distill, stage_workdir
  final = distill(cfg, workdir)
  print(json.dumps(final, sort_keys=True))
  out = stage_workdir(workdir)
  proxy = ""
  if "first_teacher_fm_loss" in final:
    proxy = (f"; teacher flow-matching loss on the student's rollouts "
             f"{final['first_teacher_fm_loss']:.4f} -> {final['last_teacher_fm_loss']:.4f}")
  print(f"[relic] distillation done at step {final['step']} (generator from "
        f"{final['generator_from']}, {final['backprop']} back-propagation){proxy}; checkpoints "
        f"in {out}/checkpoints, metrics in {out}/metrics.jsonl")


def pose_estimator(cfg, workdir):
  """`relic pose_estimator`: the pose estimator of the evaluation, on the dataset's real
  frames, into <workdir>/pose_estimator."""
  from data_pipeline.generate import dataset_dir
  from relic_jax.evaluation.pose_estimation import train_pose_estimator
  out = os.path.join(workdir, "pose_estimator")
  meta = train_pose_estimator(cfg, dataset_dir(cfg, workdir), out,
                              progress=cfg.train.progress_bar)
  print(json.dumps(meta, sort_keys=True, default=str))
  print(f"[relic] pose estimator in {out} (stride {meta['stride']} frames)")


def evaluate(cfg, workdir):
  from relic_jax.evaluation.evaluate import evaluate
  r = evaluate(cfg, workdir, progress=cfg.train.progress_bar)
  m = r["metrics"]
  print(json.dumps(m, sort_keys=True))
  print(f"[relic] evaluation done in {r['seconds']:.0f}s: metrics {r['results']}/metrics.json "
        f"(table: metrics.md), videos (relic | window | truth) in {r['results']}/videos, plots "
        f"in {r['results']}/plots")


def pipeline(cfg, workdir):
  from relic_jax.pipeline import run_pipeline
  r = run_pipeline(cfg, workdir, progress=cfg.train.progress_bar)
  res = r["results"]
  print("[relic] pipeline stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in r["stages"].items()))
  if r["metrics"] is not None:
    with open(os.path.join(res, "metrics.md")) as f:
      print(f.read())
  print(f"[relic] pipeline done in {r['seconds'] / 60:.1f} min. Results in {res}: metrics.json "
        f"and metrics.md, videos/*.mp4 (generated with memory | window only | ground truth), "
        f"plots/*.png; details per case in details.json")
