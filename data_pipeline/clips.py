"""Video clips cut from episode shards, and their augmentation: what both the clip loader
(`loader.make_clip_iterator`, the VAE's training data) and the latent cache (`latent_cache.build`,
every clip encoded once) read.

  clip_frames          video frames of a clip of T latent frames: 1 + 4 (T - 1)
  ClipSource           grain random-access source of the clips of a dataset split
  palindrome_indices   the time-reverse augmentation's frame order (a triangle wave)
  ClipAugment          palindrome, crop and resize, then the actions and poses of the clip
  clip_inputs          a clip's actions, action scale and pose features from its camera
  make_clip_source     the ClipSource of config.data
  tokenize_caption     captions as byte tokens (and back)
"""

import math

import ml_collections
import numpy as np
from PIL import Image

from data_pipeline import poses as poses_lib
from data_pipeline import shards as shards_lib
from data_pipeline.episode import DataError
from relic_jax.config.choices import Crop


def clip_frames(latent_frames: int, temporal_stride: int = 4) -> int:
  """Video frames of a clip of `latent_frames` latents: 1 + 4k (the first frame alone)."""
  return 1 + temporal_stride * (latent_frames - 1)


def tokenize_caption(caption: str, length: int) -> np.ndarray:
  """Byte-level tokens of a caption [length] int32: UTF-8 bytes + 1, 0 = padding."""
  raw = np.frombuffer(caption.encode("utf-8")[:length], np.uint8).astype(np.int32) + 1
  return np.pad(raw, (0, length - len(raw)))


def detokenize_caption(tokens) -> str:
  """The inverse of `tokenize_caption` (padding dropped)."""
  t = np.asarray(tokens)
  return bytes((t[t > 0] - 1).astype(np.uint8)).decode("utf-8", "replace")


SPLITS = ("train", "heldout", "all")


def split_episodes(n: int, split: str, heldout: int, data_dir: str = "") -> list[int]:
  """Episode indices of a split: the last `heldout` episodes are held out (evaluation), the
  rest are for training."""
  if split not in SPLITS:
    raise DataError(f"split {split!r} is unknown. Fix: use one of {', '.join(SPLITS)}.")
  if split != "all" and not 0 <= heldout < n:
    raise DataError(f"config.data.heldout_episodes={heldout} leaves no training episode of the "
                    f"{n} in {data_dir}. Fix: hold out fewer, or generate more episodes.")
  if split == "train":
    return list(range(n - heldout))
  if split == "heldout":
    return list(range(n - heldout, n))
  return list(range(n))


class ClipSource:
  """A grain random-access source of video clips of `num_frames` consecutive frames: every
  (episode, start) with start a multiple of `stride` and the clip inside the episode.

  Element: frames [F, H, W, 3] uint8 (stored size), camera [F, 4, 4] float64 (our convention),
  caption tokens, and the clip's episode index and start frame.
  """

  def __init__(self, data_dir: str, num_frames: int, stride: int, text_len: int,
               verify: bool = True, split: str = "all", heldout_episodes: int = 0):
    manifest = shards_lib.read_manifest(data_dir)
    self._entries = shards_lib.episode_entries(manifest)
    self._reader = shards_lib.ShardReader(data_dir, manifest, verify)
    self._frames, self._text_len = num_frames, text_len
    episodes = split_episodes(len(self._entries), split, heldout_episodes, data_dir)
    self._clips = [(e, s) for e in episodes
                   for s in range(0, self._entries[e][1]["num_frames"] - num_frames + 1, stride)]
    if not self._clips:
      longest = max((entry["num_frames"] for _, entry in self._entries), default=0)
      raise DataError(f"no episode in {data_dir} is long enough for a clip of {num_frames} "
                      f"frames (the longest has {longest}). Fix: generate longer episodes "
                      "(config.data.gen.frames_per_episode) or use fewer latent frames.")

  def __len__(self) -> int:
    return len(self._clips)

  def __getitem__(self, index: int) -> dict:
    e, start = self._clips[index]
    shard, entry = self._entries[e]
    records = self._reader.read_episode(shard, entry, start, start + self._frames)
    return {"frames": np.stack([r["image"] for r in records]),
            "camera": np.stack([r["pose"] for r in records]),
            "text_tokens": tokenize_caption(entry["caption"], self._text_len),
            "episode": np.int32(e), "start": np.int32(start)}


def palindrome_indices(num_frames: int, turn: int) -> np.ndarray:
  """Frame order of the time-reverse augmentation, num_frames in all: a triangle wave over
  [0, turn], forward 0..turn, back to 0, forward again, ... For turn >= num_frames / 2 it is
  RELIC's palindrome (forward to t*, then back, once); the latent cache's shorter turns make
  its long clips bounce, so that each prefix plays forward, turns once or turns more often
  (see ClipAugment)."""
  if turn < 1:
    raise ValueError(f"palindrome_indices: turn must be >= 1, got {turn}")
  phase = np.arange(num_frames) % (2 * turn)
  return np.where(phase <= turn, phase, 2 * turn - phase)


def clip_inputs(camera) -> dict:
  """The network inputs of a clip's camera poses [F, 4, 4] (after augmentation): actions
  [F, 13] normalised by the clip's mean displacement, that scale ("action_scale", metres per
  action unit, float32) and the pose features [F, 12] relative to the clip's first frame. The
  one definition: the clip loader and every prefix read of the latent cache call it."""
  actions, scale = poses_lib.actions_from_poses(camera)
  return {"actions": actions, "poses": poses_lib.pose_features(camera),
          "action_scale": np.float32(scale)}


def crop_box(height, width, out_h, out_w, rng=None):
  """The largest out_h:out_w box inside height x width: centred, or at a random place."""
  if width * out_h > height * out_w:
    ch, cw = height, int(round(height * out_w / out_h))
  else:
    ch, cw = int(round(width * out_h / out_w)), width
  y0, x0 = (height - ch) // 2, (width - cw) // 2
  if rng is not None:
    y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
  return y0, x0, ch, cw


class ClipAugment:
  """Per clip (grain RandomMap): the palindrome augmentation with probability `palindrome_prob`
  (turn point t* ~ U[F/2, F), as RELIC), crop to the output aspect and resize to out_h x out_w,
  then the network inputs computed from the (augmented) poses (`clip_inputs`).

  turn_frames: the clip lengths (video frames) the clip will be read at, when it is read in
  prefixes (the latent cache): the turn is drawn for one of them, F_h chosen uniformly, t* ~
  U[F_h/2, F_h), and the clip bounces between frame 0 and t* (`palindrome_indices`). A prefix
  of F' frames plays forward if F' <= t* + 1, is RELIC's palindrome (one turn) if
  F' <= 2 t* + 1, and turns more than once beyond. Empty (the clip loader), or only the clip's
  own length: exactly RELIC's draw. camera_dtype: of the returned camera (the cache keeps
  float64, so that a prefix's actions are recomputed exactly)."""

  def __init__(self, out_h: int, out_w: int, palindrome_prob: float, crop: str,
               turn_frames: tuple[int, ...] = (), camera_dtype=np.float32):
    self.out_h, self.out_w, self.p, self.crop = out_h, out_w, palindrome_prob, crop
    self.turn_frames, self.camera_dtype = tuple(int(f) for f in turn_frames), camera_dtype

  def draw_turn(self, n: int, rng: np.random.Generator) -> int:
    """The palindrome turn of a clip of n frames, or -1 (none)."""
    if not (self.p > 0 and rng.random() < self.p):
      return -1
    horizons = self.turn_frames or (n,)
    f = horizons[0] if len(horizons) == 1 else horizons[int(rng.integers(len(horizons)))]
    return int(rng.integers(math.ceil(f / 2), f))

  def __call__(self, clip: dict, rng: np.random.Generator) -> dict:
    frames, camera = clip["frames"], clip["camera"]
    n = len(frames)
    turn = self.draw_turn(n, rng)
    if turn >= 0:
      order = palindrome_indices(n, turn)
      frames, camera = frames[order], camera[order]
    h, w = frames.shape[1:3]
    y0, x0, ch, cw = crop_box(h, w, self.out_h, self.out_w,
                              rng if self.crop == Crop.RANDOM else None)
    if (ch, cw) != (self.out_h, self.out_w) or (y0, x0) != (0, 0):
      frames = np.stack([np.asarray(Image.fromarray(f[y0:y0 + ch, x0:x0 + cw]).resize(
          (self.out_w, self.out_h), Image.Resampling.BILINEAR)) for f in frames])
    return {"frames": frames, **clip_inputs(camera), "camera": camera.astype(self.camera_dtype),
            "text_tokens": clip["text_tokens"], "episode": clip["episode"],
            "start": clip["start"], "turn": np.int32(turn)}


def make_clip_source(cfg: ml_collections.ConfigDict, data_dir: str, split: str = "train",
                     latent_frames: int | None = None, stride: int | None = None) -> ClipSource:
  """Clips of the training episodes (split="train": all but the last data.heldout_episodes),
  the held-out ones, or all; of data.latent_frames latent frames every data.clip_stride video
  frames unless given (the latent cache's long clips)."""
  d = cfg.data
  frames = d.latent_frames if latent_frames is None else latent_frames
  return ClipSource(data_dir, clip_frames(frames, cfg.model.cond_frames_per_latent),
                    d.clip_stride if stride is None else stride, d.text_len,
                    d.verify_checksums, split, d.heldout_episodes)
