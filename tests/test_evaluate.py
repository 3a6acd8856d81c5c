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
                            rev)
  assert perfect["revisit_psnr"] == 100.0 and perfect["revisit_ssim"] == pytest.approx(1.0)
  assert perfect["psnr"] == 100.0
  assert perfect["block_latency_ms"] == pytest.approx(100.0)  # median after the first block
  assert perfect["fps"] == pytest.approx(12 / 0.1)
  # the still estimator gives a static camera's RPE: the true motion itself
  static = trajectory.rpe(np.repeat(ep.poses[:1], len(ep.poses[::4]), 0), ep.poses[::4])
  assert perfect["rpe_rot"] == pytest.approx(static["rpe_rot"])
  assert perfect["rpe_rot"] > 5.0  # 90 degrees in 35 frames: ~10 degrees per 4 frames
  frozen = np.repeat(ep.frames[:1], len(ep.frames), 0)
  m = ev.case_metrics(cfg, truth, frozen, np.zeros(0), _StillEstimator(), rev)
  assert m["psnr"] < perfect["psnr"] and "fps" not in m
  # revisits are back near frame 0's view, so a frozen video matches them best there; its
  # frames are all the same, so it is perfectly "consistent"
  assert m["revisit_psnr"] > m["psnr"] + 3.0
  assert m["consistency_psnr"] == 100.0


def test_metric_table_drives_the_summary_the_markdown_and_the_sweep():
  from relic_jax import sweep
  from relic_jax.evaluation import report
  assert report.SUMMARY_KEYS == ("revisit_psnr", "revisit_ssim", "consistency_psnr",
                                 "rpe_trans", "rpe_rot", "psnr", "psnr_last_10s", "fps",
                                 "block_latency_ms")
  assert [m.key for m in sweep.METRICS] == ["revisit_psnr", "revisit_ssim", "rpe_trans",
                                            "rpe_rot", "fps"]
  assert all(m in report.METRICS for m in sweep.METRICS)
  assert ev.METHODS == ("relic", "window", "full", "copy_last") and "copy_last" not in ev.MODES
  summary = {"relic": {"revisit_psnr": 21.123, "revisit_ssim": 0.61234, "rpe_trans": 0.1234,
                       "fps": 31.25, "block_latency_ms": 384.0},
             "truth": {"rpe_trans": 0.05, "rpe_rot": 1.0}}
  assert report.markdown_table(summary) == (
      "| method | revisit_psnr | revisit_ssim | consistency_psnr | rpe_trans | rpe_rot | psnr | "
      "psnr_last_10s | fps |\n"
      "|---|---|---|---|---|---|---|---|---|\n"
      "| relic | 21.12 | 0.612 | - | 0.123 | - | - | - | 31.25 |\n"
      "| truth | - | - | - | 0.050 | 1.00 | - | - | - |\n")
