"""The evaluation's pieces against known answers: the scripted truth ViZDoom renders, the
revisit and per-second bookkeeping, and the metrics of one case."""

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

FPS = 17.5
LOOK_AWAY = "0.5 static\n2.0 pan_left\n2.0 pan_right\n0.5 static"


@pytest.fixture(scope="module")
def look_away(tmp_path_factory):
  import os
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
