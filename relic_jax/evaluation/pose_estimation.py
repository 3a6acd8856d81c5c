"""The camera-pose estimator behind the action-following metrics.

Generated videos carry no poses, so to judge how well a model follows its actions we estimate
the camera trajectory from its frames and compare it with the true one (trajectory.rpe). Two
kinds (config.evaluate.pose_estimator.kind, choices.PoseEstimatorKind), both fitted on real
frames of the training episodes (never the held-out ones) to give the camera motion between
frames t and t + stride:

  "similarity"  (default) the zoom and shift that best map frame t onto t + stride, mapped to
                dolly / pan / tilt by least-squares slopes fitted on the training pairs
                (similarity_pose.py). Nothing to overfit: on the held-out maps' scripted
                truth it beats a static camera in translation and rotation
  "learned"     PoseNet, a small CNN trained on the frame pairs (below). It fits its
                training episodes but reads the held-out maps' scripted pans as translation

  input   frames a, b [N, H, W, 3] uint8 at the model's frame size (data.spatial_stride *
          data.latent_height x ... latent_width)
  output  b's motion in a's camera frame (data_pipeline.poses.relative_motion): translation
          [N, 3] in metres and (pan, tilt, roll) [N, 3] in radians (PoseNet learns them
          normalised by stride * generate.action_scale metres and stride * 45 deg/s /
          generate.fps radians)

  train_pose_estimator(cfg, data_dir, out_dir)  fits the configured kind and writes
                                  out_dir/params.npz (learned only), then out_dir/meta.json
  load_pose_estimator(out_dir)    -> PoseEstimator or SimilarityEstimator (`stride`, `meta`,
                                  `relative(a, b)`)
  estimate_trajectory(est, video) camera-to-world poses of frames 0, stride, 2 stride, ...

PoseNet's training draws pairs uniformly (MSE on the 6 normalised numbers, Adam with a cosine
decay), each played backwards (target: the inverse motion) or mirrored left-right (target: x,
pan and roll negated) half the time. On the tiny dataset (7 training episodes of 300 frames,
64x64) the default 1000 steps take ~25 s on 2 shared CPU cores; on unseen maps the rotation
error per pair is about half the no-motion predictor's, while translation is not learned beyond
it (too little parallax at 64x64 from 7 episodes). Measured on the default scripts' truth on
the held-out maps (4 scripts x 2 maps, stride 4): rpe_trans 0.125 (learned), 0.111
(similarity), 0.116 (static camera; the scripts with translation); rpe_rot 3.97, 0.12, 5.92.
"""

import json
import math
import os
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from PIL import Image
from tqdm import tqdm

from data_pipeline import loader
from data_pipeline import poses as poses_lib
from data_pipeline import shards as shards_lib
from relic_jax.config.choices import PoseEstimatorKind
from relic_jax.evaluation import similarity_pose
from relic_jax.evaluation import trajectory
from relic_jax.io_utils import write_json_atomic, write_npz_atomic

FORMAT = "relic_jax.pose_estimator/1"
PARAMS_FILE = "params.npz"
META_FILE = "meta.json"
ANGLE_DEG_PER_SECOND = 45.0  # the rotation normaliser: a brisk turn
APPLY_BATCH = 64             # frame pairs per call of the jitted apply (one compiled shape)
# Mirroring the image left-right negates the camera-frame x translation, pan and roll.
_MIRROR = np.array([-1.0, 1.0, 1.0, -1.0, 1.0, -1.0], np.float32)


class PoseEstimatorError(ValueError):
  """A missing, unfinished or mismatched pose estimator, or bad input to one. The message names
  the problem and the fix."""


def correlate(fa_BHWC, fb_BHWC, rx: int, ry: int):
  """Local correlation [B, H, W, (2 ry + 1) (2 rx + 1)]: the channel-mean product of a's feature
  at (y, x) with b's at (y + dy, x + dx), |dx| <= rx, |dy| <= ry (zeros outside b)."""
  h, w = fa_BHWC.shape[1:3]
  fb = jnp.pad(fb_BHWC, ((0, 0), (ry, ry), (rx, rx), (0, 0)))
  return jnp.stack([(fa_BHWC * fb[:, ry + dy:ry + dy + h, rx + dx:rx + dx + w]).mean(-1)
                    for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)], -1)


def space_to_depth(x_BHWC):
  """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 4C]: each 2x2 block of pixels becomes one pixel
  (an odd size is padded with zeros)."""
  x = jnp.pad(x_BHWC, ((0, 0), (0, x_BHWC.shape[1] % 2), (0, x_BHWC.shape[2] % 2), (0, 0)))
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


class Down(nn.Module):
  """Halves the resolution: a 2x2 conv over 2x2 pixel blocks, so a 4x4 window at stride 2.
  (Not a strided conv: its input gradient, a base-dilated conv, is ~50x slower in XLA:CPU
  at low optimisation levels, which the tests use.)"""
  features: int

  @nn.compact
  def __call__(self, x_BHWC):
    return nn.relu(nn.Conv(self.features, (2, 2), name="conv")(space_to_depth(x_BHWC)))


class PoseNet(nn.Module):
  """Two frames [B, H, W, 3] uint8 -> the normalised motion from the first to the second
  [B, 6].

  A shared encoder gives each frame (average-pooled to half size) features at 1/4 and 1/8 of
  the frame size; the head sees only their local correlations (+-8 pixels at 1/4, for small
  motions; +-32 pixels horizontally at 1/8, for fast pans) and pixel coordinates, never the
  frames' appearance, so it learns motion rather than memorising the few training scenes. (A
  CNN over the two frames concatenated on channels fitted the training pairs and did far
  worse on new maps; full resolution tripled the time for little gain.)"""
  width: int

  @nn.compact
  def __call__(self, a_BHWC, b_BHWC):
    w, n = self.width, a_BHWC.shape[0]
    x = jnp.concatenate([a_BHWC, b_BHWC], 0).astype(jnp.float32)
    # Per-frame standardisation: the maps range from near black to bright.
    x = (x - x.mean((1, 2, 3), keepdims=True)) / (x.std((1, 2, 3), keepdims=True) + 1.0)
    x = space_to_depth(x)
    x = x.reshape(x.shape[:3] + (4, 3)).mean(3)  # 2x2 average pool
    fine = nn.relu(nn.Conv(max(8, w // 4), (4, 4), strides=2, name="enc_fine")(x))
    coarse = nn.Conv(16, (1, 1), name="proj_coarse")(Down(w, name="enc_coarse")(fine))
    k_fine = correlate(fine[:n], fine[n:], 2, 2)
    k_coarse = correlate(coarse[:n], coarse[n:], 4, 1)
    h, wd = k_fine.shape[1:3]
    yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, wd), indexing="ij")
    coords = jnp.broadcast_to(jnp.stack([yy, xx], -1), (n, h, wd, 2))
    y = Down(w, name="head_0")(jnp.concatenate([k_fine, coords], -1))
    y = Down(2 * w, name="head_1")(jnp.concatenate([y, k_coarse], -1))
    y = Down(4 * w, name="head_2")(y)
    y = nn.relu(nn.Dense(4 * w, name="hidden")(y.reshape(n, -1)))
    return nn.Dense(6, name="out")(y)


# ------------------------------------------------------------------ settings and data


def settings_of(cfg: ml_collections.ConfigDict, data_dir: str) -> dict:
  """Everything a trained estimator depends on: config.evaluate.pose_estimator, the frame size,
  the normalisers, the held-out split and the dataset (its manifest's config hash)."""
  pe, d = cfg.evaluate.pose_estimator, cfg.data
  if pe.stride < 1 or pe.steps < 1 or pe.batch_size < 1 or pe.width < 1:
    raise PoseEstimatorError(
        f"config.evaluate.pose_estimator has stride={pe.stride}, steps={pe.steps}, batch_size="
        f"{pe.batch_size}, width={pe.width}. Fix: set each to a positive integer.")
  h, w = d.spatial_stride * d.latent_height, d.spatial_stride * d.latent_width
  manifest = shards_lib.read_manifest(data_dir)
  if pe.kind not in PoseEstimatorKind.values():
    raise PoseEstimatorError(f"config.evaluate.pose_estimator.kind={pe.kind!r} is unknown. "
                             f"Fix: use one of {PoseEstimatorKind.values()}.")
  settings = {"kind": str(pe.kind), "stride": int(pe.stride), "height": int(h),
              "frame_width": int(w), "heldout_episodes": int(d.heldout_episodes),
              "dataset": str(manifest.get("config_hash", "")),
              "dataset_episodes": int(manifest["num_episodes"])}
  if pe.kind == PoseEstimatorKind.LEARNED:  # what only the CNN's training depends on
    settings.update({
        "width": int(pe.width), "steps": int(pe.steps), "batch_size": int(pe.batch_size),
        "lr": float(pe.lr), "seed": int(pe.seed),
        "translation_norm": float(pe.stride * cfg.generate.action_scale),
        "rotation_norm": float(pe.stride * math.radians(ANGLE_DEG_PER_SECOND)
                               / cfg.generate.fps)})
  return settings


def _resize(frames, out_h: int, out_w: int) -> np.ndarray:
  """Centre crop to the output aspect and bilinear resize, as loader.ClipAugment."""
  h, w = frames.shape[1:3]
  y0, x0, ch, cw = loader.crop_box(h, w, out_h, out_w)
  if (ch, cw, y0, x0) == (out_h, out_w, 0, 0):
    return frames
  return np.stack([np.asarray(Image.fromarray(f[y0:y0 + ch, x0:x0 + cw]).resize(
      (out_w, out_h), Image.Resampling.BILINEAR)) for f in frames])


def read_episodes(cfg: ml_collections.ConfigDict, data_dir: str, split: str,
                  stride: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(frames [F, H, W, 3] uint8 at the model's size, camera [F, 4, 4]) per episode of a split.

  Read as clips of stride + 1 frames starting every stride frames, which tile each episode
  with one frame of overlap (so every frame is decoded about once); the last (F - 1) % stride
  frames of an episode are left out."""
  d = cfg.data
  src = loader.ClipSource(data_dir, stride + 1, stride, d.text_len, d.verify_checksums, split,
                          d.heldout_episodes)
  by_episode = {}
  for i in range(len(src)):
    clip = src[i]
    by_episode.setdefault(int(clip["episode"]), []).append(clip)
  out_h, out_w = d.spatial_stride * d.latent_height, d.spatial_stride * d.latent_width
  episodes = []
  for e in sorted(by_episode):
    clips = sorted(by_episode[e], key=lambda c: int(c["start"]))
    frames = np.concatenate([c["frames"][:-1] for c in clips] + [clips[-1]["frames"][-1:]])
    camera = np.concatenate([c["camera"][:-1] for c in clips] + [clips[-1]["camera"][-1:]])
    episodes.append((_resize(frames, out_h, out_w), camera))
  return episodes


def pair_targets(camera, stride: int) -> tuple[np.ndarray, np.ndarray]:
  """Motions of every pair (t, t + stride) of one episode's poses [F, 4, 4]: forward (t to
  t + stride) and backward, each [F - stride, 6] = (translation, pan, tilt, roll)."""
  a, b = camera[:-stride], camera[stride:]

  def motion(x, y):
    dp, ang = poses_lib.relative_motion(np.stack([x, y], 1).reshape(-1, 4, 4))  # x0 y0 x1 ...
    return np.concatenate([dp[::2], ang[::2]], -1)  # the (x_i, y_i) pairs
  return motion(a, b), motion(b, a)


def _pairs(episodes, stride: int, norm: np.ndarray):
  """All frames concatenated [F, H, W, 3], the pairs' frame indices [P, 2] and normalised
  forward and backward targets [P, 6]."""
  frames, index, fwd, bwd, offset = [], [], [], [], 0
  for f, cam in episodes:
    n = len(f) - stride
    if n > 0:
      t = np.arange(n)
      index.append(np.stack([t, t + stride], 1) + offset)
      tf, tb = pair_targets(cam, stride)
      fwd.append(tf / norm)
      bwd.append(tb / norm)
    frames.append(f)
    offset += len(f)
  if not index:
    raise PoseEstimatorError(f"no episode has more than stride={stride} frames. Fix: generate "
                             "longer episodes or lower config.evaluate.pose_estimator.stride.")
  return (np.concatenate(frames), np.concatenate(index).astype(np.int32),
          np.concatenate(fwd).astype(np.float32), np.concatenate(bwd).astype(np.float32))


# ------------------------------------------------------------------ training


def _loss(params, model, frames, index, fwd, bwd, key, batch_size):
  k_pair, k_rev, k_flip = jax.random.split(key, 3)
  i = jax.random.randint(k_pair, (batch_size,), 0, index.shape[0])
  rev = jax.random.bernoulli(k_rev, 0.5, (batch_size,))
  flip = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
  ia = jnp.where(rev, index[i, 1], index[i, 0])
  ib = jnp.where(rev, index[i, 0], index[i, 1])
  target = jnp.where(rev[:, None], bwd[i], fwd[i])
  target = jnp.where(flip[:, None], target * _MIRROR, target)
  mirror = lambda x: jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  pred = model.apply({"params": params}, mirror(frames[ia]), mirror(frames[ib]))
  return jnp.mean((pred - target) ** 2)


def _make_step(model, optimizer, batch_size):
  def step(params, opt_state, frames, index, fwd, bwd, key):
    loss, grads = jax.value_and_grad(_loss)(params, model, frames, index, fwd, bwd, key,
                                            batch_size)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))


def _check_existing(out_dir: str, settings: dict) -> dict | None:
  """The finished estimator's meta if out_dir holds one trained with these settings; None if
  it holds none; PoseEstimatorError if it holds one trained otherwise."""
  path = os.path.join(out_dir, META_FILE)
  params = settings["kind"] != PoseEstimatorKind.LEARNED or os.path.exists(
      os.path.join(out_dir, PARAMS_FILE))
  if not (os.path.exists(path) and params):
    return None
  meta = _read_meta(out_dir)
  old = meta.get("settings", {})
  diff = [f"{k}={old.get(k)!r} (now {v!r})" for k, v in settings.items() if old.get(k) != v]
  if diff:
    raise PoseEstimatorError(
        f"{out_dir} holds a pose estimator trained with other settings: {', '.join(diff)}. "
        "Fix: delete that directory to retrain with the current config, or restore the "
        "settings it was trained with.")
  return meta


def train_pose_estimator(cfg: ml_collections.ConfigDict, data_dir: str, out_dir: str,
                         progress: bool = True) -> dict:
  """Trains the estimator on frame pairs (t, t + stride) of the training episodes in data_dir
  and writes out_dir/params.npz and out_dir/meta.json (last, marking it finished). Returns the
  meta: settings, normalisers, loss_first / loss_final (the mean of the last 5% of steps),
  seconds, and `validate` on the held-out episodes (None without any). An estimator already
  finished there with the same settings is kept, not retrained; one trained with other
  settings raises PoseEstimatorError."""
  settings = settings_of(cfg, data_dir)
  done = _check_existing(out_dir, settings)
  if done is not None:
    return done
  if settings["kind"] == PoseEstimatorKind.SIMILARITY:
    return _fit_similarity(cfg, data_dir, out_dir, settings)
  start = time.time()
  s = settings["stride"]
  norm = np.array([settings["translation_norm"]] * 3 + [settings["rotation_norm"]] * 3)
  episodes = read_episodes(cfg, data_dir, "train", s)
  frames, index, fwd, bwd = _pairs(episodes, s, norm)
  model = PoseNet(settings["width"])
  key_init, key_data = jax.random.split(jax.random.key(settings["seed"]))
  dummy = jnp.zeros((1, settings["height"], settings["frame_width"], 3), jnp.uint8)
  params = model.init(key_init, dummy, dummy)["params"]
  optimizer = optax.adam(optax.cosine_decay_schedule(settings["lr"], settings["steps"]))
  opt_state = optimizer.init(params)
  step_fn = _make_step(model, optimizer, settings["batch_size"])
  data = tuple(jnp.asarray(x) for x in (frames, index, fwd, bwd))
  bar = None
  if progress:
    bar = tqdm(total=settings["steps"], unit="step", dynamic_ncols=True,
               desc="pose estimator")
  losses = []
  for step in range(settings["steps"]):
    params, opt_state, loss = step_fn(params, opt_state, *data,
                                      jax.random.fold_in(key_data, step))
    losses.append(loss)
    if (step + 1) % 50 == 0 or step + 1 == settings["steps"]:
      last = float(loss)
      if not math.isfinite(last):
        raise PoseEstimatorError(
            f"the pose estimator's loss became {last} by step {step + 1}. Fix: lower "
            f"config.evaluate.pose_estimator.lr (now {settings['lr']}).")
      if bar is not None:
        bar.update(step + 1 - bar.n)
        bar.set_postfix(loss=f"{last:.4f}")
  if bar is not None:
    bar.close()
  losses = np.asarray(jax.device_get(losses), np.float64)
  train_seconds = time.time() - start
  tail = max(1, len(losses) // 20)
  meta = {"format": FORMAT, "kind": settings["kind"], "settings": settings, "stride": s,
          "frame_size": [settings["height"], settings["frame_width"]],
          "normalisers": {"translation_m": settings["translation_norm"],
                          "rotation_rad": settings["rotation_norm"]},
          "steps": settings["steps"], "train_episodes": len(episodes),
          "train_pairs": int(len(index)), "loss_first": float(losses[0]),
          "loss_final": float(losses[-tail:].mean()), "train_seconds": train_seconds}
  os.makedirs(out_dir, exist_ok=True)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  write_npz_atomic(os.path.join(out_dir, PARAMS_FILE), **{k: np.asarray(v)
                                                           for k, v in flat.items()})
  est = PoseEstimator(params, meta, _make_apply(settings["width"]))
  meta["validation"] = None
  if settings["heldout_episodes"] > 0:
    meta["validation"] = validate(est, read_episodes(cfg, data_dir, "heldout", s))
  meta["seconds"] = time.time() - start
  write_json_atomic(os.path.join(out_dir, META_FILE), meta)
  return meta


def _fit_similarity(cfg, data_dir: str, out_dir: str, settings: dict) -> dict:
  """The "similarity" kind: features of every training pair (t, t + stride), the calibration
  fitted on them, validation on the held-out episodes; writes out_dir/meta.json."""
  start = time.time()
  s = settings["stride"]
  episodes = [(f, cam) for f, cam in read_episodes(cfg, data_dir, "train", s) if len(f) > s]
  if not episodes:
    raise PoseEstimatorError(f"no episode has more than stride={s} frames. Fix: generate "
                             "longer episodes or lower config.evaluate.pose_estimator.stride.")
  feats = np.concatenate([similarity_pose.features(f[:-s], f[s:]) for f, _ in episodes])
  targets = np.concatenate([pair_targets(cam, s)[0] for _, cam in episodes])
  meta = {"format": FORMAT, "kind": settings["kind"], "settings": settings, "stride": s,
          "frame_size": [settings["height"], settings["frame_width"]],
          "calibration": similarity_pose.calibrate(feats, targets),
          "train_episodes": len(episodes), "train_pairs": int(len(feats)),
          "train_seconds": time.time() - start}
  meta["validation"] = None
  if settings["heldout_episodes"] > 0:
    meta["validation"] = validate(SimilarityEstimator(meta),
                                  read_episodes(cfg, data_dir, "heldout", s))
  meta["seconds"] = time.time() - start
  os.makedirs(out_dir, exist_ok=True)
  write_json_atomic(os.path.join(out_dir, META_FILE), meta)
  return meta


# ------------------------------------------------------------------ using it


def _check_pair(meta: dict, a, b) -> tuple[np.ndarray, np.ndarray]:
  """Frames a, b as arrays, or PoseEstimatorError naming what is wrong with them."""
  a, b = np.asarray(a), np.asarray(b)
  h, w = meta["frame_size"]
  for name, x in (("a", a), ("b", b)):
    if x.ndim != 4 or x.shape[1:] != (h, w, 3) or x.dtype != np.uint8:
      raise PoseEstimatorError(
          f"frames {name} are {x.dtype} {list(x.shape)}; the estimator takes uint8 [N, {h}, "
          f"{w}, 3]. Fix: pass RGB frames at the model's size as uint8 (from [-1, 1] floats: "
          "np.clip((x + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)).")
  if len(a) != len(b):
    raise PoseEstimatorError(f"frames a ({len(a)}) and b ({len(b)}) differ in number. Fix: "
                             "pass one b per a.")
  return a, b


def _make_apply(width: int):
  model = PoseNet(width)
  return jax.jit(lambda params, a, b: model.apply({"params": params}, a, b))


class PoseEstimator(NamedTuple):
  """A trained estimator: params, its meta (meta.json) and the jitted network apply."""
  params: dict
  meta: dict
  apply: object

  @property
  def stride(self) -> int:
    return int(self.meta["stride"])

  def relative(self, a, b) -> tuple[np.ndarray, np.ndarray]:
    """Frames a, b [N, H, W, 3] uint8 (the model's size) -> b's motion in a's camera frame:
    translation [N, 3] (metres) and (pan, tilt, roll) [N, 3] (radians)."""
    a, b = _check_pair(self.meta, a, b)
    out = np.zeros((len(a), 6), np.float64)
    for i in range(0, len(a), APPLY_BATCH):  # padded to one fixed shape: one compilation
      n = min(APPLY_BATCH, len(a) - i)
      pad = ((0, APPLY_BATCH - n), (0, 0), (0, 0), (0, 0))
      y = self.apply(self.params, np.pad(a[i:i + n], pad), np.pad(b[i:i + n], pad))
      out[i:i + n] = np.asarray(y)[:n]
    norm = self.meta["normalisers"]
    return out[:, :3] * norm["translation_m"], out[:, 3:] * norm["rotation_rad"]


class SimilarityEstimator(NamedTuple):
  """The "similarity" kind: its meta (meta.json, with the calibration)."""
  meta: dict

  @property
  def stride(self) -> int:
    return int(self.meta["stride"])

  def relative(self, a, b) -> tuple[np.ndarray, np.ndarray]:
    """As PoseEstimator.relative: translation [N, 3] (metres; dolly only) and (pan, tilt,
    roll) [N, 3] (radians; roll 0)."""
    a, b = _check_pair(self.meta, a, b)
    return similarity_pose.motion(similarity_pose.features(a, b), self.meta["calibration"])


def _read_meta(out_dir: str) -> dict:
  try:
    with open(os.path.join(out_dir, META_FILE)) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise PoseEstimatorError(f"cannot read {os.path.join(out_dir, META_FILE)} ({e}). Fix: "
                             "delete that directory and train the estimator again.") from e
  if meta.get("format") != FORMAT:
    raise PoseEstimatorError(f"{out_dir} holds no pose estimator of format {FORMAT} (found "
                             f"{meta.get('format')!r}). Fix: delete it and train again.")
  return meta


def load_pose_estimator(out_dir: str) -> "PoseEstimator | SimilarityEstimator":
  """The finished estimator in out_dir (written by train_pose_estimator), of its kind."""
  if not os.path.exists(os.path.join(out_dir, META_FILE)):
    raise PoseEstimatorError(
        f"no finished pose estimator in {out_dir} ({META_FILE} is missing). Fix: train it "
        "first: the pipeline's pose_estimator stage, or train_pose_estimator(cfg, data_dir, "
        "out_dir).")
  meta = _read_meta(out_dir)
  if meta.get("kind") == PoseEstimatorKind.SIMILARITY:
    return SimilarityEstimator(meta)
  width, (h, w) = meta["settings"]["width"], meta["frame_size"]
  dummy = jnp.zeros((1, h, w, 3), jnp.uint8)
  want = jax.eval_shape(lambda: PoseNet(width).init(jax.random.key(0), dummy, dummy))["params"]
  want = traverse_util.flatten_dict(want, sep="/")
  path = os.path.join(out_dir, PARAMS_FILE)
  try:
    with np.load(path) as f:
      flat = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise PoseEstimatorError(f"cannot read {path} ({e}). Fix: delete {out_dir} and train the "
                             "estimator again.") from e
  shapes = {k: tuple(v.shape) for k, v in flat.items()}
  if shapes != {k: tuple(v.shape) for k, v in want.items()}:
    raise PoseEstimatorError(f"{path} does not hold the parameters its meta.json describes "
                             f"(width {width}, frames {h}x{w}). Fix: delete {out_dir} and train "
                             "the estimator again.")
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
  return PoseEstimator(params, meta, _make_apply(width))


def chain(translation, angles) -> np.ndarray:
  """Camera-to-world poses [K + 1, 4, 4] from K relative motions (translation [K, 3] in the
  earlier frame's camera axes, (pan, tilt, roll) [K, 3]), the first the identity; the same
  integration as poses.integrate_actions."""
  q = poses_lib.compose_yxz(np.asarray(angles, np.float64).reshape(-1, 3))
  dp = np.asarray(translation, np.float64).reshape(-1, 3)
  poses = np.tile(np.eye(4), (len(dp) + 1, 1, 1))
  for k in range(len(dp)):
    poses[k + 1, :3, 3] = poses[k, :3, 3] + poses[k, :3, :3] @ dp[k]
    poses[k + 1, :3, :3] = poses[k, :3, :3] @ q[k]
  return poses


def estimate_trajectory(est, frames) -> np.ndarray:
  """Video [N, H, W, 3] uint8 -> camera-to-world poses [1 + (N - 1) // stride, 4, 4] of frames
  0, stride, 2 stride, ..., the first the identity, chaining the estimated motions. Compare
  with the true poses[::stride][:len(result)]."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or len(frames) < 1:
    raise PoseEstimatorError(f"the video has shape {list(frames.shape)}; expected [N, H, W, 3] "
                             "with N >= 1. Fix: pass the frames of one video.")
  keys = frames[::est.stride]
  translation, angles = est.relative(keys[:-1], keys[1:])
  return chain(translation, angles)


def _rotation_error_deg(ang_est, ang_true) -> np.ndarray:
  r = np.swapaxes(poses_lib.compose_yxz(ang_est), -1, -2) @ poses_lib.compose_yxz(ang_true)
  return trajectory.rotation_angle_deg(r)


def validate(est, episodes) -> dict:
  """The estimator against the trivial no-motion predictor on held-out episodes (frames,
  camera): per pair (t, t + stride), the mean translation error (metres) and rotation error
  (degrees); per episode, the RPE (trajectory.rpe, delta 1) of the chained trajectory of frames
  0, stride, ... after Sim(3) alignment, averaged over episodes."""
  s = est.stride
  t_err, r_err, t0_err, r0_err, rpes, rpes0 = [], [], [], [], [], []
  for frames, camera in episodes:
    if len(frames) <= s:
      continue
    fwd, _ = pair_targets(camera, s)
    dp, ang = est.relative(frames[:-s], frames[s:])
    t_err.append(np.linalg.norm(dp - fwd[:, :3], axis=-1))
    r_err.append(_rotation_error_deg(ang, fwd[:, 3:]))
    t0_err.append(np.linalg.norm(fwd[:, :3], axis=-1))
    r0_err.append(_rotation_error_deg(np.zeros_like(ang), fwd[:, 3:]))
    ref = poses_lib.relative_to_first(camera[::s])
    if len(ref) >= 3:
      rpes.append(trajectory.rpe(estimate_trajectory(est, frames), ref))
      rpes0.append(trajectory.rpe(np.tile(np.eye(4), (len(ref), 1, 1)), ref))
  if not t_err:
    return None
  mean = lambda xs: float(np.concatenate(xs).mean())
  avg = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs else None
  return {"episodes": len(t_err), "pairs": int(sum(len(x) for x in t_err)),
          "trans_err_m": mean(t_err), "rot_err_deg": mean(r_err),
          "no_motion_trans_err_m": mean(t0_err), "no_motion_rot_err_deg": mean(r0_err),
          "rpe_trans": avg(rpes, "rpe_trans"), "rpe_rot": avg(rpes, "rpe_rot"),
          "no_motion_rpe_trans": avg(rpes0, "rpe_trans"),
          "no_motion_rpe_rot": avg(rpes0, "rpe_rot")}
