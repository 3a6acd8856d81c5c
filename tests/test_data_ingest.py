"""Ingestion of externally recorded episodes (data_pipeline/ingest.py): conventions, video and
image input, clear errors on bad input, nothing written or lost on failure, resumability."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipeline import ingest as ingest_lib
from data_pipeline import poses as poses_lib
from data_pipeline import shards
from data_pipeline.doom import resize_frame
from data_pipeline.episode import DataError

H, W = 32, 32
POSE_ATOL = 1e-6       # metres / rotation entries: conversions are exact up to float64 rounding
INTEGRATE_ATOL = 1e-5  # actions are stored as float32, so integrating them drifts slightly


def _trajectory(n, seed):
  """A smooth random camera path in our convention (z up, metres)."""
  rng = np.random.default_rng(seed)
  t = np.linspace(0, 1, n)
  k = rng.uniform(0.5, 2.0, (6,))
  ph = rng.uniform(0, 2 * np.pi, (6,))
  pos = np.stack([3 * np.sin(k[0] * t + ph[0]), 2 * t + np.cos(k[1] * t + ph[1]),
                  1.5 + 0.3 * np.sin(k[2] * t + ph[2])], -1)
  yaw = 1.5 * np.sin(k[3] * t + ph[3])
  pitch = 0.4 * np.sin(k[4] * t + ph[4])
  roll = 0.2 * np.sin(k[5] * t + ph[5])
  return np.stack([poses_lib.pose_from_yaw_pitch(p, y, q, r)
                   for p, y, q, r in zip(pos, yaw, pitch, roll)])


def _random_frames(n, h=H, w=W, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _smooth_frames(n, h=H, w=W):
  """Gradients that move over time (video codecs keep them well)."""
  y, x = np.mgrid[0:h, 0:w]
  out = np.zeros((n, h, w, 3), np.uint8)
  for i in range(n):
    out[i, ..., 0] = (x * 255 // max(w - 1, 1) + 5 * i) % 256
    out[i, ..., 1] = y * 255 // max(h - 1, 1)
    out[i, ..., 2] = 40 + 4 * i
  return out


def _snapshot(directory):
  out = {}
  for root, _, names in os.walk(directory):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, directory)] = f.read()
  return out


def _good_source(root, n_episodes=2, n_frames=20, seed=0, **kw):
  originals = {}
  for e in range(n_episodes):
    poses = _trajectory(n_frames, seed + e)
    frames = _random_frames(n_frames, seed=seed + e)
    name = f"ep{e:02d}"
    ingest_lib.export_episode(os.path.join(root, name), frames, poses, fps=16,
                              caption=f"scene {e}", **kw)
    originals[name] = (frames, poses)
  return originals


def _check_integration(ep):
  rebuilt = poses_lib.integrate_actions(ep.poses[0], ep.actions, ep.action_scale)
  np.testing.assert_allclose(rebuilt, ep.poses, atol=INTEGRATE_ATOL)


@pytest.mark.parametrize("convention,world_up,as_text", [
    ("opencv", "+z", False), ("opencv", "+y", True), ("opengl", "+y", False),
    ("opengl", "-y", True), ("opengl", "+z", False), ("unreal", "+z", False),
    ("unreal", "+z", True), ("ours", "+z", False)])
def test_conventions_round_trip(tmp_path, convention, world_up, as_text):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  originals = _good_source(src, n_episodes=2, n_frames=24, convention=convention,
                           world_up=world_up, poses_as_text=as_text)
  manifest = ingest_lib.ingest(src, out, H, W, codec="png", episodes_per_shard=1,
                               progress=False)
  assert manifest["num_episodes"] == 2 and manifest["num_frames"] == 48
  assert manifest["config"]["source"] == "ingest"
  assert manifest["config"]["source_dir"] == "src"
  assert manifest["config"]["episodes"] == ["ep00", "ep01"]
  for name, (frames, poses) in originals.items():
    ep = shards.load_episode(out, name)
    assert ep.frames.shape == (24, H, W, 3)
    np.testing.assert_array_equal(ep.frames, frames)  # png, same size: lossless
    np.testing.assert_allclose(ep.poses, poses, atol=POSE_ATOL)
    assert ep.source == f"ingest:{name}" and ep.seed == -1 and ep.map == ""
    assert ep.fps == 16 and ep.caption == f"scene {name[-1]}"
    _check_integration(ep)


def _write_raw(path, frames, poses, settings):
  os.makedirs(os.path.join(path, "frames"))
  for i, f in enumerate(frames):
    Image.fromarray(f).save(os.path.join(path, "frames", f"{i:04d}.png"))
  np.save(os.path.join(path, "poses.npy"), np.asarray(poses, np.float64))
  with open(os.path.join(path, "episode.json"), "w") as f:
    json.dump(settings, f)


def test_conventions_mean_what_they_say(tmp_path):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  n = 6
  frames = _random_frames(n)
  # Unreal: identity rotation looks along world +x; the camera moves 50 cm forward per frame.
  unreal = np.tile(np.eye(4), (n, 1, 1))
  unreal[:, 0, 3] = 50.0 * np.arange(n)
  unreal[:, 2, 3] = 170.0
  _write_raw(os.path.join(src, "a_unreal"), frames, unreal, {"fps": 10, "convention": "unreal"})
  # Unreal yaw +90 degrees (turning right, towards Unreal's +y): camera x (forward) -> +y.
  yawed = np.tile(np.eye(4), (n, 1, 1))
  yawed[:, :3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
  _write_raw(os.path.join(src, "b_unreal_yaw"), frames, yawed,
             {"fps": 10, "convention": "unreal"})
  # OpenGL: identity rotation looks along world -z; it moves along -z (forward).
  gl = np.tile(np.eye(4), (n, 1, 1))
  gl[:, 2, 3] = -0.3 * np.arange(n)
  _write_raw(os.path.join(src, "c_opengl"), frames, gl, {"fps": 10, "convention": "opengl"})
  ingest_lib.ingest(src, out, H, W, codec="png", progress=False)

  ep = shards.load_episode(out, "a_unreal")
  r = ep.poses[0, :3, :3]
  np.testing.assert_allclose(r[:, 2], [1, 0, 0], atol=1e-12)   # forward = +x
  np.testing.assert_allclose(r[:, 1], [0, 0, -1], atol=1e-12)  # down = -z
  np.testing.assert_allclose(r[:, 0], [0, -1, 0], atol=1e-12)  # right = -y (right-handed)
  np.testing.assert_allclose(ep.poses[:, :3, 3], np.stack(
      [0.5 * np.arange(n), np.zeros(n), np.full(n, 1.7)], -1), atol=1e-12)  # cm -> m
  assert (ep.actions[1:, 0] > 0).all() and (ep.actions[1:, 1:12] == 0).all()  # dolly in only
  ep = shards.load_episode(out, "b_unreal_yaw")
  # Unreal's +y is to the right of +x: in our right-handed z-up world that is -y.
  np.testing.assert_allclose(ep.poses[0, :3, 2], [0, -1, 0], atol=1e-12)
  np.testing.assert_allclose(ep.poses[0, :3, 1], [0, 0, -1], atol=1e-12)
  ep = shards.load_episode(out, "c_opengl")
  np.testing.assert_allclose(ep.poses[0, :3, 2], [0, 0, -1], atol=1e-12)  # forward = -z
  assert (ep.actions[1:, 0] > 0).all() and (ep.actions[1:, 1:12] == 0).all()


def test_video_input(tmp_path):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  n = 30
  frames = _smooth_frames(n, 32, 48)
  poses = _trajectory(n, 3)
  ingest_lib.export_episode(os.path.join(src, "vid"), frames, poses, fps=24, caption="v",
                            as_video=True)
  assert os.path.isfile(os.path.join(src, "vid", "frames.mp4"))
  assert ingest_lib.check_episode(os.path.join(src, "vid"), {}) == n
  manifest = ingest_lib.ingest(src, out, 32, 48, codec="png", progress=False)
  assert manifest["num_frames"] == n
  ep = shards.load_episode(out, "vid")
  assert ep.frames.shape == (n, 32, 48, 3)
  err = np.abs(ep.frames.astype(np.int16) - frames.astype(np.int16))
  assert err.mean() < 4 and np.median(err) <= 3, (err.mean(), err.max())
  np.testing.assert_allclose(ep.poses, poses, atol=POSE_ATOL)
  _check_integration(ep)


def test_image_sequence_input_is_cropped_and_resized(tmp_path):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  n = 12
  frames = _random_frames(n, 40, 64, seed=7)  # wider than 32x32: centre-cropped, then resized
  ingest_lib.export_episode(os.path.join(src, "img"), frames, _trajectory(n, 1), fps=8,
                            caption="")
  ingest_lib.ingest(src, out, H, W, codec="png", progress=False)
  ep = shards.load_episode(out, "img")
  expected = np.stack([resize_frame(f, H, W) for f in frames])
  np.testing.assert_array_equal(ep.frames, expected)
  assert ep.caption == ""  # an explicitly empty caption is kept


def test_settings_defaults_and_keys(tmp_path):
  src = str(tmp_path / "src")
  n = 5
  path = os.path.join(src, "ep")
  _write_raw(path, _random_frames(n), _trajectory(n, 0), {})
  with pytest.raises(DataError, match="no fps given"):
    ingest_lib.ingest(src, str(tmp_path / "o1"), H, W, progress=False)
  with open(os.path.join(src, "dataset.json"), "w") as f:
    json.dump({"fps": 12}, f)
  ep = ingest_lib.read_episode(path, ingest_lib.read_defaults(src), H, W)
  assert ep.fps == 12 and ep.caption == ingest_lib.DEFAULT_CAPTION and ep.name == "ep"
  s = ingest_lib.episode_settings(path, {"fps": 1, "convention": "unreal", "world_up": "+y"})
  assert s["units_per_metre"] == 100 and s["world_up"] == "+z"
  with open(os.path.join(src, "dataset.json"), "w") as f:
    json.dump({"fps": 12, "fsp": 3}, f)
  with pytest.raises(DataError) as e:
    ingest_lib.ingest(src, str(tmp_path / "o2"), H, W, progress=False)
  assert "dataset.json" in str(e.value) and "unknown key 'fsp'" in str(e.value)
  assert "units_per_metre" in str(e.value)  # lists the allowed keys


def _nan_pose(path):
  p = np.load(os.path.join(path, "poses.npy"))
  p[5, 0, 3] = np.nan
  np.save(os.path.join(path, "poses.npy"), p)


def _scaled_rotation(path):
  p = np.load(os.path.join(path, "poses.npy"))
  p[7, :3, :3] *= 1.1
  np.save(os.path.join(path, "poses.npy"), p)


def _drop_pose(path):
  p = np.load(os.path.join(path, "poses.npy"))
  np.save(os.path.join(path, "poses.npy"), p[:-1])


def _transposed(path):  # Unreal's FMatrix layout: translation in the last row
  p = np.load(os.path.join(path, "poses.npy"))
  np.save(os.path.join(path, "poses.npy"), np.swapaxes(p, 1, 2))


def _negative_actions(path):
  a, _ = poses_lib.actions_from_poses(np.tile(np.eye(4), (20, 1, 1)))
  a[3, 2] = -0.5
  np.save(os.path.join(path, "actions.npy"), a)


def _bad_actions_shape(path):
  np.save(os.path.join(path, "actions.npy"), np.zeros((20, 12), np.float32))


def _garbage_video(path):
  shutil.rmtree(os.path.join(path, "frames"))
  with open(os.path.join(path, "frames.mp4"), "wb") as f:
    f.write(b"this is not a video" * 100)


def _edit_json(**kw):
  def edit(path):
    with open(os.path.join(path, "episode.json")) as f:
      s = json.load(f)
    s.update(kw)
    with open(os.path.join(path, "episode.json"), "w") as f:
      json.dump(s, f)
  return edit


BAD_CASES = {
    "nan_pose": (_nan_pose, ["poses.npy", "pose[5]", "not finite", "Fix:"]),
    "non_orthonormal": (_scaled_rotation, ["poses.npy", "pose[7]", "orthonormal", "Fix:"]),
    "count_mismatch": (_drop_pose, ["20 frames", "19 poses", "Fix:"]),
    "missing_poses": (lambda p: os.remove(os.path.join(p, "poses.npy")),
                      ["no poses file", "poses.npy", "Fix:"]),
    "missing_frames": (lambda p: shutil.rmtree(os.path.join(p, "frames")),
                       ["no frames", "frames.mp4", "Fix:"]),
    "stray_file_in_frames": (lambda p: open(os.path.join(p, "frames", "x.exr"), "w").close(),
                             ["x.exr", "not a png/jpg/jpeg", "Fix:"]),
    "transposed": (_transposed, ["pose[", "last row", "transposed", "Fix:"]),
    "negative_actions": (_negative_actions, ["actions.npy", "action[3]", "negative", "Fix:"]),
    "actions_shape": (_bad_actions_shape, ["actions.npy", "[20, 12]", "[20, 13]", "Fix:"]),
    "unreadable_video": (_garbage_video, ["frames.mp4", "cannot be opened as a video", "Fix:"]),
    "unknown_convention": (_edit_json(convention="blender"),
                           ["episode.json", "'blender'", "unreal", "Fix:"]),
    "bad_fps": (_edit_json(fps=-3), ["episode.json", "fps=-3", "Fix:"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_fails_before_writing(tmp_path, case):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _good_source(src, n_episodes=2, n_frames=20)
  edit, words = BAD_CASES[case]
  edit(os.path.join(src, "ep01"))  # the second episode: the first would be written otherwise
  with pytest.raises(DataError) as e:
    ingest_lib.ingest(src, out, H, W, episodes_per_shard=1, progress=False)
  msg = str(e.value)
  assert "ep01" in msg, msg
  for w in words:
    assert w in msg, (w, msg)
  assert not os.path.exists(out)  # checked before anything was written
  with pytest.raises(DataError) as e:  # the full read (inside the shard jobs) agrees
    ingest_lib.read_episode(os.path.join(src, "ep01"), {}, H, W)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_empty_or_missing_source(tmp_path):
  os.makedirs(tmp_path / "empty" / ".hidden")
  with pytest.raises(DataError, match="holds no episode directories"):
    ingest_lib.ingest(str(tmp_path / "empty"), str(tmp_path / "out"), H, W, progress=False)
  with pytest.raises(DataError, match="does not exist"):
    ingest_lib.ingest(str(tmp_path / "nope"), str(tmp_path / "out"), H, W, progress=False)
  assert not os.path.exists(tmp_path / "out")


def test_nothing_written_is_lost(tmp_path):
  out = str(tmp_path / "out")
  _good_source(str(tmp_path / "good"), n_episodes=3, n_frames=20)
  ingest_lib.ingest(str(tmp_path / "good"), out, H, W, episodes_per_shard=2, progress=False)
  before = _snapshot(out)
  assert "manifest.json" in before and "shard-00001.arrayrecord" in before
  bad = str(tmp_path / "bad")
  _good_source(bad, n_episodes=3, n_frames=20)
  _nan_pose(os.path.join(bad, "ep02"))
  with pytest.raises(DataError, match=r"pose\[5\] is not finite"):
    ingest_lib.ingest(bad, out, H, W, episodes_per_shard=2, progress=False)
  assert _snapshot(out) == before
  other = str(tmp_path / "other")
  _good_source(other, n_episodes=3, n_frames=20, seed=10)
  with pytest.raises(DataError, match="different config"):
    ingest_lib.ingest(other, out, H, W, episodes_per_shard=2, progress=False)
  assert _snapshot(out) == before


def test_resume_rewrites_only_the_missing_shard(tmp_path):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _good_source(src, n_episodes=5, n_frames=20)
  first = ingest_lib.ingest(src, out, H, W, episodes_per_shard=2, progress=False)
  assert first["num_shards"] == 3 and first["timing"]["shards_written"] == 3
  manifest = shards.read_manifest(out)
  os.remove(os.path.join(out, shards.shard_name(1)))
  os.remove(os.path.join(out, shards.index_name(1)))
  again = ingest_lib.ingest(src, out, H, W, episodes_per_shard=2, progress=False)
  assert again["timing"]["shards_written"] == 1 and again["timing"]["shards_skipped"] == 2
  assert {k: v for k, v in again.items() if k != "timing"} == manifest
  assert shards.read_manifest(out) == manifest
  ep = shards.load_episode(out, "ep02")  # from the rewritten shard
  assert len(ep) == 20
  idle = ingest_lib.ingest(src, out, H, W, episodes_per_shard=2, progress=False)
  assert idle["timing"]["shards_written"] == 0


def test_parallel_workers(tmp_path):
  src = str(tmp_path / "src")
  originals = _good_source(src, n_episodes=2, n_frames=10)
  ingest_lib.ingest(src, str(tmp_path / "out"), H, W, codec="png", episodes_per_shard=1,
                    workers=2, progress=False)
  for name, (frames, poses) in originals.items():
    ep = shards.load_episode(str(tmp_path / "out"), name)
    np.testing.assert_array_equal(ep.frames, frames)
    np.testing.assert_allclose(ep.poses, poses, atol=POSE_ATOL)
