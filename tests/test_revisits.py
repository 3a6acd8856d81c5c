"""Which frames test the memory: late revisits (views first seen after frame 0), consistency
only where the video left the view, and the default scripts' late revisits on the held-out maps
as ViZDoom renders them."""

import numpy as np
import pytest

from data_pipeline import poses as poses_lib
from data_pipeline.preview import find_revisits
from relic_jax.config import get_base_config
from relic_jax.evaluation import evaluate as ev
from relic_jax.evaluation import revisits as rv
from relic_jax.inference import scripts

DIST, ANGLE = 0.3, 10.0


def pan_poses(yaws_deg):
  return np.stack([poses_lib.pose_from_yaw_pitch(np.zeros(3), np.radians(y), 0.0)
                   for y in yaws_deg])


def test_late_revisits_are_revisits_away_from_frame_0s_view():
  # look 60 degrees left (30 frames), back to the start (30), hold (10), left again (30)
  yaws = np.concatenate([np.linspace(0, 60, 31), np.linspace(60, 0, 31)[1:], np.zeros(10),
                         np.linspace(0, 60, 31)[1:]])
  poses = pan_poses(yaws)
  rev = find_revisits(poses, min_gap_frames=20, max_distance=DIST, max_angle_deg=ANGLE)
  late = rv.late_revisits(poses, rev, DIST, ANGLE)
  near_0 = rv.close_to(poses, poses[0], DIST, ANGLE)
  np.testing.assert_array_equal(near_0, yaws <= ANGLE + 1e-6)
  hits, late_hits = np.flatnonzero(rev >= 0), np.flatnonzero(late >= 0)
  assert set(late_hits) < set(hits)  # some revisits are returns to frame 0's view ...
  assert (yaws[rev[hits]] <= ANGLE).any()
  assert (yaws[late[late_hits]] > ANGLE).all() and (yaws[late_hits] > ANGLE).all()  # not these
  np.testing.assert_array_equal(late[late_hits], rev[late_hits])
  # the way back revisits the way out 20+ frames later, the second look both of them
  assert (late_hits < 61).any() and (late_hits > 70).any()


def test_consistency_counts_only_where_the_generated_video_left_the_view():
  rng = np.random.default_rng(0)
  # the truth: 40 frames, a distinct image every 10 frames; frame 30 revisits frame 5
  views = rng.integers(0, 256, (4, 16, 16, 3), np.uint8)
  truth = np.repeat(views, 10, 0)
  truth[30:] = views[0]
  revisits = np.full(40, -1)
  revisits[30] = 5
  assert rv.consistency_mask(truth, truth, revisits)[30]  # the truth left and came back
  still = np.repeat(truth[:1], 40, 0)
  assert not rv.consistency_mask(still, truth, revisits).any()  # never left
  # a video that barely moves (a little noise around frame 0) has not left either
  shaky = np.clip(still.astype(int) + rng.integers(-2, 3, still.shape), 0, 255).astype(np.uint8)
  assert not rv.consistency_mask(shaky, truth, revisits).any()
  # one that moves but forgets (the revisit differs from the first visit) still counts
  forgets = truth.copy()
  forgets[30:] = views[3]
  assert rv.consistency_mask(forgets, truth, revisits)[30]
  m = ev.revisit_metrics(forgets, truth, np.zeros(40), revisits)
  assert m["consistency_frames"] == 1 and m["consistency_psnr"] < 20.0


def test_translates():
  assert scripts.translates(scripts.load("room_visit", 17.5))
  assert not scripts.translates(scripts.load("look_around", 17.5))


def test_every_default_script_has_late_revisits_on_the_heldout_maps(tmp_path, monkeypatch):
  """The evaluation's own truth (render_truth: ViZDoom's poses on the held-out maps, from the
  evaluation's seeded start points) has late revisits beyond the default window in every
  default script, and the scripts stay short enough for the demo."""
  monkeypatch.chdir(tmp_path)  # ViZDoom writes _vizdoom.ini in the cwd
  cfg = get_base_config()
  e = cfg.evaluate
  gap = 4 * (cfg.memory.window + cfg.model.block_frames)
  seconds = sum(len(scripts.load(s, cfg.generate.fps)) for s in e.scripts) / cfg.generate.fps
  assert seconds <= 90.0  # 84 s per map: ~4/3 of the old 111 s for 3 of the 4 generators
  cases = ev.cases(cfg)
  assert len(cases) == len(e.scripts) * len(cfg.data.gen.heldout_maps)
  for case in cases:
    truth = ev.render_truth(cfg, str(tmp_path), case)
    rev = find_revisits(truth["poses"], min_gap_frames=gap, max_distance=e.revisit_distance,
                        max_angle_deg=e.revisit_angle_deg)
    late = rv.late_revisits(truth["poses"], rev, e.revisit_distance, e.revisit_angle_deg)
    hits = np.flatnonzero(late >= 0)
    assert len(hits) >= 24, (case.name, len(hits))  # at least two blocks' worth of frames
    assert (hits - late[hits] >= gap).all()
    assert not rv.close_to(truth["poses"][late[hits]], truth["poses"][0], e.revisit_distance,
                           e.revisit_angle_deg).any()
    if scripts.translates(truth["script_actions"]):  # the camera really walked
      path = np.linalg.norm(np.diff(truth["poses"][:, :3, 3], axis=0), axis=-1).sum()
      assert path > 3.0, (case.name, path)


@pytest.mark.parametrize("name", ["look_around", "room_visit", "tour_20s", "tour_40s"])
def test_default_scripts_are_built_in(name):
  assert name in get_base_config().evaluate.scripts and name in scripts.BUILTIN
