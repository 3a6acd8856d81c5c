"""Property-based fuzzing (hypothesis) of the two parsers of user files: `relic data ingest`'s
episode directories and `relic generate`'s action scripts. Property: an input is either
accepted, and then what comes out is valid, or refused with one clear one-line error of the
documented class; never another exception, never silently wrong data, and a refused ingest
writes nothing. Derandomized (the same examples on every run) and bounded in time: each
property took 9 to 21 s on the shared 2-core machine (1500 ingest sources, 6000 scripts).
Below them, the script limits the properties rely on, one row each."""

import collections
import json
import math
import os
import pickle
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from data_pipeline import ingest as ingest_lib
from data_pipeline import poses as poses_lib
from data_pipeline import shards
from data_pipeline.episode import DataError
from relic_jax.inference import scripts

H, W = 8, 12  # the ingest target: small, and not square (frames are cropped)
FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _one_clear_line(message: str) -> None:
  assert message and "\n" not in message and "\r" not in message, repr(message)


# ------------------------------------------------------------------ ingest: the strategies

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=4)
SETTINGS = st.fixed_dictionaries(
    {"fps": st.one_of(st.sampled_from([16, 7.5, 30]), st.floats(), st.integers(-2, 10**400),
                      ANY_JSON)},
    optional={
        "caption": st.one_of(st.text(max_size=12), st.just("bad \ud800 text"), ANY_JSON),
        "convention": st.one_of(st.sampled_from(poses_lib.CONVENTIONS), st.text(max_size=6)),
        "world_up": st.one_of(st.sampled_from(poses_lib.WORLD_UPS), st.text(max_size=3)),
        "units_per_metre": st.one_of(st.sampled_from([1.0, 100.0, 0.5]), st.floats(), ANY_JSON),
        "fsp": ANY_JSON,  # an unknown key
    })
JSON_FILE = st.one_of(SETTINGS.map(lambda s: ("json", s)), st.just(("json", None)),
                      st.binary(max_size=40).map(lambda b: ("raw", b)),
                      ANY_JSON.map(lambda v: ("json", v)))

IMAGE_MODES = ("RGB", "L", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK")
FRAME = st.one_of(
    st.tuples(st.just("image"), st.sampled_from(IMAGE_MODES), st.integers(1, 10),
              st.integers(1, 10), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("bytes"), st.binary(max_size=60)))
FRAMES = st.one_of(st.tuples(st.just("images"), st.lists(FRAME, max_size=5)),
                   st.tuples(st.just("video"), st.binary(max_size=100)),
                   st.just(("none", None)))

DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int32, np.uint8, np.bool_,
                          np.complex64, np.dtype("<U3")])
RANDOM_ARRAY = DTYPES.flatmap(lambda dt: hnp.arrays(
    dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
EDIT = st.tuples(st.integers(0, 10**6), st.one_of(
    st.floats(), st.sampled_from([1e308, -1e308, 1e5, 1e6, np.nan, np.inf, 0.0, 2.0])))
POSES = st.one_of(
    st.tuples(st.just("npy"), st.integers(-1, 1), st.lists(EDIT, max_size=2)),  # count delta
    st.tuples(st.just("txt"), st.integers(-1, 1), st.lists(EDIT, max_size=2)),
    st.tuples(st.just("txt_junk"), st.lists(st.text(max_size=30), max_size=4)),
    st.tuples(st.just("array"), RANDOM_ARRAY),
    st.tuples(st.just("objects"), st.just(None)),
    st.tuples(st.just("npz"), st.just(None)),
    st.tuples(st.just("pickle"), st.just(None)),
    st.tuples(st.just("bytes"), st.binary(max_size=80)),
    st.just(("none", None)))
ACTIONS = st.one_of(st.just(("none", None)), st.just(("derived", None)),
                    st.tuples(st.just("edit"), EDIT), st.tuples(st.just("array"), RANDOM_ARRAY),
                    st.just(("npz", None)))
FUZZED_EPISODE = st.fixed_dictionaries({"json": JSON_FILE, "frames": FRAMES, "poses": POSES,
                                        "actions": ACTIONS})
# A valid episode, still drawn widely (every mode and size, convention, units, pose format),
# so that about half the sources are accepted and their output is checked.
VALID_EPISODE = st.fixed_dictionaries({
    "json": st.fixed_dictionaries(
        {"fps": st.one_of(st.integers(1, 1000), st.floats(0.01, 1000.0))},
        optional={"caption": st.text(max_size=12),
                  "convention": st.sampled_from(poses_lib.CONVENTIONS),
                  "world_up": st.sampled_from(poses_lib.WORLD_UPS),
                  "units_per_metre": st.floats(0.01, 1e4)}).map(lambda s: ("json", s)),
    "frames": st.one_of(
        st.tuples(st.just("images"), st.lists(
            st.tuples(st.just("image"), st.sampled_from(IMAGE_MODES), st.integers(1, 10),
                      st.integers(1, 10), st.integers(0, 2**32 - 1)), min_size=2, max_size=5)),
        st.tuples(st.just("encoded_video"), st.tuples(  # frames, height, width (even), seed
            st.integers(2, 5), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**32 - 1)))),
    "poses": st.tuples(st.sampled_from(["npy", "txt"]), st.just(0), st.just([])),
    "actions": st.sampled_from([("none", None), ("derived", None)])})
EPISODE = st.one_of(VALID_EPISODE, FUZZED_EPISODE)
SOURCE = st.fixed_dictionaries({"dataset_json": st.one_of(st.just(("json", None)), JSON_FILE),
                                "episodes": st.lists(EPISODE, min_size=1, max_size=2)})


# ------------------------------------------------------------------ ingest: building a source


def _image(mode: str, w: int, h: int, seed: int) -> tuple[Image.Image, str]:
  """A random image of `mode` and the format Pillow can save it in."""
  rng = np.random.default_rng(seed)
  if mode == "1":
    return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool)), "PNG"
  if mode == "I;16":
    return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)), "PNG"
  if mode == "I":  # Pillow writes no 32-bit PNG
    top = rng.choice([2**16, 2**31 - 1])
    return Image.fromarray(rng.integers(0, top, (h, w)).astype(np.int32)), "TIFF"
  if mode == "F":  # TIFF under a .png name: Pillow reads by content
    scale = rng.choice([1.0, 255.0, 1e6])
    return Image.fromarray((rng.standard_normal((h, w)) * scale).astype(np.float32)), "TIFF"
  if mode == "P":
    im = Image.fromarray(rng.integers(0, 256, (h, w)).astype(np.uint8), "L").convert("P")
    im.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tobytes())
    return im, "PNG"
  im = Image.frombytes(mode, (w, h), rng.integers(0, 256, (h, w, len(mode)), np.uint8).tobytes())
  return im, "JPEG" if mode == "CMYK" else "PNG"


def _write_json(path: str, spec) -> None:
  kind, value = spec
  if kind == "raw":
    with open(path, "wb") as f:
      f.write(value)
  elif value is not None:
    with open(path, "w") as f:
      json.dump(value, f)


def _edit(array: np.ndarray, edit) -> None:
  at, value = edit
  flat = array.reshape(-1)
  if flat.size:
    with np.errstate(over="ignore"):  # 1e308 into float32: inf, which is the point
      flat[at % flat.size] = value


def _write_episode(path: str, spec: dict, seed: int) -> int:
  """Writes the episode; returns its number of frames (as given)."""
  os.makedirs(path)
  _write_json(os.path.join(path, "episode.json"), spec["json"])
  kind, frames = spec["frames"]
  n = 0
  if kind == "images":
    os.makedirs(os.path.join(path, "frames"))
    for i, frame in enumerate(frames):
      file = os.path.join(path, "frames", f"{i:04d}.png")
      if frame[0] == "bytes":
        with open(file, "wb") as f:
          f.write(frame[1])
      else:
        im, fmt = _image(*frame[1:])
        im.save(file, fmt)
    n = len(frames)
  elif kind == "video":
    with open(os.path.join(path, "frames.mp4"), "wb") as f:
      f.write(frames)
  elif kind == "encoded_video":
    n, h, w, seed = frames  # decoded, this many frames come back (tested in test_data_ingest)
    rgb = np.random.default_rng(seed).integers(0, 256, (n, 2 * h, 2 * w, 3), np.uint8)
    ingest_lib._write_video(os.path.join(path, "frames.mp4"), rgb, 16)
  trajectory = np.stack([poses_lib.pose_from_yaw_pitch([0.3 * i, 0.1 * i, 1.5], 0.2 * i, 0.05 * i)
                         for i in range(max(n + 1, 2))])
  kind, *args = spec["poses"]
  npy, txt = os.path.join(path, "poses.npy"), os.path.join(path, "poses.txt")
  if kind in ("npy", "txt"):
    poses = trajectory[:max(n + args[0], 0)].copy()
    for e in args[1]:
      _edit(poses, e)
    if kind == "npy":
      np.save(npy, poses)
    else:
      np.savetxt(txt, poses.reshape(len(poses), 16), fmt="%.17g")
  elif kind == "txt_junk":
    with open(txt, "w") as f:
      f.write("\n".join(args[0]))
  elif kind == "array":
    np.save(npy, args[0])
  elif kind == "objects":
    np.save(npy, trajectory[:n].astype(object), allow_pickle=True)
  elif kind == "npz":
    with open(npy, "wb") as f:
      np.savez(f, poses=trajectory[:n])
  elif kind == "pickle":
    with open(npy, "wb") as f:
      pickle.dump(trajectory[:n], f)
  elif kind == "bytes":
    with open(npy, "wb") as f:
      f.write(args[0])
  kind, arg = spec["actions"]
  file = os.path.join(path, "actions.npy")
  derived = poses_lib.actions_from_poses(trajectory[:max(n, 1)])[0]
  if kind == "derived":
    np.save(file, derived)
  elif kind == "edit":
    _edit(derived, arg)
    np.save(file, derived)
  elif kind == "array":
    np.save(file, arg)
  elif kind == "npz":
    with open(file, "wb") as f:
      np.savez(f, actions=derived)
  return n


def _shard_files(out: str) -> list[str]:
  return [n for n in os.listdir(out) if n.startswith("shard-")] if os.path.isdir(out) else []


def test_ingest_accepts_valid_sources_and_refuses_the_rest_cleanly():
  outcomes = collections.Counter()

  @settings(max_examples=1500, **FUZZ)
  @given(source=SOURCE)
  def ingest_property(source):
    with tempfile.TemporaryDirectory() as tmp:
      src, out = os.path.join(tmp, "src"), os.path.join(tmp, "out")
      os.makedirs(src)
      _write_json(os.path.join(src, "dataset.json"), source["dataset_json"])
      counts = {f"ep{i}": _write_episode(os.path.join(src, f"ep{i}"), spec, i)
                for i, spec in enumerate(source["episodes"])}
      try:
        manifest = ingest_lib.ingest(src, out, H, W, codec="png", episodes_per_shard=1,
                                     progress=False)
      except DataError as e:
        _one_clear_line(str(e))
        assert "Fix:" in str(e), str(e)
        assert _shard_files(out) == [], "a refused ingest wrote shards"
        outcomes["refused"] += 1
        return
      outcomes["written"] += 1
      assert manifest["num_episodes"] == len(counts)
      assert manifest["num_frames"] == sum(counts.values())
      for name, n in counts.items():
        ep = shards.load_episode(out, name, verify=True)
        assert ep.frames.dtype == np.uint8 and ep.frames.shape == (n, H, W, 3)
        assert ep.poses.shape == (n, 4, 4) and np.isfinite(ep.poses).all()
        assert np.abs(ep.poses[:, :3, 3]).max() <= poses_lib.MAX_TRANSLATION
        assert ep.actions.shape == (n, 13) and np.isfinite(ep.actions).all()
        assert (ep.actions >= 0).all() and math.isfinite(ep.action_scale)
        # what the loader computes from the poses for training is finite too
        assert np.isfinite(poses_lib.actions_from_poses(ep.poses)[0]).all()
        assert np.isfinite(poses_lib.pose_features(ep.poses)).all()

  ingest_property()
  # both sides of the property were exercised (a fuzz that never succeeds proves little)
  assert outcomes["written"] >= 100 and outcomes["refused"] >= 500, outcomes


# ------------------------------------------------------------------ action scripts

NUMBER_TEXT = st.one_of(
    st.floats().map(repr), st.integers(-10, 10**7).map(str), st.text(max_size=4),
    st.sampled_from(["inf", "-inf", "nan", "NaN", "1e30", "1e400", "-1", "0", "1e-300", "3600",
                     "3600.1", "0x10", "1_0", "\u0661\u0662", "10", "10.0001", ""]))
NAMES = st.lists(st.sampled_from(scripts.ACTION_NAMES + ("fly", "", "PAN_LEFT", "static ")),
                 min_size=1, max_size=3).map("+".join)
SPEED = st.one_of(st.just(""), NUMBER_TEXT.map(lambda t: " x" + t),
                  st.sampled_from([" x", " 0.5", " x0.5 x2", " X2"]))
LINE = st.builds(lambda d, n, s, c: f"{d} {n}{s}{c}", NUMBER_TEXT, NAMES, SPEED,
                 st.sampled_from(["", "  # note", "#", "\t"]))
VALID_LINE = st.builds(
    lambda d, n, s: f"{d!r} {n}{s}", st.floats(1e-3, 600.0),
    st.lists(st.sampled_from(scripts.ACTION_NAMES), min_size=1, max_size=3).map("+".join),
    st.one_of(st.just(""), st.floats(0.0, scripts.MAX_SPEED).map(lambda v: f" x{v!r}")))
SCRIPT_TEXT = st.one_of(
    st.lists(VALID_LINE, min_size=1, max_size=6).map("\n".join),  # mostly near the limits
    st.tuples(st.lists(VALID_LINE, min_size=1, max_size=4), LINE).map(
        lambda t: "\n".join(t[0] + [t[1]])),
    st.lists(LINE, max_size=8).map("\n".join),
    st.lists(st.one_of(LINE, st.text(max_size=20)), max_size=6).map("\r\n".join),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
SCRIPT_FILE = st.one_of(st.binary(max_size=300), SCRIPT_TEXT.map(
    lambda t: t.encode("utf-8", "surrogatepass")))
FPS = st.one_of(st.sampled_from([10.0, 17.5, 24.0]), st.sampled_from([10.0, 17.5, 24.0]),
                st.floats(), st.integers(-1, 100))


def test_action_scripts_parse_within_limits_or_refuse_cleanly():
  outcomes = collections.Counter()

  @settings(max_examples=6000, **FUZZ)
  @given(kind=st.sampled_from(["text", "file"]), text=SCRIPT_TEXT, data=SCRIPT_FILE, fps=FPS)
  def script_property(kind, text, data, fps):
    try:
      if kind == "text":
        actions = scripts.parse(text, fps)
      else:
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
          f.write(data)
        try:
          actions = scripts.load(f.name, fps)
        finally:
          os.remove(f.name)
    except scripts.ScriptError as e:
      _one_clear_line(str(e))
      outcomes["refused"] += 1
      return
    outcomes["parsed"] += 1
    assert actions.dtype == np.float32 and actions.ndim == 2 and actions.shape[1] == 13
    assert 1 <= len(actions) <= max(1, round(scripts.MAX_SECONDS * fps))
    assert np.isfinite(actions).all()
    assert actions.min() >= 0 and actions.max() <= scripts.MAX_SPEED

  script_property()
  assert outcomes["parsed"] >= 500 and outcomes["refused"] >= 2000, outcomes


@pytest.mark.parametrize("text,expected", [
    ("inf static", "the duration must be positive and finite, not inf"),
    ("nan pan_left", "the duration must be positive and finite, not nan"),
    ("1e30 dolly_in", "over the limit of 3600 s"),
    ("3000 static\n700 pan_left", "line 2 ('700 pan_left'): the script reaches 3700 s here"),
    ("1 pan_left x1e30", "at most 10 (times the default magnitude), not 1e+30"),
    ("1 pan_left xinf", "at most 10 (times the default magnitude), not inf"),
    ("1 pan_left x-1", "must be non-negative"),
    ("1 static\x00", "NUL characters"),
])
def test_script_limits_are_refused_naming_the_limit(text, expected):
  with pytest.raises(scripts.ScriptError) as e:
    scripts.parse(text, 10.0)
  assert expected in str(e.value), str(e.value)
  _one_clear_line(str(e.value))


def test_binary_script_files_are_refused(tmp_path):
  path = tmp_path / "script.txt"
  path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
  with pytest.raises(scripts.ScriptError, match=r"is not UTF-8 text \(byte 0x89 at offset 0\)"):
    scripts.load(str(path), 17.5)
  path.write_bytes("\ufeff1.0 static\n".encode())  # a BOM (Windows editors) is fine
  assert scripts.load(str(path), 10.0).shape == (10, 13)
