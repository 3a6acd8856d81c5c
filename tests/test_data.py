"""The data pipeline: poses and actions, ViZDoom episodes, shards, and the grain clip loader."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_pipeline import clips, doom, generate, loader, shards, writer
from data_pipeline import poses as P
from data_pipeline.episode import DataError, make_episode
from experiments.tiny import get_config
from tests.helpers import REPO

# Integrating float32 actions over a few hundred frames reproduces float64 poses to ~1e-7 m;
# the tests allow 1e-5 (metres, and for the rotation entries).
INTEGRATION_TOL = 1e-5


def small_data_config(**gen):
  cfg = get_config()
  g = cfg.data.gen
  g.maps = ("freedoom2/MAP01", "freedoom2/MAP02")
  g.num_episodes, g.episodes_per_shard, g.frames_per_episode, g.workers = 3, 2, 80, 1
  g.height = g.width = 48
  for k, v in gen.items():
    g[k] = v
  cfg.data.latent_frames = 3  # clips of 9 frames
  cfg.data.latent_height = cfg.data.latent_width = 4  # 32 x 32 pixels
  cfg.train.batch_size = 4
  cfg.data.clip_stride = 8
  return cfg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  cfg = small_data_config()
  out = str(tmp_path_factory.mktemp("doom") / "data")
  manifest = generate.generate(cfg, out, progress=False)
  return cfg, out, manifest


def smooth_trajectory(n=200, seed=0):
  rng = np.random.default_rng(seed)
  out, yaw, pitch, pos = [], 0.0, 0.0, np.zeros(3)
  for t in range(n):
    yaw += rng.normal() * 0.08
    pitch = float(np.clip(pitch + rng.normal() * 0.04, -0.4, 0.4))
    pos = pos + rng.normal(size=3) * 0.05
    if t % 50 < 5:  # some static frames
      pos = out[-1][:3, 3] if out else pos
    out.append(P.pose_from_yaw_pitch(pos, yaw, pitch, 0.003 * t))
  return np.stack(out)


# ------------------------------------------------------------------ poses and actions


def test_integrating_actions_reproduces_poses():
  poses = smooth_trajectory()
  actions, scale = P.actions_from_poses(poses)
  assert actions.dtype == np.float32 and (actions >= 0).all()
  np.testing.assert_allclose(P.integrate_actions(poses[0], actions, scale), poses,
                             atol=INTEGRATION_TOL)
  # the translation is normalised by the clip's mean displacement
  dp, _ = P.signed_motion(actions[1:], 1.0)
  assert np.linalg.norm(dp, axis=-1).mean() == pytest.approx(1.0, rel=1e-5)


def test_action_channels_mean_what_they_say():
  start = P.pose_from_yaw_pitch(np.zeros(3), 0.3, 0.0)

  def act(pose_b):
    a, _ = P.actions_from_poses(np.stack([start, pose_b]))
    return {P.ACTION_NAMES[i] for i in np.flatnonzero(a[1] > 1e-6)}
  fwd = start[:3, 2] * 0.1
  right = start[:3, 0] * 0.1
  assert act(P.pose_from_yaw_pitch(fwd, 0.3, 0.0)) == {"dolly_in"}
  assert act(P.pose_from_yaw_pitch(-fwd, 0.3, 0.0)) == {"dolly_out"}
  assert act(P.pose_from_yaw_pitch(right, 0.3, 0.0)) == {"truck_right"}
  assert act(P.pose_from_yaw_pitch(-right, 0.3, 0.0)) == {"truck_left"}
  assert act(P.pose_from_yaw_pitch(np.array([0, 0, 0.1]), 0.3, 0.0)) == {"pedestal_up"}
  assert act(P.pose_from_yaw_pitch(np.zeros(3), 0.4, 0.0)) == {"pan_left"}  # yaw is CCW
  assert act(P.pose_from_yaw_pitch(np.zeros(3), 0.2, 0.0)) == {"pan_right"}
  assert act(P.pose_from_yaw_pitch(np.zeros(3), 0.3, 0.1)) == {"tilt_up"}
  assert act(P.pose_from_yaw_pitch(np.zeros(3), 0.3, -0.1)) == {"tilt_down"}
  assert act(P.pose_from_yaw_pitch(np.zeros(3), 0.3, 0.0, 0.1)) == {"roll_cw"}
  assert act(P.pose_from_yaw_pitch(np.zeros(3), 0.3, 0.0, -0.1)) == {"roll_ccw"}
  assert act(start) == {"static"}


def test_euler_round_trip():
  angles = np.random.default_rng(0).uniform(-1.2, 1.2, size=(100, 3))
  np.testing.assert_allclose(P.euler_yxz(P.compose_yxz(angles)), angles, atol=1e-12)


@pytest.mark.parametrize("convention", P.CONVENTIONS)
@pytest.mark.parametrize("world_up", P.WORLD_UPS)
def test_pose_conventions_round_trip(convention, world_up):
  poses = smooth_trajectory(50)
  theirs = P.from_ours(poses, convention, world_up, units_per_metre=100.0)
  P.check_poses(theirs)  # still rigid, det +1
  np.testing.assert_allclose(P.to_ours(theirs, convention, world_up, 100.0), poses, atol=1e-12)


@pytest.mark.parametrize("bad,words", [
    (lambda p: p.__setitem__((3, 0, 3), np.nan), "pose[3] is not finite"),
    (lambda p: p.__setitem__((4, slice(0, 3), 0), 2 * p[4, :3, 0]), "pose[4]: the rotation is "
     "not orthonormal"),
    (lambda p: p.__setitem__((2, slice(0, 3), 0), -p[2, :3, 0]), "determinant"),
])
def test_bad_poses_are_named(bad, words):
  poses = smooth_trajectory(10)
  bad(poses)
  with pytest.raises(P.PoseError, match=words.replace("[", r"\[").replace("]", r"\]")):
    P.check_poses(poses, "pose")


def test_episode_validation():
  poses = smooth_trajectory(10)
  frames = np.zeros((10, 8, 8, 3), np.uint8)
  with pytest.raises(DataError, match="10 frames but 9 poses"):
    make_episode("e", frames, poses[:9], "", 16, "test")
  bad = np.zeros((10, 13), np.float32)
  bad[5, 2] = -1
  with pytest.raises(DataError, match=r"action\[5\] has a negative magnitude"):
    make_episode("e", frames, poses, "", 16, "test", actions=bad)
  with pytest.raises(DataError, match="fps"):
    make_episode("e", frames, poses, "", 0, "test")


# ------------------------------------------------------------------ ViZDoom episodes


def test_doom_episode_is_deterministic_and_exact():
  cfg = doom.GenConfig(height=32, width=40, frames_per_episode=120)
  a = doom.generate_episode("freedoom2/MAP03", 11, cfg)
  b = doom.generate_episode("freedoom2/MAP03", 11, cfg)
  c = doom.generate_episode("freedoom2/MAP03", 12, cfg)
  assert a.frames.shape == (120, 32, 40, 3) and a.poses.shape == (120, 4, 4)
  for field in ("frames", "poses", "actions"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.caption == b.caption and "MAP03" in a.caption
  assert not np.array_equal(a.poses, c.poses)
  np.testing.assert_allclose(P.integrate_actions(a.poses[0], a.actions, a.action_scale), a.poses,
                             atol=INTEGRATION_TOL)
  # the camera really moves and turns, and the pitch stays within the configured bound
  assert np.ptp(a.poses[:, :2, 3], axis=0).max() > 0.5
  forward = a.poses[:, :3, 2]
  assert np.degrees(np.arcsin(np.abs(forward[:, 2]))).max() <= cfg.max_pitch_deg + 0.5
  assert a.fps == pytest.approx(17.5)


def test_unknown_map_and_resolution_are_named():
  with pytest.raises(DataError, match="map 'freedoom2/MAP99' is unknown"):
    doom.map_list(("freedoom2",), ("freedoom2/MAP99",), ())
  with pytest.raises(DataError, match="render_resolution='100x100' is not a ViZDoom resolution"):
    doom.make_game("freedoom2/MAP01", 0, "100x100")


# ------------------------------------------------------------------ shards


def test_generated_dataset_reads_back(dataset):
  cfg, out, manifest = dataset
  assert manifest["num_episodes"] == 3 and manifest["num_shards"] == 2
  assert manifest["num_frames"] == 3 * 80
  name = manifest["shards"][1]["episodes"][0]["name"]
  ep = shards.load_episode(out, name)
  plan = generate.episode_plan(cfg)[1][0]
  again = doom.generate_episode(plan[1], plan[2], doom.GenConfig.from_config(cfg.data.gen))
  np.testing.assert_array_equal(ep.poses, again.poses)
  np.testing.assert_array_equal(ep.actions, again.actions)
  # JPEG at quality 95: close to the rendered frames
  err = np.abs(ep.frames.astype(np.float32) - again.frames).mean()
  assert err < 4.0, err
  np.testing.assert_allclose(P.integrate_actions(ep.poses[0], ep.actions, ep.action_scale),
                             ep.poses, atol=INTEGRATION_TOL)


def test_png_codec_is_lossless(tmp_path):
  cfg = small_data_config(codec="png", num_episodes=1, frames_per_episode=20)
  out = str(tmp_path / "png")
  generate.generate(cfg, out, progress=False)
  name, map_path, seed = generate.episode_plan(cfg)[0][0]
  np.testing.assert_array_equal(
      shards.load_episode(out, name).frames,
      doom.generate_episode(map_path, seed, doom.GenConfig.from_config(cfg.data.gen)).frames)


def _copy_dataset(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return str(dst)


def _clip_reader(out, cfg, verify=True):
  cfg = cfg.copy_and_resolve_references()
  cfg.data.verify_checksums = verify
  return clips.make_clip_source(cfg, out)


def test_corrupt_shard_is_detected_and_named(dataset, tmp_path):
  cfg, out, _ = dataset
  bad = _copy_dataset(out, tmp_path / "corrupt")
  path = os.path.join(bad, shards.shard_name(0))
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with pytest.raises(DataError, match="shard-00000.arrayrecord: SHA-256 mismatch"):
    _clip_reader(bad, cfg)[0]
  # without the checksum pass, the damaged record is still caught (riegeli hash or our CRC)
  src = _clip_reader(bad, cfg, verify=False)
  with pytest.raises(DataError, match="shard-00000.arrayrecord.*corrupt"):
    for i in range(len(src)):
      src[i]


def test_truncated_and_missing_shards_are_named(dataset, tmp_path):
  cfg, out, _ = dataset
  bad = _copy_dataset(out, tmp_path / "truncated")
  path = os.path.join(bad, shards.shard_name(0))
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 3])
  with pytest.raises(DataError, match="shard-00000.arrayrecord is .* bytes but its index says"):
    src = _clip_reader(bad, cfg, verify=False)
    for i in range(len(src)):
      src[i]
  os.remove(path)
  with pytest.raises(DataError, match="shard-00000.arrayrecord is missing"):
    src = _clip_reader(bad, cfg, verify=False)
    for i in range(len(src)):
      src[i]
  os.remove(os.path.join(bad, shards.MANIFEST))
  with pytest.raises(DataError, match="manifest.json is missing"):
    _clip_reader(bad, cfg)


def test_rerun_skips_complete_shards_and_redoes_partial_ones(dataset, tmp_path):
  cfg, out, manifest = dataset
  copy = _copy_dataset(out, tmp_path / "rerun")
  before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(copy, "shard-*"))}
  again = generate.generate(cfg, copy, progress=False)
  assert again["timing"]["shards_written"] == 0 and again["timing"]["shards_skipped"] == 2
  # a killed writer leaves a temporary file; a shard without index is incomplete
  open(os.path.join(copy, shards.shard_name(1) + ".tmp-999"), "wb").write(b"partial")
  os.remove(os.path.join(copy, shards.index_name(1)))
  again = generate.generate(cfg, copy, progress=False)
  assert again["timing"]["shards_written"] == 1 and again["timing"]["partial_files_removed"] == 2
  after = {p: open(p, "rb").read() for p in glob.glob(os.path.join(copy, "shard-*"))}
  assert after == before  # byte-identical: generation and shard writing are deterministic
  # a different config is refused and leaves the data alone
  other = cfg.copy_and_resolve_references()
  other.data.gen.frames_per_episode = 40
  with pytest.raises(DataError, match=r"different config \(frames_per_episode: 80 there, 40 now"):
    generate.generate(other, copy, progress=False)
  assert {p: open(p, "rb").read() for p in glob.glob(os.path.join(copy, "shard-*"))} == before


def test_killed_generation_resumes(tmp_path):
  """SIGKILL `relic data` after its first shard; the re-run completes the same dataset."""
  work = str(tmp_path / "run")
  args = [os.path.join(os.path.dirname(sys.executable), "relic"), "data",
          "--config=experiments/tiny.py", f"--workdir={work}", "--config.train.progress_bar=False",
          "--config.data.gen.num_episodes=6", "--config.data.gen.episodes_per_shard=1",
          "--config.data.gen.frames_per_episode=150", "--config.data.gen.workers=1",
          "--config.data.gen.maps=('freedoom2/MAP01',)"]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(work, "data", shards.index_name(0))):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(work, "data", shards.MANIFEST))
  done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  summary = json.loads(done.stdout.strip().splitlines()[-2])
  assert summary["shards_skipped"] >= 1 and summary["num_episodes"] == 6
  assert not glob.glob(os.path.join(work, "data", "*.tmp-*"))
  m = shards.read_manifest(os.path.join(work, "data"))
  src = clips.ClipSource(os.path.join(work, "data"), 150, 150, 8)  # every frame, checksummed
  assert len(src) == 6 and all(src[i]["frames"].shape[0] == 150 for i in range(6))
  assert m["num_frames"] == 900


# ------------------------------------------------------------------ the clip loader


def _batches(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_clip_batches_shapes_and_content(dataset):
  cfg, out, _ = dataset
  b = next(loader.make_clip_iterator(cfg, out, 0, 1, num_threads=1))
  f = clips.clip_frames(cfg.data.latent_frames)
  assert f == 9
  assert b["frames"].shape == (4, 9, 32, 32, 3) and b["frames"].dtype == np.uint8
  assert b["actions"].shape == (4, 9, 13) and b["poses"].shape == (4, 9, 12)
  assert b["text_tokens"].shape == (4, cfg.data.text_len)
  # pose features are relative to the clip's first frame; actions integrate back to the camera
  np.testing.assert_allclose(b["poses"][:, 0], np.tile(np.eye(4)[:3].reshape(12), (4, 1)),
                             atol=1e-6)
  for i in range(4):
    cam = b["camera"][i].astype(np.float64)
    np.testing.assert_allclose(P.integrate_actions(cam[0], b["actions"][i], b["action_scale"][i]),
                               cam, atol=1e-4)  # the camera is stored in float32 here


def test_palindrome_clip_plays_forward_then_back(dataset):
  cfg, out, _ = dataset
  src = clips.make_clip_source(cfg, out)
  clip = src[3]
  aug = clips.ClipAugment(48, 48, palindrome_prob=1.0, crop="center")
  seen = set()
  for seed in range(20):
    res = aug(clip, np.random.default_rng(seed))
    t = int(res["turn"])
    assert 5 <= t <= 8
    seen.add(t)
    order = clips.palindrome_indices(9, t)
    np.testing.assert_array_equal(res["frames"], clip["frames"][order])
    np.testing.assert_allclose(res["camera"], clip["camera"][order].astype(np.float32))
    assert order[t] == t and (t == 8 or order[t + 1] == t - 1) and order.min() >= 0
  assert len(seen) > 2
  np.testing.assert_array_equal(clips.palindrome_indices(9, 5), [0, 1, 2, 3, 4, 5, 4, 3, 2])


def test_clip_loader_is_deterministic_and_resumes_exactly(dataset):
  cfg, out, _ = dataset
  a = _batches(loader.make_clip_iterator(cfg, out, 0, 1, num_threads=1), 6)
  _same(a, _batches(loader.make_clip_iterator(cfg, out, 0, 1, num_threads=2), 6))
  it = loader.make_clip_iterator(cfg, out, 0, 1)
  _batches(it, 2)
  state = json.loads(json.dumps(it.get_state()))  # what the trainer's checkpoint stores
  resumed = loader.make_clip_iterator(cfg, out, 0, 1)
  resumed.set_state(state)
  _same(_batches(resumed, 4), a[2:])
  other = cfg.copy_and_resolve_references()
  other.seed = 1
  assert not np.array_equal(next(loader.make_clip_iterator(other, out, 0, 1))["start"],
                            a[0]["start"])


@pytest.mark.parametrize("processes", [2, 4])
def test_per_process_clips_are_disjoint_and_cover_the_data(dataset, processes):
  cfg, out, _ = dataset
  cfg = cfg.copy_and_resolve_references()
  cfg.data.palindrome_prob = 0.0
  n = len(clips.make_clip_source(cfg, out))
  steps = n // cfg.train.batch_size  # one epoch of whole global batches
  single = _batches(loader.make_clip_iterator(cfg, out, 0, 1), steps)
  per = [_batches(loader.make_clip_iterator(cfg, out, p, processes), steps)
         for p in range(processes)]
  key = lambda b: list(zip(b["episode"].tolist(), b["start"].tolist()))
  for s in range(steps):  # the assembled global batch equals the single-process batch
    assert sum((key(per[p][s]) for p in range(processes)), []) == key(single[s])
    np.testing.assert_array_equal(np.concatenate([per[p][s]["frames"] for p in range(processes)]),
                                  single[s]["frames"])
  seen = [set(sum((key(b) for b in per[p]), [])) for p in range(processes)]
  for p in range(processes):
    for q in range(p):
      assert not seen[p] & seen[q]
  assert len(set().union(*seen)) == steps * cfg.train.batch_size
  assert steps * cfg.train.batch_size > n - cfg.train.batch_size  # all but a partial batch


def test_too_short_episodes_are_a_clear_error(dataset):
  cfg, out, _ = dataset
  cfg = cfg.copy_and_resolve_references()
  cfg.data.latent_frames = 40
  with pytest.raises(DataError, match="no episode .* long enough for a clip of 157 frames"):
    clips.make_clip_source(cfg, out)


def test_writer_refuses_a_foreign_directory_once_it_holds_data(tmp_path):
  writer._claim(str(tmp_path), {"a": 1})
  writer._claim(str(tmp_path), {"a": 2})  # no complete shard yet: nothing to lose, taken over
  open(os.path.join(tmp_path, shards.index_name(0)), "w").write("{}")
  with pytest.raises(DataError, match=r"different config \(a: 2 there, 3 now\)"):
    writer._claim(str(tmp_path), {"a": 3})


def test_clip_batches_assemble_into_a_sharded_global_batch(dataset):
  """The per-process batch becomes one global jax.Array split over the mesh's batch axes."""
  import jax
  from relic_jax.parallel import mesh as mesh_lib
  cfg, out, _ = dataset
  cfg = cfg.copy_and_resolve_references()
  cfg.train.batch_size = 8
  mesh = mesh_lib.make_mesh(cfg.mesh)  # fsdp over the 8 faked CPU devices
  batch = next(loader.make_clip_iterator(cfg, out, 0, 1))
  arrays = mesh_lib.global_batch(mesh, mesh_lib.rules(cfg.mesh), batch)
  frames = arrays["frames"]
  assert frames.shape == batch["frames"].shape and len(frames.sharding.device_set) == 8
  assert {s.data.shape[0] for s in frames.addressable_shards} == {1}
  np.testing.assert_array_equal(jax.device_get(frames), batch["frames"])


def test_heldout_episodes_are_kept_out_of_training(dataset):
  cfg, out, manifest = dataset
  train = clips.make_clip_source(cfg, out, "train")
  held = clips.make_clip_source(cfg, out, "heldout")
  every = clips.make_clip_source(cfg, out, "all")
  ep = lambda src: {int(src[i]["episode"]) for i in range(len(src))}
  assert cfg.data.heldout_episodes == 1
  assert ep(held) == {manifest["num_episodes"] - 1} and ep(train) == {0, 1}
  assert len(train) + len(held) == len(every)
  bad = cfg.copy_and_resolve_references()
  bad.data.heldout_episodes = 3
  with pytest.raises(DataError, match="heldout_episodes=3 leaves no training episode"):
    clips.make_clip_source(bad, out)


def test_heldout_map_episodes_are_the_last_and_the_heldout_split():
  from relic_jax.config import validate
  from relic_jax.config.validation import ConfigError
  cfg = small_data_config(heldout_maps=("freedoom2/MAP05", "freedoom2/MAP15"),
                          heldout_map_episodes=3)
  cfg.data.heldout_episodes = 3
  validate(cfg)
  plan = [e for shard in generate.episode_plan(cfg) for e in shard]
  maps = [m for _, m, _ in plan]
  assert maps == ["freedoom2/MAP01", "freedoom2/MAP02", "freedoom2/MAP01", "freedoom2/MAP05",
                  "freedoom2/MAP15", "freedoom2/MAP05"]
  # the training episodes are those of a dataset without held-out-map episodes
  assert plan[:3] == [e for s in generate.episode_plan(small_data_config()) for e in s]
  assert "heldout_map_episodes" in generate.generation_config(cfg)
  assert "heldout_map_episodes" not in generate.generation_config(small_data_config())
  cfg.data.heldout_episodes = 1
  with pytest.raises(ConfigError, match="must equal data.gen.heldout_map_episodes"):
    validate(cfg)
