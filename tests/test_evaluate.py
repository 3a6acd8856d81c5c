"""The evaluation's pieces against known answers: the scripted truth ViZDoom renders, the
revisit and per-second bookkeeping, and the metrics of one case; and the evaluation end to end
on recorded episodes (the procedural room of tests/procedural.py, ingested)."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from data_pipeline import doom
from data_pipeline import poses as poses_lib
from data_pipeline.episode import DataError
from data_pipeline.preview import find_revisits
from relic_jax.config import get_base_config
from relic_jax.evaluation import evaluate as ev
from relic_jax.evaluation import trajectory
from relic_jax.inference import scripts
from tests import procedural
from tests.test_generate import trained_run  # noqa: F401 (the module fixture)

FPS = 17.5
LOOK_AWAY = "0.5 static\n2.0 pan_left\n2.0 pan_right\n0.5 static"


@pytest.fixture(scope="module")
def look_away(tmp_path_factory):
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("vizdoom"))  # ViZDoom writes _vizdoom.ini in the cwd
  try:
    actions = scripts.parse(LOOK_AWAY, FPS)
    ep = doom.render_actions("freedoom2/MAP05", 11, actions, 0.06, doom.GenConfig())
  finally:
    os.chdir(cwd)
  return actions, ep


def test_scripted_truth_turns_exactly_and_renders_the_same_view_on_return(look_away):
  actions, ep = look_away
  assert ep.frames.shape == (1 + len(actions), 64, 64, 3)
  # the engine followed the pans: 90 degrees left, then back to the start heading
  _, ang = poses_lib.relative_motion(ep.poses)
  turned = np.degrees(-ang[:, 0])  # + = left
  n = round(2.0 * FPS)
  start = round(0.5 * FPS)
  assert turned[start:start + n].sum() == pytest.approx(90.0, abs=0.5)
  assert turned.sum() == pytest.approx(0.0, abs=0.5)
  # the same pose renders the same image: the truth of a revisit is exact
  assert np.allclose(ep.poses[-1], ep.poses[0], atol=1e-6)
  from relic_jax.evaluation.metrics import psnr
  assert psnr(ep.frames[-1], ep.frames[0]) > 50.0 > 30.0 > psnr(ep.frames[20], ep.frames[0])
  # the model's actions from the truth's poses, at the generation scale, are the script's pans
  model_actions, scale = poses_lib.actions_from_poses(ep.poses, 0.06)
  assert scale == 0.06
  np.testing.assert_allclose(model_actions[1 + start:1 + start + n, 8],
                             actions[start:start + n, 8], atol=2e-3)
  # frames that look away and come back beyond a 36-frame gap are found as revisits
  rev = find_revisits(ep.poses, min_gap_frames=36, max_distance=0.3, max_angle_deg=10.0)
  hits = np.flatnonzero(rev >= 0)
  assert len(hits) and hits.min() > start + n  # only on the way back
  fwd = ep.poses[:, :3, 2]
  cos = (fwd[hits] * fwd[rev[hits]]).sum(-1)
  assert (cos >= np.cos(np.radians(10.0)) - 1e-9).all()  # the same view, 36+ frames earlier
  assert (rev[-start:] <= start).all()  # the closing static frames revisit the opening ones


def test_scripted_truth_refuses_what_the_camera_cannot_do():
  actions = scripts.parse("1.0 pedestal_up", FPS)
  with pytest.raises(DataError, match="cannot pedestal"):
    doom.render_actions("freedoom2/MAP05", 0, actions, 0.06, doom.GenConfig())


def test_per_second_and_image_stats():
  series = np.arange(35, dtype=np.float64)  # 2 s at 17.5 fps
  got = ev.per_second(series, FPS)
  np.testing.assert_allclose(got, [np.mean(series[0:18]), np.mean(series[18:35])])
  frames = np.zeros((2, 16, 16, 3), np.uint8)
  frames[1, :, 8:] = 255  # half white: mean 0.5, std 0.5, one vertical edge
  stats = ev.image_stats(frames)
  np.testing.assert_allclose(stats[0], [0, 0, 0], atol=1e-9)
  np.testing.assert_allclose(stats[1, :2], [0.5, 0.5], atol=1e-6)
  assert stats[1, 2] == pytest.approx(1.0 / 15.0, rel=1e-6)  # one step in 15 column pairs


class _StillEstimator:
  """An estimator that sees no motion at all: its trajectory is a static camera."""
  stride = 4
  meta = {"stride": 4}

  def relative(self, a, b):
    return np.zeros((len(a), 3)), np.zeros((len(a), 3))


def test_case_metrics_of_a_perfect_and_of_a_frozen_model(look_away):
  _, ep = look_away
  cfg = get_base_config()
  truth = {"frames": ep.frames, "poses": ep.poses}
  rev = find_revisits(ep.poses, min_gap_frames=36, max_distance=0.3, max_angle_deg=10.0)
  perfect = ev.case_metrics(cfg, truth, ep.frames, np.array([0.5, 0.1, 0.1]), _StillEstimator(),
                            rev, translates=False)
  assert perfect["revisit_psnr"] == 100.0 and perfect["revisit_ssim"] == pytest.approx(1.0)
  assert perfect["psnr"] == 100.0
  assert perfect["block_latency_ms"] == pytest.approx(100.0)  # median after the first block
  assert perfect["fps"] == pytest.approx(12 / 0.1)
  # the still estimator gives a static camera's RPE: the true motion itself
  static = trajectory.rpe(np.repeat(ep.poses[:1], len(ep.poses[::4]), 0), ep.poses[::4])
  assert perfect["rpe_rot"] == pytest.approx(static["rpe_rot"])
  assert perfect["rpe_rot"] > 5.0  # 90 degrees in 35 frames: ~10 degrees per 4 frames
  # the truth itself left each revisited view and came back: consistency counts everywhere
  # (the revisit's pose is within the rule, not identical: not quite 100 dB)
  assert perfect["consistency_psnr"] > 50.0
  assert perfect["consistency_frames"] == perfect["revisit_frames"] > 0
  # late revisits: the views 10-40 degrees to the left, seen on the way out and again more
  # than 36 frames later on the way back; the rest are returns to frame 0's view
  assert 0 < perfect["late_revisit_frames"] < perfect["revisit_frames"]
  assert perfect["late_revisit_psnr"] == 100.0 and perfect["late_consistency_psnr"] > 50.0
  assert "rpe_trans" not in perfect  # a pure pan: no translation to judge
  frozen = np.repeat(ep.frames[:1], len(ep.frames), 0)
  m = ev.case_metrics(cfg, truth, frozen, np.zeros(0), _StillEstimator(), rev, translates=False)
  assert m["psnr"] < perfect["psnr"] and "fps" not in m
  # revisits are back near frame 0's view, so a frozen video matches them best there; but it
  # never left the view, so it has no consistency to report (not a perfect one)
  assert m["revisit_psnr"] > m["psnr"] + 3.0
  assert m["consistency_frames"] == 0 and "consistency_psnr" not in m
  assert m["late_consistency_frames"] == 0 and "late_consistency_psnr" not in m
  # and at late revisits, away from frame 0's view, frame 0 repeated is no longer the answer
  assert m["late_revisit_psnr"] < m["revisit_psnr"] - 3.0
  # with translation declared, rpe_trans is reported
  assert "rpe_trans" in ev.case_metrics(cfg, truth, frozen, np.zeros(0), _StillEstimator(), rev,
                                        translates=True)


def test_metric_table_drives_the_summary_the_markdown_and_the_sweep():
  from relic_jax import sweep
  from relic_jax.evaluation import report
  assert report.SUMMARY_KEYS == ("late_revisit_psnr", "late_revisit_ssim",
                                 "late_consistency_psnr", "revisit_psnr", "revisit_ssim",
                                 "consistency_psnr", "rpe_trans", "rpe_rot", "psnr",
                                 "psnr_last_10s", "fps", "block_latency_ms")
  assert [m.key for m in sweep.METRICS] == ["late_revisit_psnr", "late_revisit_ssim",
                                            "revisit_psnr", "revisit_ssim", "rpe_trans",
                                            "rpe_rot", "fps"]
  assert all(m in report.METRICS for m in sweep.METRICS)
  assert ev.METHODS == ("relic", "window", "window_sink", "full", "copy_last")
  assert "copy_last" not in ev.MODES and ev.MODES["window_sink"] == "window_sink"
  assert tuple(get_base_config().evaluate.methods) == ev.METHODS
  summary = {"relic": {"revisit_psnr": 21.123, "revisit_ssim": 0.61234, "rpe_trans": 0.1234,
                       "fps": 31.25, "block_latency_ms": 384.0},
             "truth": {"rpe_trans": 0.05, "rpe_rot": 1.0}}
  assert report.markdown_table(summary) == (
      "| method | late_revisit_psnr | late_revisit_ssim | late_consistency_psnr | revisit_psnr | "
      "revisit_ssim | consistency_psnr | rpe_trans | rpe_rot | psnr | psnr_last_10s | fps |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
      "| relic | - | - | - | 21.12 | 0.612 | - | 0.123 | - | - | - | 31.25 |\n"
      "| truth | - | - | - | - | - | - | 0.050 | 1.00 | - | - | - |\n")
  # per script: the columns marked per_script (no speed, no last-10-s PSNR)
  assert report.markdown_table(summary, per_script=True).splitlines()[0] == (
      "| method | late_revisit_psnr | late_revisit_ssim | late_consistency_psnr | revisit_psnr | "
      "revisit_ssim | consistency_psnr | rpe_trans | rpe_rot | psnr |")


def test_summary_per_script_and_the_weights_source_in_the_report():
  from relic_jax.evaluation import report
  from relic_jax.inference.loading import fallback_warning
  case = lambda script, v: {"script": script, "truth": {"rpe_rot": 1.0},
                            "static": {"rpe_rot": 2.0, "rpe_trans": 0.5},
                            "methods": {"relic": {"late_revisit_psnr": v, "fps": 10.0}}}
  entries = [case("a", 20.0), case("a", 22.0), case("b", 30.0)]
  summary = ev.summarise(entries)
  assert summary["relic"]["late_revisit_psnr"] == pytest.approx(24.0)
  assert summary["relic"]["revisit_psnr"] is None
  assert summary["truth"] == {"rpe_trans": None, "rpe_rot": 1.0}
  assert summary["static"] == {"rpe_trans": 0.5, "rpe_rot": 2.0}
  scripts_ = {s: ev.summarise([e for e in entries if e["script"] == s]) for s in ("a", "b")}
  assert scripts_["a"]["relic"]["late_revisit_psnr"] == pytest.approx(21.0)
  assert fallback_warning("distill") is None
  warning = fallback_warning("ode_init")
  assert "`ode_init`, not from distillation" in warning and "Fix: run `relic distill`" in warning
  md = report.markdown(summary, scripts_, {"weights_from": "ode_init", "distilled": False,
                                           "warning": warning}, "notes\n")
  assert md.startswith("# Evaluation\n\n> **WARNING: the student's weights come from `ode_init`")
  assert "Student weights: `ode_init`." in md
  assert md.index("## All scripts") < md.index("notes") < md.index("## a\n") < md.index("## b\n")
  assert "| relic | 21.00 |" in md and "| relic | 30.00 |" in md
  ok = report.markdown(summary, scripts_, {"weights_from": "distill", "distilled": True,
                                           "warning": None}, "")
  assert "WARNING" not in ok and "Student weights: `distill` (distilled)." in ok


def test_a_cached_video_from_other_weights_is_generated_again(tmp_path):
  path = str(tmp_path / "case.npz")
  assert ev._cached_video(path, "distill") is None
  np.savez(path, video=np.zeros((2, 4, 4, 3), np.uint8), times=np.zeros(1),
           weights_from=np.asarray("ode_init"))
  assert ev._cached_video(path, "distill") is None
  video, _ = ev._cached_video(path, "ode_init")
  assert video.shape == (2, 4, 4, 3)


def test_figures_label_panels_and_write_a_looping_gif(tmp_path):
  from PIL import Image

  from relic_jax.evaluation import figures
  from relic_jax.evaluation import metrics as img_metrics
  a = (np.arange(6)[:, None, None, None] * 40 + np.zeros((6, 8, 10, 3))).astype(np.uint8)
  b = np.full((5, 8, 10, 3), 200, np.uint8)  # (PIL merges identical frames: a varies)
  joined = figures.side_by_side([("relic", a), ("truth", b)])
  assert joined.shape == (5, 8 + figures.LABEL_H, 10 + 2 + 10, 3)  # the shorter length
  assert (joined[:, figures.LABEL_H:, 12:] == 200).all()
  path = figures.write_gif(str(tmp_path / "x.gif"), joined, fps=10.0, every=2, scale=2)
  with Image.open(path) as im:
    assert im.n_frames == 3 and im.size == (2 * 22, 2 * (8 + figures.LABEL_H))
    assert im.info["loop"] == 0 and im.info["duration"] == 200
  # the flat-colour reference: a frame of one colour scores 100 dB, texture scores less
  rng = np.random.default_rng(0)
  assert img_metrics.flat_colour_psnr(b) == 100.0
  assert img_metrics.flat_colour_psnr(rng.integers(0, 255, (2, 8, 8, 3), np.uint8)) < 15


# ------------------------------------------------------------------ recorded episodes

RECORDED_SECONDS = 5.5  # -> 97 frames: 8 blocks of 12 after frame 0 (the cut to whole blocks)
RECORDED_FRAMES = 97


def _ingest(cfg, source, data_dir):
  from data_pipeline import ingest as ingest_lib
  g = cfg.data.gen
  return ingest_lib.ingest(source, data_dir, g.height, g.width, codec=g.codec,
                           quality=g.jpeg_quality, episodes_per_shard=2, progress=False)


def _recorded_config(base):
  """`base` evaluating on recorded truth: the last two episodes held out, 97 frames of each."""
  cfg = base.copy_and_resolve_references()
  cfg.data.heldout_episodes = 2
  cfg.evaluate.truth = "recorded"
  cfg.evaluate.max_seconds = RECORDED_SECONDS
  return cfg


def _recorded_workdir(cfg, root, source: str) -> str:
  """A workdir with the source ingested as its dataset and the pose estimator fitted on it."""
  from relic_jax.evaluation import pose_estimation
  from relic_jax.workdir import Workdir
  workdir = str(root)
  wd = Workdir.of(cfg, workdir)
  _ingest(cfg, source, wd.data)
  pose_estimation.train_pose_estimator(cfg, wd.data, wd.pose_estimator, progress=False)
  return workdir


@pytest.fixture(scope="module")
def recorded_source(tmp_path_factory):
  """The procedural room's episodes as an ingest source: 4 of 110 frames, the last two held
  out: a tour with revisits and a drift without any."""
  source = str(tmp_path_factory.mktemp("room") / "source")
  return source, procedural.write_source(source, episodes=4, frames=110,
                                         plans=("tour", "tour", "tour", "drift"))


@pytest.fixture(scope="module")
def copy_last_run(recorded_source, tmp_path_factory):
  """The evaluation on recorded truth with the one method that needs no weights (copy_last):
  the cases, truth, revisits, metrics, baselines and reports, in seconds."""
  from tests.test_data import small_data_config
  source, episodes = recorded_source
  cfg = _recorded_config(small_data_config())
  cfg.evaluate.methods = ("copy_last",)
  cfg.evaluate.videos = False  # the figures need a VAE: the slow test below draws them
  workdir = _recorded_workdir(cfg, tmp_path_factory.mktemp("copy_last"), source)
  return cfg, workdir, episodes, ev.evaluate(cfg, workdir, progress=False)


def _held_truths(cfg, workdir, names):
  """{name: (the recorded truth, the episode read back from the shards)}."""
  from data_pipeline import shards
  kind, cases_ = ev.cases_of(cfg, workdir)
  assert kind == "recorded" and [c.name for c in cases_] == names
  return {c.name: (ev.recorded_truth(cfg, workdir, c),
                   shards.load_episode(os.path.join(workdir, "data"), c.name)) for c in cases_}


def _read_results(result):
  with open(os.path.join(result["results"], "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(result["results"], "details.json")) as f:
    details = json.load(f)
  with open(os.path.join(result["results"], "metrics.md")) as f:
    md = f.read()
  return metrics, details, md


def _assert_finite(metrics):
  for row, values in metrics.items():
    for k, v in values.items():
      if row != "_meta" and v is not None:
        assert np.isfinite(v), (row, k, v)


def test_recorded_truth_its_revisits_baselines_and_report(copy_last_run):
  from relic_jax.evaluation import revisits as rv
  cfg, workdir, episodes, result = copy_last_run
  e = cfg.evaluate
  metrics, details, md = _read_results(result)
  assert metrics["_meta"]["truth"] == "recorded" and details["truth"] == "recorded"
  assert set(metrics) == {"copy_last", "truth", "static", "flat_colour", "_meta"}
  _assert_finite(metrics)
  # the cases are the held-out episodes (the last two), cut to whole blocks from frame 0
  held = [ep["name"] for ep in episodes[2:]]
  assert list(details["cases"]) == held and list(details["episodes"]) == held
  gap = 4 * (cfg.memory.window + cfg.model.block_frames)
  h = cfg.data.latent_height * cfg.data.spatial_stride
  n = RECORDED_FRAMES
  for name, (truth, stored) in _held_truths(cfg, workdir, held).items():
    entry = details["cases"][name]
    assert entry["frames"] == n and entry["recorded_frames"] == 110
    # the truth: the ingested frames at the model's size, the poses as recorded, the actions
    # of those poses at the generation scale, the caption
    np.testing.assert_array_equal(truth["frames"], ev._to_model_size(stored.frames[:n], h, h))
    assert truth["frames"].shape == (n, h, h, 3)
    np.testing.assert_array_equal(truth["poses"], stored.poses[:n])
    np.testing.assert_array_equal(truth["actions"], poses_lib.actions_from_poses(
        stored.poses[:n], cfg.generate.action_scale)[0])
    assert truth["caption"] == procedural.CAPTION
    assert entry["translates"] == scripts.translates(truth["actions"])
    # its revisits by the evaluation's rule on the recorded poses
    rev = find_revisits(stored.poses[:n], min_gap_frames=gap, max_distance=e.revisit_distance,
                        max_angle_deg=e.revisit_angle_deg)
    late = rv.late_revisits(stored.poses[:n], rev, e.revisit_distance, e.revisit_angle_deg)
    assert entry["revisit_frames"] == int((rev >= 0).sum())
    assert entry["late_revisit_frames"] == int((late >= 0).sum())
    with np.load(os.path.join(workdir, "evaluate", "copy_last", f"{name}.npz")) as z:
      np.testing.assert_array_equal(z["video"], np.repeat(truth["frames"][:1], n, 0))
    m = entry["methods"]["copy_last"]
    assert np.isfinite(m["psnr"]) and np.isfinite(m["rpe_rot"])
    # the pose estimator on the true frames beats a camera that never moves
    assert entry["truth"]["rpe_rot"] < entry["static"]["rpe_rot"]
  # the tour revisits; the drift does not: no memory metrics there, and the notes say so
  tour, drift = (details["cases"][name] for name in held)
  assert tour["late_revisit_frames"] > 0 and drift["revisit_frames"] == 0
  assert "late_revisit_psnr" in tour["methods"]["copy_last"]
  assert not any(k.startswith(("revisit", "late", "consistency"))
                 for k in drift["methods"]["copy_last"])
  # so the averages of the memory metrics are the tour's alone
  assert metrics["copy_last"]["revisit_psnr"] == pytest.approx(
      tour["methods"]["copy_last"]["revisit_psnr"])
  assert metrics["copy_last"]["psnr"] == pytest.approx(np.mean(
      [details["cases"][name]["methods"]["copy_last"]["psnr"] for name in held]))
  assert "## All episodes (mean over cases)" in md
  assert f"## episode {held[0]}\n" in md and f"## episode {held[1]}\n" in md
  assert ("Episodes without any revisit have no memory metrics (revisit_*, late_*, "
          f"consistency_*: '-') and are left out of their averages: {held[1]}.") in md
  # 5.5 s cases: no per-second stability curves (20 s and longer), so no stability plot
  assert [os.path.basename(p) for p in result["plots"]] == ["metrics.png"]


def test_recorded_evaluation_resumes_from_its_cache(copy_last_run, monkeypatch):
  cfg, workdir, _, result = copy_last_run

  def never(*args, **kwargs):
    raise AssertionError("generated again instead of resuming from the cache")
  monkeypatch.setattr(ev, "generate_case", never)
  assert ev.evaluate(cfg, workdir, progress=False)["metrics"] == result["metrics"]
  # a cached video of another truth (an episode of the same name in another dataset, or
  # another length) is not reused
  path = os.path.join(workdir, "evaluate", "copy_last", "room002.npz")
  with np.load(path) as z:
    video, truth_id = z["video"], str(z["truth_id"])
  assert truth_id.endswith(f"/room002/{RECORDED_FRAMES}")
  assert ev._cached_video(path, "none", truth_id, video) is not None
  assert ev._cached_video(path, "none", f"other/room002/{RECORDED_FRAMES}", video) is None
  assert ev._cached_video(path, "none", "", video) is None  # a Doom case of that name
  assert ev._cached_video(path, "none", truth_id, video[:13]) is None


def test_auto_truth_is_recorded_for_an_ingested_dataset_and_doom_otherwise(copy_last_run,
                                                                            tmp_path):
  from data_pipeline import shards
  from relic_jax.evaluation import recorded
  cfg, workdir, _, _ = copy_last_run
  cfg = cfg.copy_and_resolve_references()
  cfg.evaluate.truth = "auto"
  assert recorded.truth_kind(cfg, workdir) == "recorded"  # source "ingest"
  doom_dir = tmp_path / "doom"
  os.makedirs(doom_dir / "data")
  shards.write_manifest(str(doom_dir / "data"), {"source": "vizdoom"}, "hash", [])
  assert recorded.truth_kind(cfg, str(doom_dir)) == "doom"  # a ViZDoom dataset
  assert recorded.truth_kind(cfg, str(tmp_path / "empty")) == "doom"  # none: Doom needs none
  for explicit in ("doom", "recorded"):
    cfg.evaluate.truth = explicit
    assert recorded.truth_kind(cfg, workdir) == explicit
  cfg.evaluate.truth = "auto"
  kind, cases_ = ev.cases_of(cfg, str(doom_dir))
  assert kind == "doom" and cases_ == ev.cases(cfg) and all(isinstance(c, ev.Case)
                                                             for c in cases_)
  assert recorded.TRUTHS == ("auto", "doom", "recorded")


@pytest.fixture(scope="module")
def recorded_run(recorded_source, trained_run, tmp_path_factory):  # noqa: F811
  """The tiny run's weights (trained_run, of tests/test_generate.py) evaluated on the
  recorded truth with every method, videos and figures."""
  base_cfg, base_dir = trained_run
  source, episodes = recorded_source
  cfg = _recorded_config(base_cfg)
  workdir = _recorded_workdir(cfg, tmp_path_factory.mktemp("recorded"), source)
  for place in ("vae", "vae_tiny", "teacher"):  # what the evaluation loads
    shutil.copytree(os.path.join(base_dir, place), os.path.join(workdir, place))
  return cfg, workdir, episodes, ev.evaluate(cfg, workdir, progress=False)


@pytest.mark.slow  # ~60-90 s on 2 shared CPU cores: trained_run, then 4 generators compiled
def test_recorded_evaluation_of_every_method_resumes(recorded_run, monkeypatch):
  cfg, workdir, episodes, result = recorded_run
  metrics, details, md = _read_results(result)
  assert set(metrics) == set(ev.METHODS) | {"truth", "static", "flat_colour", "_meta"}
  _assert_finite(metrics)
  assert metrics["_meta"]["weights_from"] == "teacher" and "WARNING" in md
  held = [ep["name"] for ep in episodes[2:]]
  truths = _held_truths(cfg, workdir, held)
  for name in held:
    entry = details["cases"][name]
    for method in ev.METHODS:
      m = entry["methods"][method]
      assert np.isfinite(m["psnr"]) and np.isfinite(m["rpe_rot"])
      assert ("revisit_psnr" in m) == (entry["revisit_frames"] > 0)
      with np.load(os.path.join(workdir, "evaluate", method, f"{name}.npz")) as z:
        assert z["video"].shape == truths[name][0]["frames"].shape
        assert str(z["weights_from"]) == ("none" if method == "copy_last" else "teacher")
      if method in ev.MODES:
        assert m["fps"] > 0 and m["block_latency_ms"] > 0
  assert details["cases"][held[1]]["revisit_frames"] == 0
  names = {os.path.basename(v) for v in result["videos"]}
  assert names == {f"{held[0]}.mp4", f"{held[1]}.mp4", "look_away.gif", "frames.png"}
  assert all(os.path.getsize(v) > 0 for v in result["videos"])
  # a second run generates nothing: every video comes from the cache

  def never(*args, **kwargs):
    raise AssertionError("generated again instead of resuming from the cache")
  monkeypatch.setattr(ev, "_Generators", never)
  monkeypatch.setattr(ev, "generate_case", never)
  cfg = cfg.copy_and_resolve_references()
  cfg.evaluate.videos = False
  assert ev.evaluate(cfg, workdir, progress=False)["metrics"] == result["metrics"]


def test_recorded_truth_refuses_another_frame_rate_and_too_short_episodes(tmp_path):
  from relic_jax.evaluation import recorded
  cfg = get_base_config()
  procedural.write_source(str(tmp_path / "src"), episodes=2, frames=20, size=16, fps=10.0)
  data = str(tmp_path / "data")
  _ingest(cfg, str(tmp_path / "src"), data)
  with pytest.raises(DataError, match=r"held-out episode 'room001' .* recorded at 10 fps but the "
                                      r"model generates at config.generate.fps=17.5.*Fix: record "
                                      r"or resample the episodes at 17.5 fps"):
    recorded.cases(cfg, data)
  cfg.generate.fps = 10.0  # now the rates agree, but 20 frames hold one block of 12 at most
  assert [c.frames for c in recorded.cases(cfg, data)] == [13]
  cfg.evaluate.max_seconds = 1.0  # 10 frames after frame 0: not one block
  with pytest.raises(DataError, match=r"has 20 frames and config.evaluate.max_seconds=1 s "
                                      r"allows 11.*Fix: hold out longer episodes"):
    recorded.cases(cfg, data)
  cfg.data.heldout_episodes = 0
  with pytest.raises(DataError, match="no held-out episode to evaluate on. Fix"):
    recorded.cases(cfg, data)


def test_evaluate_truth_and_max_seconds_are_validated():
  from relic_jax.config import ConfigError, validate
  from relic_jax.evaluation import recorded
  from tests.helpers import tiny_config
  cfg = tiny_config()
  cfg.evaluate.truth = "rendered"
  with pytest.raises(ConfigError) as e:
    validate(cfg)
  assert str(e.value) == ("config.evaluate.truth='rendered': unknown value. Fix: use one of "
                          f"{', '.join(map(repr, recorded.TRUTHS))}.")
  cfg = tiny_config()
  cfg.evaluate.max_seconds = 0
  with pytest.raises(ConfigError, match=r"config.evaluate.max_seconds=0.0: must be a .*positive "
                                        r"number. Fix"):
    validate(cfg)


def test_procedural_source_is_deterministic_revisits_and_round_trips_through_ingest(tmp_path):
  from data_pipeline import shards
  a = procedural.write_source(str(tmp_path / "a"), episodes=2, frames=97, size=32, seed=3)
  b = procedural.write_source(str(tmp_path / "b"), episodes=2, frames=97, size=32, seed=3)
  c = procedural.make_episode(0, 97, 32, seed=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["frames"], y["frames"])
    np.testing.assert_array_equal(x["poses"], y["poses"])
  assert not np.array_equal(a[0]["poses"], c["poses"])
  # the poses, written in OpenGL axes with a y-up world, come back as ours from the shards
  cfg = get_base_config()
  data = str(tmp_path / "data")
  _ingest(cfg, str(tmp_path / "a"), data)
  for ep in a:
    stored = shards.load_episode(data, ep["name"])
    assert stored.fps == procedural.FPS and stored.caption == procedural.CAPTION
    np.testing.assert_allclose(stored.poses, ep["poses"], atol=1e-5)
    # the camera goes away and comes back: revisits beyond the tiny run's window (36 frames)
    rev = find_revisits(ep["poses"], min_gap_frames=36, max_distance=0.3, max_angle_deg=10.0)
    assert (rev >= 0).sum() >= 5, ep["name"]
  # a view depends on the pose only: the same pose renders the same frame, another pose not
  pose = a[0]["poses"][0]
  np.testing.assert_array_equal(procedural.render(pose, 32), a[0]["frames"][0])
  assert (procedural.render(pose, 32) != procedural.render(a[0]["poses"][30], 32)).any()
  t0 = time.perf_counter()
  procedural.render(pose, 64)
  assert time.perf_counter() - t0 < 0.1  # ~5 ms


def test_stability_plot_only_with_curves(tmp_path):
  from relic_jax.evaluation import report
  case = lambda group, frames, curve: {"group": group, "frames": frames, "methods": {
      "relic": {"psnr_per_second": curve} if curve else {}}}
  summary = {"relic": {"rpe_rot": 1.0}}
  long_ = {"cases": {"a": case("ep_a", 400, [20.0, 19.0]), "b": case("ep_b", 97, None)}}
  got = report.plots(str(tmp_path / "long"), long_, summary)
  assert [os.path.basename(p) for p in got] == ["stability_psnr.png", "metrics.png"]
  short = {"cases": {"b": case("ep_b", 97, None)}}
  got = report.plots(str(tmp_path / "short"), short, summary)
  assert [os.path.basename(p) for p in got] == ["metrics.png"]
