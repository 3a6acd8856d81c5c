"""`relic evaluate`: action following, spatial memory, stability and speed of the student.

The truth comes from one of two places (config.evaluate.truth, evaluation/recorded.py):
"doom" renders scripted cameras on held-out maps; "recorded" takes the held-out episodes of
the run's dataset as they were recorded (the default "auto": recorded for an ingested dataset,
Doom otherwise). What needs a renderer: only the choice of the camera paths. With one, the
scripts are designed to revisit views (every default script has late revisits); recorded
episodes give only the revisits they happen to hold, and an episode without any has no memory
metrics (absent, '-' in the tables; the notes name it). Everything else, action following,
memory at the revisits there are, stability and speed, is computed the same way on both.

For each case (Doom: a script of config.evaluate.scripts on a held-out map, from a seeded
random open spot; recorded: a held-out episode from its frame 0, cut to whole blocks and to
config.evaluate.max_seconds):
  1. the truth: ViZDoom renders the scripted camera (data_pipeline.doom.render_actions), or the
     episode's frames and poses are read from the dataset's shards; frames at the model's size;
     the actions the model is given are those of the true poses (poses.actions_from_poses at
     config.generate.action_scale) either way;
  2. each method of config.evaluate.methods generates the video from the truth's frame 0,
     caption and actions: "relic" (the configured memory), "window" (memory.mode='window', no
     memory), "window_sink" (the window plus frame 0 kept forever, nothing else), "full"
     (memory.mode='full', the whole history uncompressed), and "copy_last" (frame 0 repeated:
     a model that never moves);
  3. metrics against the truth:
     * action following: the pose estimator (evaluation/pose_estimation.py, fitted on real
       frames) estimates the camera path of the generated video every `stride` frames; RPE
       (translation in metres, only on cases whose actions translate: scripts.translates;
       rotation in degrees) against the true path after Sim(3) alignment
       (evaluation/trajectory.py). The estimator's own error is its RPE on the true frames (the
       "truth" row), and a static camera's RPE is the "static" row;
     * spatial memory (evaluation/revisits.py): PSNR / SSIM of generated frames against the
       true frames at revisits beyond the uncompressed window (data_pipeline.preview.
       find_revisits with a minimum gap of (memory.window + model.block_frames) latent frames,
       the camera having left the view in between), and the same at late revisits (to views
       first seen after frame 0, which every memory mode but "window" keeps); consistency PSNR
       of each revisit frame against the generated frame it revisits, where the generated
       video also left that view;
     * stability: PSNR against the truth per second, and per-second image statistics (mean,
       contrast, sharpness), on the cases of 20 s and longer;
     * speed: per-block latency (median over the blocks after the first, which compiles) and
       frames per second.
Generated videos are cached in <workdir>/evaluate/<method>/<case>.npz with the stage their
weights came from (and, for recorded cases, which truth they are of), so an interrupted
evaluation resumes (and a changed student or dataset regenerates). Results:
<workdir>/results/metrics.json (method -> metrics, and "_meta": where the student's weights
come from and the truth's kind), metrics.md (that, the averages and one table per script, or
per recorded episode), details.json (per case, per script or episode, and per second),
videos/*.mp4 (relic | window_sink | window | truth) and plots/*.png. A student that is not
distilled is warned about on stderr and in metrics.md.
"""

import dataclasses
import os
import sys
import time

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipeline import doom
from data_pipeline import poses as poses_lib
from data_pipeline.episode import DataError
from data_pipeline.loader import crop_box
from data_pipeline.preview import find_revisits, frame_captions, write_video
from relic_jax.config.choices import MemoryMode
from relic_jax.config.derive import with_teacher_rope
from relic_jax.evaluation import figures
from relic_jax.evaluation import metrics as img_metrics
from relic_jax.evaluation import recorded as recorded_lib
from relic_jax.evaluation import report
from relic_jax.evaluation import revisits as revisits_lib
from relic_jax.evaluation import trajectory
from relic_jax.evaluation.pose_estimation import estimate_trajectory, load_pose_estimator
from relic_jax.inference import scripts as scripts_lib
from relic_jax.inference.loading import (fallback_warning, load_decoder, load_dit, load_vae,
                                        student_stage)
from relic_jax.inference.session import Session
from relic_jax.io_utils import write_bytes_atomic, write_json_atomic, write_npz_atomic
from relic_jax.models import vae as vae_lib
from relic_jax.workdir import Workdir

# The methods that generate, with the memory mode each streams with (None: the configured
# memory); METHODS adds "copy_last", frame 0 repeated, which generates nothing.
MODES = {"relic": None, "window": MemoryMode.WINDOW.value,
         "window_sink": MemoryMode.WINDOW_SINK.value, "full": MemoryMode.FULL.value}
METHODS = (*MODES, "copy_last")
LONG_SCRIPT_S = 20.0  # cases at least this long get the per-second stability curves


@dataclasses.dataclass(frozen=True)
class Case:
  """A Doom case: a script on a held-out map from a seeded start."""
  name: str
  script: str
  map_path: str
  seed: int

  truth_id = ""  # the rendered truth is a function of the name: nothing more to check


def cases(cfg) -> list[Case]:
  ev = cfg.evaluate
  maps = list(ev.maps) or list(cfg.data.gen.heldout_maps)
  if not maps:
    raise DataError("config.evaluate.maps and config.data.gen.heldout_maps are both empty: "
                    "there is no held-out map to evaluate on. Fix: set config.evaluate.maps.")
  out = []
  for script in ev.scripts:
    stem = os.path.splitext(os.path.basename(script))[0]
    for m in maps:
      for k in range(ev.episodes_per_map):
        seed = int(np.random.SeedSequence([cfg.seed, 7, k]).generate_state(1, np.uint32)[0])
        out.append(Case(f"{stem}-{m.replace('/', '-')}-{k}", script, m, seed))
  return out


def _to_model_size(frames: np.ndarray, h: int, w: int) -> np.ndarray:
  if frames.shape[1:3] == (h, w):
    return frames
  y0, x0, ch, cw = crop_box(frames.shape[1], frames.shape[2], h, w)
  return np.stack([np.asarray(Image.fromarray(f[y0:y0 + ch, x0:x0 + cw]).resize(
      (w, h), Image.Resampling.BILINEAR)) for f in frames])


def _truth_of(cfg, frames, poses, caption: str) -> dict:
  """The truth of a case from its frames and poses: frames at the model's size, poses, the
  model's actions [N, 13] (those of the true poses at config.generate.action_scale, as the
  generator reads them) and the caption."""
  h = cfg.data.latent_height * cfg.data.spatial_stride
  w = cfg.data.latent_width * cfg.data.spatial_stride
  actions, _ = poses_lib.actions_from_poses(poses, cfg.generate.action_scale)
  return {"frames": _to_model_size(frames, h, w), "poses": poses, "actions": actions,
          "caption": caption}


def recorded_truth(cfg, workdir: str, case: recorded_lib.RecordedCase) -> dict:
  """The true video of a recorded case: its frames from the dataset (at the model's size), its
  recorded poses, the model's actions from them and its caption (see _truth_of). Not cached:
  the shards are the cache."""
  frames, poses = recorded_lib.read(cfg, Workdir.of(cfg, workdir).data, case)
  return _truth_of(cfg, frames, poses, case.caption)


def truth_of_case(cfg, workdir: str, case) -> dict:
  """The truth of a Doom or a recorded case."""
  if isinstance(case, recorded_lib.RecordedCase):
    return recorded_truth(cfg, workdir, case)
  return render_truth(cfg, workdir, case)


def render_truth(cfg, workdir: str, case: Case) -> dict:
  """The true video of a case (cached in <workdir>/evaluate/truth): frames at the model's size,
  poses, the model's actions [N, 13] and the caption."""
  path = os.path.join(Workdir.of(cfg, workdir).evaluate, "truth", f"{case.name}.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      return {k: z[k] for k in z.files} | {"caption": str(z["caption"])}
  fpb = 4 * cfg.model.block_frames
  script = scripts_lib.load(case.script, cfg.generate.fps)
  script = scripts_lib.to_blocks(script, fpb).reshape(-1, script.shape[-1])  # whole blocks
  ep = doom.render_actions(case.map_path, case.seed, script, cfg.generate.action_scale,
                           doom.GenConfig.from_config(cfg.data.gen), name=case.name)
  truth = _truth_of(cfg, ep.frames, ep.poses, ep.caption) | {"script_actions": script}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_npz_atomic(path, **truth | {"caption": np.asarray(ep.caption)})
  return truth


# ------------------------------------------------------------------ generation


class _Generators:
  """One streaming session per method, compiled once for the longest case."""

  def __init__(self, cfg, workdir: str, max_latent_frames: int):
    self.cfg = with_teacher_rope(cfg)
    self.params, self.dit_from = load_dit(self.cfg, workdir)
    self.decoder = load_decoder(self.cfg, workdir)
    self.max_frames = max(self.cfg.memory.max_frames, max_latent_frames)
    self._sessions = {}

  def session(self, method: str):
    if method not in self._sessions:
      self._sessions[method] = Session(self.cfg, self.params, decoder=self.decoder,
                                       mode=MODES[method], max_frames=self.max_frames)
    return self._sessions[method]


def generate_case(gens: _Generators, method: str, truth: dict, seed: int):
  """(video uint8 [N, H, W, 3], per-block seconds) of one method on one case."""
  frames = truth["frames"]
  if method == "copy_last":
    return np.repeat(frames[:1], len(frames), 0), np.zeros(0)
  session = gens.session(method)
  fpb = 4 * gens.cfg.model.block_frames
  blocks = truth["actions"][1:].reshape(-1, fpb, truth["actions"].shape[-1])
  state, video0 = session.start(str(truth["caption"]), image=frames[0], seed=seed)
  out, times = [video0[0]], []
  for a in blocks:
    t0 = time.perf_counter()
    state, res = session.step(state, a)
    video = np.asarray(res["video"][0])
    times.append(time.perf_counter() - t0)
    out.append(video)
  return np.concatenate(out)[:len(frames)], np.asarray(times)


# ------------------------------------------------------------------ metrics


def image_stats(frames) -> np.ndarray:
  """Per frame [N, 3]: mean intensity, contrast (std of luma) and sharpness (mean absolute
  luma gradient), all on a 0..1 scale."""
  y = np.asarray(frames, np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
  grad = np.abs(np.diff(y, axis=-1)).mean((-2, -1)) + np.abs(np.diff(y, axis=-2)).mean((-2, -1))
  return np.stack([y.mean((-2, -1)), y.std((-2, -1)), grad], -1)


def per_second(values, fps: float) -> np.ndarray:
  """Means of consecutive 1-second spans of a per-frame series [N, ...]."""
  values = np.asarray(values)
  n = int(len(values) // fps)
  return np.stack([values[int(round(i * fps)):int(round((i + 1) * fps))].mean(0)
                   for i in range(n)]) if n else values[:0]


def revisit_metrics(video, frames, psnr, revisits, prefix: str = "") -> dict:
  """PSNR / SSIM against the truth at the revisit frames t (revisits[t] = s >= 0), and the
  consistency PSNR of video[t] against video[s] where the generated video left s's view in
  between (revisits.consistency_mask); keys prefixed by `prefix`, none without revisits."""
  hit = np.flatnonzero(revisits >= 0)
  if not len(hit):
    return {}
  out = {f"{prefix}revisit_psnr": float(psnr[hit].mean()),
         f"{prefix}revisit_ssim": float(img_metrics.ssim(video[hit], frames[hit]).mean()),
         f"{prefix}revisit_frames": int(len(hit))}
  ok = np.flatnonzero(revisits_lib.consistency_mask(video, frames, revisits))
  out[f"{prefix}consistency_frames"] = int(len(ok))
  if len(ok):
    out[f"{prefix}consistency_psnr"] = float(np.minimum(
        img_metrics.psnr(video[ok], video[revisits[ok]]), 100.0).mean())
  return out


def case_metrics(cfg, truth: dict, video: np.ndarray, times: np.ndarray, estimator,
                 revisits: np.ndarray, translates: bool = True) -> dict:
  """The metrics of one generated video against its truth. `revisits` is find_revisits of the
  truth's poses; `translates`: whether the script moves the camera's centre (else rpe_trans,
  meaningless without translation, is left out)."""
  ev = cfg.evaluate
  fps = cfg.generate.fps
  frames = truth["frames"]
  psnr = img_metrics.psnr(video, frames)
  psnr = np.minimum(psnr, 100.0)  # identical frames (frame 0) count as 100 dB, not inf
  out = {"psnr": float(psnr[1:].mean())}
  out.update(revisit_metrics(video, frames, psnr, revisits))
  late = revisits_lib.late_revisits(truth["poses"], revisits, ev.revisit_distance,
                                    ev.revisit_angle_deg)
  out.update(revisit_metrics(video, frames, psnr, late, prefix="late_"))
  est = estimate_trajectory(estimator, video)
  out.update(action_following(est, truth["poses"][::estimator.stride], translates))
  seconds = len(frames) / fps
  if seconds >= LONG_SCRIPT_S:
    out["psnr_per_second"] = per_second(psnr, fps).tolist()
    out["stats_per_second"] = per_second(image_stats(video), fps).tolist()
    last = psnr[-int(round(10 * fps)):]
    out["psnr_last_10s"] = float(last.mean())
  if len(times) > 1:
    lat = float(np.median(times[1:]))
    out["block_latency_ms"] = 1000 * lat
    out["fps"] = 4 * cfg.model.block_frames / lat
  return out


def action_following(est, ref, translates: bool) -> dict:
  """RPE of an estimated trajectory est [n, 4, 4] against the true poses ref (every stride-th
  frame): rpe_rot, and rpe_trans only when the script `translates` (without translation the
  Sim(3) scale is degenerate and a static camera scores best)."""
  got = trajectory.rpe(est, ref[:len(est)])
  return {k: v for k, v in got.items() if k != "pairs" and (translates or k != "rpe_trans")}


def _mean(rows, key):
  vals = [r[key] for r in rows if r.get(key) is not None]
  return float(np.mean(vals)) if vals else None


def summarise(entries) -> dict:
  """Case entries of details.json -> {method: {metric: mean over the cases that have it}} for
  every method, plus the pose estimator on the true frames ("truth") and a static camera
  ("static"): rpe_trans / rpe_rot only; and "flat_colour": the PSNR of each true frame's own
  mean colour, the score of a blur that keeps only the colour."""
  entries = list(entries)
  methods = list(dict.fromkeys(m for e in entries for m in e["methods"]))
  out = {m: {k: _mean([e["methods"][m] for e in entries if m in e["methods"]], k)
             for k in report.SUMMARY_KEYS} for m in methods}
  for row in ("truth", "static"):
    out[row] = {k: _mean([e[row] for e in entries], k) for k in ("rpe_trans", "rpe_rot")}
  flat = [e["flat_colour"] for e in entries if "flat_colour" in e]
  if flat:
    out["flat_colour"] = {"psnr": _mean(flat, "psnr")}
  return out


# ------------------------------------------------------------------ reports


def _video(results_dir: str, case: Case, truth: dict, videos: dict, fps: float) -> str:
  shown = [m for m in ("relic", "window_sink", "window") if m in videos]
  panels = [videos[m] for m in shown] + [truth["frames"]]
  labels = shown + ["truth"]
  sep = np.full((len(truth["frames"]), truth["frames"].shape[1], 2, 3), 255, np.uint8)
  joined = np.concatenate(sum([[p, sep] for p in panels], [])[:-1], axis=2)
  rev = find_revisits(truth["poses"], min_gap_frames=30)
  caps = frame_captions(truth["actions"], rev, fps, threshold=0.0)
  caps = [" | ".join(labels) + "\n" + c for c in caps]
  path = os.path.join(results_dir, "videos", f"{case.name}.mp4")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return write_video(path, joined, fps, caps)


def _figures(cfg, workdir: str, results_dir: str, truth: dict, videos: dict) -> list[str]:
  """results/look_away.gif (relic | window | truth) and results/frames.png (truth | the full
  VAE's reconstruction | relic at a few times) of one case (evaluation/figures.py)."""
  fps = cfg.generate.fps
  frames = truth["frames"]
  out = []
  panels = [(m, videos[m]) for m in ("relic", "window") if m in videos]
  if panels:
    out.append(figures.write_gif(os.path.join(results_dir, "look_away.gif"),
                                 figures.side_by_side(panels + [("truth", frames)]), fps))
  vae, params = load_vae(cfg, workdir)
  duration = (len(frames) - 1) / fps
  times = [t for t in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0) if t <= duration]
  idx = [int(round(t * fps)) for t in times]
  # the VAE row: each shown frame reconstructed as the first frame of a 5-frame clip starting
  # there (one compile of a fixed shape; a whole case at once compiles for minutes)
  recon_fn = jax.jit(lambda p, x: vae_lib.decode(p, vae, vae_lib.encode(p, vae, x)[0]))
  clips = np.stack([np.concatenate([frames[i:i + 5], np.repeat(frames[-1:], 5, 0)])[:5]
                    for i in idx])
  recon = np.zeros_like(frames)
  for i, clip in zip(idx, clips):
    recon[i] = vae_lib.to_uint8(np.asarray(recon_fn(params, vae_lib.to_unit(clip[None])))[0, 0])
  rows = [("truth", frames), ("VAE", recon)] + [(m, videos[m]) for m in ("relic",) if m in videos]
  out.append(figures.frames_figure(os.path.join(results_dir, "frames.png"), rows, times, fps))
  return out


# ------------------------------------------------------------------ the stage


def _cached_video(path: str, weights_from: str, truth_id: str = "", frames=None):
  """(video, times) of a cached generation, or None when absent, made by another stage's
  weights, of another truth (`truth_id`: a recorded case's, "" for Doom's, whose truth its
  name fixes; caches from before it count as "") or of another shape than the truth's
  `frames` (it is then generated again)."""
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    if "weights_from" in z.files and str(z["weights_from"]) != weights_from:
      return None
    if (str(z["truth_id"]) if "truth_id" in z.files else "") != truth_id:
      return None
    if frames is not None and z["video"].shape != frames.shape:
      return None
    return z["video"], z["times"]


def cases_of(cfg, workdir: str) -> tuple[str, list]:
  """(the truth's kind, "doom" or "recorded"; its cases), every case checked before anything
  is generated."""
  kind = recorded_lib.truth_kind(cfg, workdir)
  if kind == "recorded":
    return kind, recorded_lib.cases(cfg, Workdir.of(cfg, workdir).data)
  return kind, cases(cfg)


def _describe(case) -> dict:
  """What a case is, in details.json; "group": the table it is averaged into (metrics.md), its
  script, or its recorded episode (no script groups recorded episodes: one table each)."""
  if isinstance(case, recorded_lib.RecordedCase):
    return {"group": case.name, "episode": case.name, "recorded_frames": case.recorded_frames,
            "caption": case.caption}
  return {"group": case.script, "script": case.script, "map": case.map_path, "seed": case.seed}


def _figure_case(kind: str, all_cases, late_counts: dict):
  """The case of results/look_away.gif and frames.png: Doom's look_around, or the recorded
  episode with the most late revisit frames (the first on a tie)."""
  if kind == "recorded":
    return max(all_cases, key=lambda c: late_counts[c.name])
  return next((c for c in all_cases if c.script == "look_around"), all_cases[0])


def evaluate(cfg, workdir: str, progress: bool = True) -> dict:
  """Runs the evaluation (see the module docstring); returns {"metrics": method -> summary
  (and "_meta"), "results": the results directory, "videos", "plots"}."""
  ev = cfg.evaluate
  methods = list(ev.methods)
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise DataError(f"config.evaluate.methods has unknown {unknown}. Fix: choose from "
                    f"{', '.join(METHODS)}.")
  wd = Workdir.of(cfg, workdir)
  kind, all_cases = cases_of(cfg, workdir)
  estimator = load_pose_estimator(wd.pose_estimator)
  generating = [m for m in methods if m in MODES]
  weights_from = student_stage(cfg, workdir) if generating else None
  warning = fallback_warning(weights_from) if weights_from else None
  if warning:
    print(f"\n{'!' * 78}\n[relic] WARNING: {warning}\n{'!' * 78}\n", file=sys.stderr)
  t0 = time.time()
  truths = {}
  for case in tqdm(all_cases, desc="truth", disable=not progress):
    truths[case.name] = truth_of_case(cfg, workdir, case)
  bf = cfg.model.block_frames
  longest = max(len(t["frames"]) for t in truths.values())
  gens = None
  min_gap = 4 * (cfg.memory.window + bf)
  details = {"cases": {}, "min_gap_frames": min_gap, "truth": kind}
  videos_written = []
  bar = tqdm(total=len(all_cases) * len(methods), desc="evaluate", disable=not progress)
  found = {}
  for case in all_cases:
    truth = truths[case.name]
    revisits = find_revisits(truth["poses"], min_gap_frames=min_gap,
                             max_distance=ev.revisit_distance, max_angle_deg=ev.revisit_angle_deg)
    found[case.name] = (revisits, revisits_lib.late_revisits(
        truth["poses"], revisits, ev.revisit_distance, ev.revisit_angle_deg))
  fig_case = _figure_case(kind, all_cases,
                          {c: int((late >= 0).sum()) for c, (_, late) in found.items()})
  for ci, case in enumerate(all_cases):
    truth = truths[case.name]
    revisits, late = found[case.name]
    # Doom: whether the script moves the camera's centre; recorded: whether the actions do
    translates = scripts_lib.translates(truth.get("script_actions", truth["actions"]))
    entry = {**_describe(case), "frames": int(len(truth["frames"])),
             "revisit_frames": int((revisits >= 0).sum()),
             "late_revisit_frames": int((late >= 0).sum()), "translates": translates,
             "methods": {}}
    ref = truth["poses"][::estimator.stride]
    entry["truth"] = action_following(estimate_trajectory(estimator, truth["frames"]), ref,
                                      translates)
    entry["static"] = action_following(np.repeat(ref[:1], len(ref), 0), ref, translates)
    entry["flat_colour"] = {"psnr": img_metrics.flat_colour_psnr(truth["frames"])}
    videos = {}
    for method in methods:
      path = os.path.join(wd.evaluate, method, f"{case.name}.npz")
      made_by = weights_from if method in MODES else "none"
      cached = _cached_video(path, made_by, case.truth_id, truth["frames"])
      if cached is not None:
        video, times = cached
      else:
        if gens is None and method in MODES:
          gens = _Generators(cfg, workdir, 1 + bf * ((longest - 1) // (4 * bf)))
        video, times = generate_case(gens, method, truth, seed=cfg.seed + ci)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_npz_atomic(path, video=video, times=times, weights_from=np.asarray(made_by),
                         truth_id=np.asarray(case.truth_id))
      videos[method] = video
      entry["methods"][method] = case_metrics(cfg, truth, video, times, estimator, revisits,
                                              translates)
      bar.update(1)
    if ev.videos:
      videos_written.append(_video(wd.results, case, truth, videos, cfg.generate.fps))
      if case is fig_case:
        videos_written += _figures(cfg, workdir, wd.results, truth, videos)
    details["cases"][case.name] = entry
  bar.close()
  summary = summarise(details["cases"].values())
  by_group = {}
  for e in details["cases"].values():
    by_group.setdefault(e["group"], []).append(e)
  groups = {group: summarise(es) for group, es in by_group.items()}
  details["episodes" if kind == "recorded" else "scripts"] = groups
  meta = {"weights_from": weights_from, "distilled": bool(weights_from) and warning is None,
          "warning": warning, "truth": kind}
  results = wd.results
  os.makedirs(results, exist_ok=True)
  details.update({"_meta": meta, "seconds": time.time() - t0, "pose_estimator": estimator.meta,
                  "memory": cfg.memory.to_dict()})
  notes = _recorded_notes(cfg, details, min_gap) if kind == "recorded" else _notes(
      cfg, all_cases, min_gap)
  write_json_atomic(os.path.join(results, "details.json"), details)
  write_json_atomic(os.path.join(results, "metrics.json"), {**summary, "_meta": meta})
  write_bytes_atomic(os.path.join(results, "metrics.md"), report.markdown(
      summary, groups, meta, notes, group="episode" if kind == "recorded" else "script").encode())
  plots = report.plots(results, details, {m: summary[m] for m in methods})
  return {"metrics": {**summary, "_meta": meta}, "results": results, "videos": videos_written,
          "plots": plots, "seconds": time.time() - t0}


def _revisit_rule(cfg, min_gap: int) -> str:
  ev = cfg.evaluate
  return (f"A revisit is a frame at least {min_gap} frames (the window and a block) after a "
          f"frame within {ev.revisit_distance} m and {ev.revisit_angle_deg} deg of its pose, "
          "the camera having left that pose in between; a late revisit one whose earlier view "
          "is not frame 0's (by the same rule). Consistency (the revisit against the generated "
          "earlier view) counts only where the generated video also left that view (copy_last "
          "never does). ")


_ROWS_NOTE = ("per stride of the pose estimator; 'truth' is the pose estimator on the true "
              "frames (its own error), 'static' a camera that never moves.\n")


def _notes(cfg, all_cases, min_gap: int) -> str:
  ev = cfg.evaluate
  return (f"{len(all_cases)} cases ({', '.join(ev.scripts)} on "
          f"{', '.join(sorted({c.map_path for c in all_cases}))}). " + _revisit_rule(cfg, min_gap)
          + "PSNR in dB; rpe_trans in metres (scripts with translation only), rpe_rot in "
          "degrees, " + _ROWS_NOTE)


def _recorded_notes(cfg, details: dict, min_gap: int) -> str:
  cases_ = details["cases"]
  without = [name for name, e in cases_.items() if not e["revisit_frames"]]
  no_late = [name for name, e in cases_.items() if e["revisit_frames"] and
             not e["late_revisit_frames"]]
  lengths = sorted({e["frames"] for e in cases_.values()})
  plural = "s" if len(cases_) != 1 else ""
  out = (f"{len(cases_)} recorded case{plural}: the held-out episodes of the dataset (the last "
         f"{cfg.data.heldout_episodes}), each from its frame 0 for "
         f"{' / '.join(str(n) for n in lengths)} frames (whole blocks, at most "
         f"evaluate.max_seconds = {cfg.evaluate.max_seconds:g} s), as recorded: the revisits are "
         "those the recorded camera happens to make, not designed ones. One table per episode "
         "below (no script groups them). " + _revisit_rule(cfg, min_gap))
  if without:
    out += ("Episodes without any revisit have no memory metrics (revisit_*, late_*, "
            f"consistency_*: '-') and are left out of their averages: {', '.join(without)}. ")
  if no_late:
    out += f"Episodes without late revisits (no late_* metrics): {', '.join(no_late)}. "
  return out + ("PSNR in dB; rpe_trans in metres (episodes whose actions translate), rpe_rot "
                "in degrees, " + _ROWS_NOTE)
