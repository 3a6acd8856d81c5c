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


# ------------------------------------------------------------------ every bad input, one row each
#
# Each row damages an otherwise valid source of three small episodes (ep00, ep01, ep02; 10
# frames of 16x16 png) and names a text the DataError must contain. Most damage the LAST
# episode: with one episode per shard, the first two would be written if validation did not
# come first. Adding a case is adding a row.

TH, TW = 16, 40  # the target frame: wider than 2:1, so that a 1x1 image cannot be cropped
N = 10
LAST = "ep02"


def _make_source(root, n_episodes=3, n_frames=N, **kw):
  for e in range(n_episodes):
    ingest_lib.export_episode(os.path.join(root, f"ep{e:02d}"),
                              _random_frames(n_frames, 16, 16, seed=e), _trajectory(n_frames, e),
                              fps=16, caption=f"scene {e}", **kw)


def _ep(fn):
  """A damage of the last episode's directory."""
  return lambda root: fn(os.path.join(root, LAST))


def _json(**changes):
  """episode.json of the last episode with `changes` (None deletes a key), written raw."""
  def edit(path):
    with open(os.path.join(path, "episode.json")) as f:
      s = json.load(f)
    for k, v in changes.items():
      if v is None:
        s.pop(k, None)
      else:
        s[k] = v
    with open(os.path.join(path, "episode.json"), "w") as f:
      json.dump(s, f)
  return _ep(edit)


def _write(rel, data):
  """Writes bytes (or text) to a path relative to the last episode."""
  def edit(path):
    full = os.path.join(path, rel)
    if os.path.isdir(full):
      shutil.rmtree(full)
    with open(full, "wb") as f:
      f.write(data if isinstance(data, bytes) else data.encode())
  return _ep(edit)


def _poses(transform):
  """poses.npy of the last episode replaced by transform(poses)."""
  def edit(path):
    p = np.load(os.path.join(path, "poses.npy"))
    np.save(os.path.join(path, "poses.npy"), transform(p), allow_pickle=True)
  return _ep(edit)


def _set(index, value):
  def f(p):
    p[index] = value
    return p
  return f


def _det_minus_one(p):
  p[4, :3, 0] *= -1
  return p


def _actions(array):
  return _ep(lambda path: np.save(os.path.join(path, "actions.npy"), array, allow_pickle=True))


def _valid_actions():
  return poses_lib.actions_from_poses(_trajectory(N, 2))[0]


def _with(array, index, value):
  array = array.copy()
  array[index] = value
  return array


def _npz(name):
  def edit(path):
    poses = np.load(os.path.join(path, "poses.npy"))
    with open(os.path.join(path, name), "wb") as f:
      np.savez(f, poses=poses)
  return _ep(edit)


def _pickle(path):
  import pickle
  with open(os.path.join(path, "poses.npy"), "wb") as f:
    pickle.dump({"poses": np.eye(4).tolist()}, f)


def _truncate(rel, keep=0.5):
  def edit(path):
    full = os.path.join(path, rel)
    with open(full, "rb") as f:
      data = f.read()
    with open(full, "wb") as f:
      f.write(data[:int(len(data) * keep)])
  return _ep(edit)


def _text_poses(lines):
  def edit(path):
    os.remove(os.path.join(path, "poses.npy"))
    with open(os.path.join(path, "poses.txt"), "w") as f:
      f.write(lines)
  return _ep(edit)


def _rows_of(n, width):
  return "".join(" ".join(["1"] * width) + "\n" for _ in range(n))


def _video_episode(truncate):
  """The last episode as a video (frames.mp4), cut to a fraction of its bytes."""
  def edit(path):
    shutil.rmtree(path)
    ingest_lib.export_episode(path, _smooth_frames(N, 16, 16), _trajectory(N, 2), fps=16,
                              caption="v", as_video=True)
    _truncate("frames.mp4", truncate)(os.path.dirname(path))
  return _ep(edit)


def _truncated_mkv(path):
  """A streamable video (mkv opens without its end) cut short: fewer frames decode."""
  shutil.rmtree(os.path.join(path, "frames"))
  ingest_lib._write_video(os.path.join(path, "frames.mkv"), _random_frames(N, 16, 16), 16)
  _truncate("frames.mkv", 0.9)(os.path.dirname(path))


def _tiny_frame(path):
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(os.path.join(path, "frames", "000003.png"))


def _one_frame(path):
  shutil.rmtree(path)
  ingest_lib.export_episode(path, _random_frames(2, 16, 16), _trajectory(2, 0), fps=16,
                            caption="")
  os.remove(os.path.join(path, "frames", "000001.png"))
  np.save(os.path.join(path, "poses.npy"), np.load(os.path.join(path, "poses.npy"))[:1])


def _empty_source(root):
  for n in os.listdir(root):
    shutil.rmtree(os.path.join(root, n))


def _source_is_file(root):
  shutil.rmtree(root)
  open(root, "w").write("not a directory")


INGEST_ERRORS = [
    # --- json settings
    ("json_not_object", _write("episode.json", "[16, 1]"), "holds a list, not a JSON object"),
    ("json_syntax", _write("episode.json", "{fps: 16"), "cannot be read as JSON"),
    ("json_not_utf8", _write("episode.json", b'{"caption": "\xff\xfe"}'), "cannot be read as JSON"),
    ("json_deeply_nested", _write("episode.json", "[" * 100000 + "]" * 100000),
     "cannot be read as JSON"),
    ("json_unknown_key", _json(fsp=16), "unknown key 'fsp'"),
    ("fps_string", _json(fps="16"), "fps='16' must be a positive number"),
    ("fps_bool", _json(fps=True), "fps=True must be a positive number"),
    ("fps_list", _json(fps=[16]), "fps=[16] must be a positive number"),
    ("fps_nan", _json(fps=float("nan")), "fps=nan must be a positive number"),
    ("fps_inf", _json(fps=float("inf")), "fps=inf must be a positive number"),
    ("fps_negative", _json(fps=-3), "fps=-3 must be a positive number"),
    ("fps_zero", _json(fps=0), "fps=0 must be a positive number"),
    ("fps_1e300", _json(fps=1e300), "fps=1e+300 is outside 0..1000"),
    ("fps_huge_int", _json(fps=10**400), "must be a positive number"),
    ("fps_missing", _json(fps=None), "no fps given"),
    ("caption_number", _json(caption=5), "caption=5 must be a string"),
    ("caption_lone_surrogate", _write("episode.json", '{"fps": 16, "caption": "a\\ud800"}'),
     "unpaired UTF-16 surrogate"),
    ("convention_unknown", _json(convention="blender"), "convention 'blender' is unknown"),
    ("world_up_unknown", _json(world_up="up"), "world_up 'up' is unknown"),
    ("units_zero", _json(units_per_metre=0), "units_per_metre=0 must be a positive number"),
    ("units_tiny", _json(units_per_metre=1e-300), "units_per_metre=1e-300 is outside"),
    ("dataset_json_not_object", lambda root: open(os.path.join(root, "dataset.json"), "w").write(
        '"fps"'), "dataset.json holds a str, not a JSON object"),
    ("episode_json_is_a_directory", _ep(lambda p: (os.remove(os.path.join(p, "episode.json")),
                                                   os.makedirs(os.path.join(p, "episode.json")))),
     "episode.json is not a file"),
    # --- frames
    ("frames_missing", _ep(lambda p: shutil.rmtree(os.path.join(p, "frames"))), "no frames"),
    ("frames_two_sources", _write("frames.mp4", b"x"), "several frame sources"),
    ("frames_non_image_file", _write("frames/notes.txt", "hello"), "'notes.txt', which is not"),
    ("frames_subdirectory", _ep(lambda p: os.makedirs(os.path.join(p, "frames", "more.png"))),
     "'more.png', which is not a png/jpg/jpeg image file"),
    ("frames_not_zero_padded", _ep(lambda p: [os.rename(
        os.path.join(p, "frames", f"{i:06d}.png"), os.path.join(p, "frames", f"f{5 * i}.png"))
        for i in range(N)]), "'f45.png' comes before 'f5.png' in name order"),
    ("frames_none", _ep(lambda p: [os.remove(os.path.join(p, "frames", n))
                                   for n in os.listdir(os.path.join(p, "frames"))]),
     "holds no images"),
    ("frame_corrupt_png", _write("frames/000007.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200),
     "000007.png (frame 7) cannot be read as an image"),
    ("frame_truncated_png", _truncate("frames/000009.png"),
     "000009.png (frame 9) cannot be read as an image"),
    ("frame_zero_bytes", _write("frames/000000.png", b""),
     "000000.png (frame 0) cannot be read as an image"),
    ("frame_not_an_image", _write("frames/000004.png", "just text"),
     "000004.png (frame 4) cannot be read as an image"),
    ("frame_too_small_to_crop", _ep(_tiny_frame), "1x1 pixels, too small to crop"),
    ("video_garbage", _ep(lambda p: (shutil.rmtree(os.path.join(p, "frames")),
                                     open(os.path.join(p, "frames.mp4"), "wb").write(b"\0" * 999))),
     "frames.mp4 cannot be opened as a video"),
    ("video_truncated", _video_episode(0.5), "frames.mp4"),
    ("video_mkv_truncated", _ep(_truncated_mkv), "frames (decoded from "),
    # --- poses
    ("poses_missing", _ep(lambda p: os.remove(os.path.join(p, "poses.npy"))), "no poses file"),
    ("poses_both_files", _write("poses.txt", _rows_of(N, 16)), "both poses.npy and poses.txt"),
    ("poses_shape_4x3", _poses(lambda p: p[:, :, :3]), "has shape (10, 4, 3)"),
    ("poses_ndim_2", _poses(lambda p: p.reshape(N, 16)), "has shape (10, 16)"),
    ("poses_ndim_4", _poses(lambda p: p[None]), "has shape (1, 10, 4, 4)"),
    ("poses_0d", _poses(lambda p: np.array(1.5)), "has shape ()"),
    ("poses_strings", _poses(lambda p: p.astype(str)), "not real numbers"),
    ("poses_bool", _poses(lambda p: p > 0), "dtype bool, not real numbers"),
    ("poses_complex", _poses(lambda p: p.astype(complex)), "dtype complex128, not real numbers"),
    ("poses_pickled_objects", _poses(lambda p: p.astype(object)), "dtype object, not real"),
    ("poses_pickle_file", _ep(_pickle), "is not a .npy file"),
    ("poses_npz_named_npy", _npz("poses.npy"), "is an .npz archive"),
    ("poses_truncated_npy", _truncate("poses.npy", 0.7), "cannot be read as a .npy array"),
    ("poses_nan", _poses(_set((5, 0, 3), np.nan)), "pose[5] is not finite"),
    ("poses_inf", _poses(_set((6, 2, 2), np.inf)), "pose[6] is not finite"),
    ("poses_not_orthonormal", _poses(_set((7, 0, 0), 1.5)), "pose[7]: the rotation is not"),
    ("poses_det_minus_one", _poses(_det_minus_one), "determinant"),
    ("poses_bottom_row", _poses(_set((2, 3, 0), 0.5)), "pose[2] has last row"),
    ("poses_1e308", _poses(_set((3, 0, 3), 1e308)), "beyond the limit of +-100000 m"),
    ("poses_far_after_units", _json(units_per_metre=1e-5), "beyond the limit of +-100000 m"),
    ("poses_txt_wrong_columns", _text_poses(_rows_of(N, 15)), "line 1 has 15 numbers"),
    ("poses_txt_mixed_widths", _text_poses(_rows_of(2, 12) + _rows_of(8, 16)),
     "mixes lines of 12 and 16"),
    ("poses_txt_junk", _text_poses("1 0 0 0 0 1 0 0 0 0 one 0 0 0 0 1\n"), "'one' is not a number"),
    ("poses_txt_not_utf8", _ep(lambda p: (os.remove(os.path.join(p, "poses.npy")),
                                          open(os.path.join(p, "poses.txt"), "wb").write(
                                              b"\xff\xfe\x00\x81"))),
     "cannot be read as UTF-8 text"),
    ("poses_txt_empty", _text_poses("# nothing\n\n"), "holds no poses"),
    ("poses_txt_inf", _text_poses("1 0 0 inf 0 1 0 0 0 0 1 0 0 0 0 1\n" * N), "pose[0] is not"),
    # --- actions
    ("actions_shape", _actions(np.zeros((N, 12), np.float32)), "[10, 12]"),
    ("actions_negative", _actions(_with(_valid_actions(), (3, 2), -0.5)), "action[3] has a neg"),
    ("actions_inf", _actions(_with(_valid_actions(), (4, 0), np.inf)), "action[4] is not finite"),
    ("actions_nan", _actions(_with(_valid_actions(), (1, 1), np.nan)), "action[1] is not finite"),
    ("actions_beyond_float32", _actions(_with(_valid_actions().astype(np.float64), (2, 0), 1e300)),
     "action[2] is not finite as float32"),
    ("actions_huge", _actions(_with(_valid_actions(), (5, 0), 1e30)), "action[5] has a value over"),
    ("actions_complex", _actions(_valid_actions().astype(complex)), "not real numbers"),
    ("actions_npz", _npz("actions.npy"), "actions.npy is an .npz archive"),
    # --- counts
    ("count_more_poses", _poses(lambda p: np.concatenate([p, p[-1:]])), "10 frames"),
    ("count_fewer_frames", _ep(lambda p: os.remove(os.path.join(p, "frames", "000004.png"))),
     "9 frames (images in frames/) but 10 poses"),
    ("one_frame", _ep(_one_frame), "1 frame(s); an episode needs at least 2"),
    # --- the source directory
    ("source_missing", shutil.rmtree, "does not exist"),
    ("source_empty", _empty_source, "holds no episode directories"),
    ("source_is_a_file", _source_is_file, "is a file, not a directory"),
]


def _shards_in(out):
  return sorted(n for n in os.listdir(out) if n.startswith("shard-")) if os.path.isdir(out) else []


@pytest.mark.parametrize("damage,expected", [r[1:] for r in INGEST_ERRORS],
                         ids=[r[0] for r in INGEST_ERRORS])
def test_every_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, damage, expected):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src)
  damage(src)
  with pytest.raises(DataError) as e:
    ingest_lib.ingest(src, out, TH, TW, codec="png", episodes_per_shard=1, progress=False)
  msg = str(e.value)
  assert expected in msg, msg
  assert "\n" not in msg and "\r" not in msg, msg
  assert "Fix:" in msg, msg
  assert _shards_in(out) == [], _shards_in(out)  # validated before anything was written


# ------------------------------------------------------------------ images of every mode


def _png_16bit_rgb(path, rgb16):
  """A 16-bit-per-channel RGB PNG written byte by byte (Pillow cannot write one)."""
  import struct
  import zlib
  h, w, _ = rgb16.shape

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _gradient16(h=16, w=16, shift=0):
  """A 16-bit gradient over the whole range 0..65535 (row-major), rolled by `shift`."""
  return np.roll(np.linspace(0, 65535, h * w).round().astype(np.uint16), shift).reshape(h, w)


def test_16bit_frames_are_scaled_not_clipped(tmp_path):
  """16-bit grayscale PNG frames came out pure white (Image.convert clips); 16-bit RGB ones are
  read at 8 bits by Pillow. Both must keep their levels: value * 255 / 65535."""
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src, n_episodes=2, n_frames=4)
  gray = [_gradient16(shift=10 * i) for i in range(4)]
  for i, g in enumerate(gray):
    Image.fromarray(g).save(os.path.join(src, "ep00", "frames", f"{i:06d}.png"))
    assert Image.open(os.path.join(src, "ep00", "frames", f"{i:06d}.png")).mode == "I;16"
  rgb = [np.stack([_gradient16(shift=s + i) for s in (0, 50, 100)], -1) for i in range(4)]
  for i, c in enumerate(rgb):
    _png_16bit_rgb(os.path.join(src, "ep01", "frames", f"{i:06d}.png"), c)
  ingest_lib.ingest(src, out, 16, 16, codec="png", progress=False)
  ep = shards.load_episode(out, "ep00")
  expected = [np.rint(g * (255 / 65535)).astype(np.uint8) for g in gray]
  for frame, e in zip(ep.frames, expected):
    for ch in range(3):
      np.testing.assert_array_equal(frame[..., ch], e)
  first = ep.frames[0, ..., 0].reshape(-1)  # the unrolled gradient: 0..255, monotone
  assert first[0] == 0 and first[-1] == 255 and (np.diff(first.astype(int)) >= 0).all()
  assert len(np.unique(first)) > 200
  ep = shards.load_episode(out, "ep01")
  for frame, c in zip(ep.frames, rgb):
    err = np.abs(frame.astype(int) - np.rint(c * (255 / 65535)).astype(int))
    assert err.max() <= 1, err.max()  # Pillow keeps the high byte: at most one level apart


def _mode_image(mode, values, size=(3, 2)):
  if mode in ("I;16", "I;16B"):
    arr = np.full(size[::-1], values, np.uint16)
    return Image.frombytes(mode, size, arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
  if mode == "I":
    return Image.fromarray(np.asarray(values, np.int32).reshape(size[::-1]))
  if mode == "F":
    return Image.fromarray(np.asarray(values, np.float32).reshape(size[::-1]))
  return Image.new(mode, size, values)


@pytest.mark.parametrize("mode,values,expected", [
    ("I;16", 25700, [100] * 3),
    ("I;16B", 65535, [255] * 3),
    ("I", [0, 1, 32768, 65535, 65535, 65535], [0, 0, 128, 255, 255, 255]),  # 16-bit data
    ("I", [0, -5, 2**30, 2**31 - 1, 70000, 0], [0, 0, 128, 255, 0, 0]),      # 32-bit range
    ("F", [0.0, 0.5, 1.0, -1.0, np.nan, 0.25], [0, 128, 255, 0, 0, 64]),     # [0, 1]
    ("F", [0.0, 100.0, 300.0, -1.0, np.nan, 254.6], [0, 100, 255, 0, 0, 255]),  # 0..255
    ("L", 77, [77] * 3),
    ("1", 1, [255] * 3),
    ("LA", (90, 0), [90] * 3),                # alpha dropped, not composited
    ("La", (90, 255), [90] * 3),
    ("RGBA", (10, 20, 30, 0), [10, 20, 30]),
    ("RGBX", (10, 20, 30, 0), [10, 20, 30]),
    ("CMYK", (0, 0, 0, 0), [255, 255, 255]),
    ("YCbCr", (128, 128, 128), [128, 128, 128]),
])
def test_to_rgb8_scales_every_mode_by_its_range(mode, values, expected):
  from data_pipeline.images import to_rgb8
  rgb = to_rgb8(_mode_image(mode, values))
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
  if np.ndim(expected) == 1 and len(expected) == 3:
    np.testing.assert_array_equal(rgb, np.broadcast_to(np.array(expected, np.uint8), rgb.shape))
  else:
    for ch in range(3):
      np.testing.assert_array_equal(rgb[..., ch].reshape(-1), expected)


def test_to_rgb8_palette():
  from data_pipeline.images import to_rgb8
  im = Image.new("P", (2, 2))
  im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
  im.putpixel((1, 0), 1)
  np.testing.assert_array_equal(to_rgb8(im)[0], [[0, 0, 0], [200, 100, 50]])


def test_16bit_start_images_read_alike_in_generate_and_play(tmp_path):
  """`relic generate --image` and `relic play`'s upload use the same conversion as ingest."""
  import base64
  import ml_collections
  from relic_jax.inference import generate as generate_lib
  from relic_jax.play import protocol
  path = str(tmp_path / "grey16.png")
  g = _gradient16()
  Image.fromarray(g).save(path)
  expected = np.repeat(np.rint(g * (255 / 65535)).astype(np.uint8)[..., None], 3, -1)
  cfg = ml_collections.ConfigDict({"data": {"latent_height": 2, "latent_width": 2,
                                            "spatial_stride": 8}})
  image, caption = generate_lib.start_image(cfg, str(tmp_path), path)
  assert caption is None and image.shape == (16, 16, 3)
  np.testing.assert_array_equal(image, expected)  # same size: no resampling
  with open(path, "rb") as f:
    uploaded = protocol.decode_image(base64.b64encode(f.read()).decode())
  np.testing.assert_array_equal(uploaded, expected)
  with open(tmp_path / "bad.png", "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
  with pytest.raises(DataError, match="cannot read it as an image .* Fix:"):
    generate_lib.start_image(cfg, str(tmp_path), str(tmp_path / "bad.png"))


# ------------------------------------------------------------------ resume, repair, changes


def _flip_byte(path, at=0.5):
  with open(path, "r+b") as f:
    f.seek(int(os.path.getsize(path) * at))
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))


def test_resume_verifies_checksums_and_rewrites_damaged_shards(tmp_path, capsys):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src)
  ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  manifest = shards.read_manifest(out)
  _flip_byte(os.path.join(out, shards.shard_name(1)))  # same size: only the SHA-256 tells
  with pytest.raises(DataError) as e:
    shards.load_episode(out, "ep01")
  msg = str(e.value)
  assert "shard-00001.arrayrecord: SHA-256 mismatch" in msg and "\n" not in msg
  # the repair advice names the command that made this dataset, not the ViZDoom generator
  assert "re-run `relic data ingest --source=<path to src>`" in msg, msg
  assert "`relic data`" not in msg
  os.remove(os.path.join(out, shards.shard_name(2)))       # missing, its index still there
  with open(os.path.join(out, shards.shard_name(0)), "ab") as f:
    f.write(b"junk")                                        # grown
  capsys.readouterr()
  again = ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  said = capsys.readouterr().out
  assert "shard-00001.arrayrecord: its SHA-256 differs from the one in its index" in said, said
  assert "shard-00002.arrayrecord: it is missing" in said
  assert "shard-00000.arrayrecord: it is" in said and "bytes but its index says" in said
  assert said.count("rewriting it") == 3
  t = again["timing"]
  assert t["shards_repaired"] == 3 and t["shards_written"] == 3 and t["shards_skipped"] == 0
  assert shards.read_manifest(out) == manifest  # the same bytes again (deterministic encoding)
  for name in ("ep00", "ep01", "ep02"):
    assert len(shards.load_episode(out, name, verify=True)) == N
  idle = ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  assert idle["timing"]["shards_written"] == 0 and idle["timing"]["shards_repaired"] == 0


def _synthetic_job(names):
  return [_synthetic_episode(n) for n in names]


def _synthetic_episode(name):
  from data_pipeline.episode import make_episode
  seed = int(name[-1])
  return make_episode(name, _random_frames(6, 16, 16, seed=seed), _trajectory(6, seed), "c", 16,
                      source="test")


def test_generated_datasets_repair_alike_and_name_relic_data(tmp_path, capsys):
  """The writer is shared: a dataset made by `relic data` (config source "vizdoom") is
  verified and repaired on resume too, and its repair advice is `relic data`."""
  from data_pipeline import writer
  out = str(tmp_path / "gen")
  config = {"source": "vizdoom", "seed": 0}
  jobs = [["ep0"], ["ep1"]]
  writer.write_dataset(out, config, jobs, _synthetic_job, codec="png", progress=False,
                       names_of=list)
  _flip_byte(os.path.join(out, shards.shard_name(0)), 0.7)
  with pytest.raises(DataError) as e:
    shards.load_episode(out, "ep0")
  assert "re-run `relic data` with this dataset's --config and --workdir" in str(e.value)
  r = writer.write_dataset(out, config, jobs, _synthetic_job, codec="png", progress=False,
                           names_of=list)
  assert r["timing"]["shards_repaired"] == 1 and "rewriting it" in capsys.readouterr().out
  assert len(shards.load_episode(out, "ep0")) == 6


def test_a_changed_source_is_named_file_by_file(tmp_path):
  """A killed ingest leaves some shards; if the source then changes, the re-run refuses (the
  shards would mix two sources) and says which files changed and how to get out."""
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src)
  shutil.copytree(src, str(tmp_path / "orig"))
  ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  for name in (shards.MANIFEST, shards.shard_name(2), shards.index_name(2)):  # "killed"
    os.remove(os.path.join(out, name))
  before = _snapshot(out)
  np.save(os.path.join(src, "ep01", "poses.npy"), _trajectory(N, 7))
  Image.fromarray(_random_frames(1, 20, 20)[0]).save(os.path.join(src, "ep00", "frames",
                                                                  "000003.png"))
  _make_source(str(tmp_path / "more"), n_episodes=4)
  shutil.copytree(str(tmp_path / "more" / "ep03"), os.path.join(src, "ep03"))
  with pytest.raises(DataError) as e:
    ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  msg = str(e.value)
  assert "\n" not in msg
  assert "the source changed since the dataset was written" in msg, msg
  assert "episode(s) added: ep03" in msg
  assert "ep01/poses.npy (was 1408 bytes, sha256 " in msg and "ep00/frames/ (was 10 files" in msg
  assert "fingerprint" not in msg  # no hashes to puzzle over
  assert f"Fix: restore what it was made from (the source or the config) to finish it, or " \
         f"delete {out} to start it over" in msg
  assert _snapshot(out) == before  # nothing lost
  shutil.rmtree(src)
  shutil.copytree(str(tmp_path / "orig"), src)  # restored: the ingest finishes
  done = ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  assert done["timing"]["shards_written"] == 1 and done["num_episodes"] == 3
  # a dataset recorded before the per-file record existed still gets a plain explanation
  state = json.load(open(os.path.join(out, "dataset_config.json")))
  del state["source_files"]
  json.dump(state, open(os.path.join(out, "dataset_config.json"), "w"))
  os.remove(os.path.join(src, "ep02", "poses.npy"))
  np.savetxt(os.path.join(src, "ep02", "poses.txt"), _trajectory(N, 2).reshape(N, 16))
  with pytest.raises(DataError, match="the source's files changed since the dataset was "
                     "written .* Fix: restore"):
    ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)


@pytest.mark.parametrize("damage", ["garbage", "list", "missing_keys"])
def test_damaged_dataset_files_are_named_with_the_fix(tmp_path, capsys, damage):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src, n_episodes=2)
  ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  text = {"garbage": "{not json", "list": "[]", "missing_keys": '{"config": 1}'}[damage]
  state = os.path.join(out, "dataset_config.json")
  for name in (shards.MANIFEST, shards.index_name(1), "dataset_config.json"):
    with open(os.path.join(out, name), "w") as f:
      f.write(text)
  with pytest.raises(DataError) as e:  # the manifest: read by every reader
    shards.read_manifest(out)
  msg = str(e.value)
  assert "manifest.json" in msg and "damaged" in msg and "\n" not in msg, msg
  with pytest.raises(DataError) as e:  # the config record: read by the writer
    ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  msg = str(e.value)
  assert f"{state} is damaged" in msg and "Fix: restore it" in msg and "\n" not in msg, msg
  assert f"delete {out} to start the dataset over" in msg
  os.remove(state)  # the fix that keeps the shards: the re-run recreates the record
  capsys.readouterr()
  r = ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  said = capsys.readouterr().out
  assert "dataset_config.json was missing; recreated" in said
  assert "shard-00001.arrayrecord: its index shard-00001.json is damaged" in said
  assert r["timing"]["shards_skipped"] == 1 and r["timing"]["shards_repaired"] == 1
  assert len(shards.load_episode(out, "ep01")) == N  # the manifest is whole again


def test_the_repair_advice_of_a_damaged_manifest_names_the_command(tmp_path):
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src, n_episodes=2)
  ingest_lib.ingest(src, out, TH, TW, progress=False)
  with open(os.path.join(out, shards.MANIFEST), "w") as f:
    f.write("{")
  with pytest.raises(DataError, match=r"re-run `relic data ingest --source=<path to src>` .*"
                     "rewrites manifest.json"):
    shards.read_manifest(out)


def test_a_dataset_inside_its_source_is_refused(tmp_path):
  src = str(tmp_path / "src")
  _make_source(src, n_episodes=2)
  with pytest.raises(DataError, match="inside the source directory .* Fix:"):
    ingest_lib.ingest(src, os.path.join(src, "data"), TH, TW, progress=False)
  assert not os.path.exists(os.path.join(src, "data"))


def test_a_foreign_directory_without_a_config_record_is_refused(tmp_path):
  """Shards with no dataset_config.json beside them, made with another config, are not
  overwritten."""
  src, out = str(tmp_path / "src"), str(tmp_path / "out")
  _make_source(src, n_episodes=2)
  ingest_lib.ingest(src, out, TH, TW, episodes_per_shard=1, progress=False)
  os.remove(os.path.join(out, "dataset_config.json"))
  before = _snapshot(out)
  with pytest.raises(DataError, match="holds shards made with another config .* but no "
                     "dataset_config.json recording it. Fix:"):
    ingest_lib.ingest(src, out, TH, 2 * TW, episodes_per_shard=1, progress=False)
  assert _snapshot(out) == before
