"""Episode previews: revisit detection, the MP4 and top-down PNG writers, and a real episode."""

import glob
import os

import av
import numpy as np
import pytest
from PIL import Image

from data_pipeline import generate, preview
from data_pipeline import poses as P
from data_pipeline.episode import DataError
from experiments.tiny import get_config


def out_and_back(step=0.1, walk=40, turn_frames=18, hold=10):
  """Walk `walk` frames along +x, turn 180 degrees left, walk back to the origin, turn 180
  degrees back to +x, and hold. Returns the poses and the index of the first frame of the
  second turn."""
  poses, x, yaw = [], 0.0, 0.0
  for _ in range(walk):
    poses.append(P.pose_from_yaw_pitch([x, 0.0, 1.0], yaw, 0.0))
    x += step
  for i in range(turn_frames):
    yaw = np.pi * (i + 1) / turn_frames
    poses.append(P.pose_from_yaw_pitch([x, 0.0, 1.0], yaw, 0.0))
  for _ in range(walk):
    x -= step
    poses.append(P.pose_from_yaw_pitch([x, 0.0, 1.0], yaw, 0.0))
  second_turn = len(poses)
  for i in range(turn_frames):
    yaw = np.pi * (1 + (i + 1) / turn_frames)
    poses.append(P.pose_from_yaw_pitch([x, 0.0, 1.0], yaw, 0.0))
  poses += [poses[-1]] * hold
  return np.stack(poses), second_turn


def test_out_and_back_revisits_the_start():
  poses, second_turn = out_and_back()
  rev = preview.find_revisits(poses)
  assert rev.shape == (len(poses),) and rev.dtype.kind == "i"
  # nothing is seen again before the camera has turned back to +x at the start
  assert (rev[:second_turn] == -1).all()
  hits = np.flatnonzero(rev >= 0)
  assert len(hits) >= 10
  # the revisited frames are the first ones (within 0.75 m of the start, facing +x)
  assert (rev[hits] < 8).all()
  np.testing.assert_allclose(poses[hits, :3, 3], poses[rev[hits], :3, 3], atol=0.75)
  # the final frames stand exactly at frame 0's pose: the nearest in pose is frame 0
  assert rev[-1] == 0
  # every frame that faces within 30 degrees of +x at the origin is found
  forward = poses[:, :3, 2]
  at_start = (np.linalg.norm(poses[:, :3, 3] - poses[0, :3, 3], axis=-1) < 1e-9)
  facing = forward[:, 0] >= np.cos(np.radians(30)) - 1e-9
  expected = np.flatnonzero(at_start & facing & (np.arange(len(poses)) >= second_turn))
  assert set(expected) <= set(hits)


def test_straight_walk_and_standing_still_have_no_revisits():
  walk = np.stack([P.pose_from_yaw_pitch([0.1 * t, 0.0, 1.0], 0.3, 0.0) for t in range(200)])
  assert (preview.find_revisits(walk) == -1).all()
  still = np.stack([P.pose_from_yaw_pitch([1.0, 2.0, 1.0], 0.3, 0.1)] * 100)
  assert (preview.find_revisits(still) == -1).all()  # never left, so nothing is revisited
  loose = preview.find_revisits(still, require_leave=False)
  assert (loose[:30] == -1).all() and (loose[30:] == 0).all()  # the earliest on a tie
  # a 360-degree pan in place revisits its first frames once it has come round
  pan = np.stack([P.pose_from_yaw_pitch([0.0, 0.0, 1.0], np.radians(8 * t), 0.0)
                  for t in range(60)])
  rev = preview.find_revisits(pan)
  assert (rev[:42] == -1).all() and rev[42] == 0 and rev[45] == 0  # 42: 24 deg short of round
  with pytest.raises(DataError, match="Fix:"):
    preview.find_revisits(walk[:, :2])


def test_write_video_reads_back(tmp_path):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (7, 20, 30, 3), dtype=np.uint8)
  path = str(tmp_path / "v.mp4")
  captions = [f"frame {t}\ndolly_in, pan_left" + ("\nREVISIT of frame 0" if t > 4 else "")
              for t in range(7)]
  preview.write_video(path, frames, 17.5, captions, highlight=[t > 4 for t in range(7)])
  with av.open(path) as c:
    decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  assert len(decoded) == 7
  h, w = decoded[0].shape[:2]
  assert w == 30 * 13 and h > 20 * 13 and h % 2 == 0  # x13: short side 260 >= 256, + captions
  # plain, odd-sized frames at scale 1 are padded to even sizes; nearest-neighbour content
  plain = str(tmp_path / "p.mp4")
  flat = np.zeros((5, 21, 31, 3), np.uint8)
  flat[:, :, :, 1] = 200
  preview.write_video(plain, flat, 10, scale=1)
  with av.open(plain) as c:
    decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  assert len(decoded) == 5 and decoded[0].shape == (22, 32, 3)
  assert abs(int(decoded[2][10, 15, 1]) - 200) < 12
  assert not glob.glob(str(tmp_path / "*.tmp-*"))
  with pytest.raises(DataError, match="one per frame"):
    preview.write_video(path, frames, 17.5, captions[:3])


def test_without_pyav_a_video_write_names_the_fix_and_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "av", None)  # `import av` raises ImportError
  path = tmp_path / "v.mp4"
  with pytest.raises(preview.VideoUnavailable, match="pip install av"):
    preview.write_video(str(path), np.zeros((3, 8, 8, 3), np.uint8), 10.0)
  assert not os.listdir(tmp_path)


def test_plot_trajectory_draws_something(tmp_path):
  poses, _ = out_and_back()
  rev = preview.find_revisits(poses)
  walls = np.array([[-2, -2, 6, -2], [6, -2, 6, 2], [6, 2, -2, 2], [-2, 2, -2, -2]], float)
  path = str(tmp_path / "top.png")
  preview.plot_trajectory(path, poses, rev, walls, title="out and back")
  img = Image.open(path)
  assert img.format == "PNG" and img.width >= 500 and img.height >= 500
  colours = np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)
  assert len(colours) > 50
  assert not glob.glob(str(tmp_path / "*.tmp-*"))
  with pytest.raises(DataError, match="do not match"):
    preview.plot_trajectory(path, poses, rev[:-1])


def test_preview_of_a_vizdoom_episode(tmp_path):
  cfg = get_config()
  g = cfg.data.gen
  g.num_episodes, g.frames_per_episode, g.workers = 1, 120, 1
  data = str(tmp_path / "data")
  generate.generate(cfg, data, progress=False)
  out = str(tmp_path / "preview")
  result = preview.preview(data, out)
  assert os.path.getsize(result["video"]) > 0 and os.path.getsize(result["topdown"]) > 0
  assert os.path.basename(result["video"]) == f"{result['episode']}.mp4"
  assert isinstance(result["revisits"], int) and 0 <= result["revisits"] <= 120
  assert result["frames"] == 120 and result["caption"]
  with av.open(result["video"]) as c:
    assert sum(1 for _ in c.decode(video=0)) == 120
  short = preview.preview(data, out, result["episode"], max_frames=40, with_map=False)
  assert short["frames"] == 40
  with pytest.raises(DataError, match=result["episode"]):
    preview.preview(data, out, "no-such-episode")
