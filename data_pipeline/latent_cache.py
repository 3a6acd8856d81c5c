"""The latent cache: every training clip encoded once by the VAE, in tensorstore zarr arrays.

Layout of a cache directory (config.data.latent_dir, or <workdir>/latents):
  cache.json      what the cache was built from: the VAE fingerprint, the dataset's config hash
                  and episode count, the clip definition (frames, latent frames T =
                  derive.cache_frames(cfg), the horizons derive.cache_horizons(cfg), size,
                  stride, palindrome probability, seed), the number of clips, the alignment
                  rule, and once complete the per-channel latent mean and std (`latent_stats`)
  latents/        [N, T, h, w, C] float32, one zarr chunk per clip (the VAE's latent mean)
  actions/        [N, F, 13] float32, per video frame (F = 1 + 4 (T - 1))
  poses/          [N, F, 12] float32, per video frame, relative to the clip's first frame
  camera/         [N, F, 4, 4] float64, our convention (data_pipeline/poses.py); float64 so that
                  a prefix's actions and poses are recomputed exactly as the clip loader does
  action_scale/   [N] float32: the whole clip's metres per action unit (its mean displacement)
  text_tokens/    [N, L] int32, byte tokens of the episode's caption
  (with a text encoder, model.text_encoder='umt5':)
  text_embeddings/ [U, L, D] bfloat16: the embedding of each distinct caption of the dataset,
                  row 0 the empty caption's (the null text of caption dropout and guidance)
  text_id/        [N] int32: the row of text_embeddings holding clip i's caption
  captions.json   the U captions, in row order
  clip/           [N, 3] int32: episode index, start frame, palindrome turn (-1 = none)
  done/           [N] uint8: 1 once every array of clip i is written

Long clips, read in prefixes: the cache is built once at the longest horizon any stage reads
(T = derive.cache_frames(cfg): the teacher's curriculum, the ODE-init clip, the longest
distillation rollout). The VAE is causal, so the first 1 + k latents of a clip are the encoding
of its first 1 + 4k frames: a stage of T' <= T latent frames reads latents[:T'] and camera[:F']
(F' = 1 + 4 (T' - 1)), and its actions, action scale and poses are recomputed from that camera
(clips.clip_inputs), as the clip loader computes them for a clip of F' frames.

Alignment of the 4x temporal stride: latent frame 0 encodes video frame 0 alone; latent frame k
(k >= 1) encodes video frames 4k-3 .. 4k. Actions and poses stay per video frame; the DiT's
condition encoders patchify them by 4 the same way (frame 0 alone).

Clip i is cut and augmented as the clip loader does (data_pipeline/clips.py), with its own
generator seeded by (config.seed, i): the palindrome with probability data.palindrome_prob,
its turn drawn for one of the horizons (clips.ClipAugment's turn_frames) so that every prefix
is a forward clip, a palindrome or a multi-turn one; the centre crop and resize. So the cache
holds a fixed, deterministic augmentation of every clip. Clips start every
data.cache_clip_stride video frames (0: data.clip_stride).

Captions, with a text encoder: each distinct caption is encoded once, before the first clip
(a dataset has far fewer captions than clips), and stored in bfloat16, the DiT's compute
dtype; cache.json is written after them, so an interrupted table is rebuilt. The
text entry of cache.json names the encoder (its params and tokenizer) or "bytes".

Resumable and atomic: a clip's `done` flag is written after all its arrays, so an interrupted
`relic encode` redoes only clips without the flag. A cache built from another VAE checkpoint,
another dataset or another clip definition is detected from cache.json and rebuilt.
"""

import json
import os
import shutil
import time
from typing import Callable

import numpy as np
from tqdm import tqdm

from data_pipeline import clips as clips_lib
from data_pipeline import shards as shards_lib
from data_pipeline.episode import DataError
from relic_jax.config.choices import Crop
from relic_jax.config.derive import cache_frames, cache_horizons
from relic_jax.io_utils import write_json_atomic

FORMAT = "relic_jax.latent_cache/2"
ALIGNMENT = ("latent frame 0 <- video frame 0; latent frame k >= 1 <- video frames 4k-3..4k; "
             "actions and poses per video frame")
ARRAYS = ("latents", "actions", "poses", "camera", "action_scale", "text_tokens", "clip",
          "done")
TEXT_ARRAYS = ("text_embeddings", "text_id")  # with a text encoder only
CAPTIONS = "captions.json"
BYTES = "bytes"  # cache.json's text entry without a text encoder (byte tokens only)

CACHE_META = "cache.json"  # what the cache was built from; its presence marks a cache


def _spec(path: str, shape=None, chunks=None, dtype=None) -> dict:
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": path}}
  if shape is not None:
    spec |= {"metadata": {"shape": list(shape), "chunks": list(chunks), "dtype": dtype,
                          "compressor": {"id": "zstd", "level": 1}},
             "create": True, "delete_existing": True}
  return spec


def _open(path: str, **kw):
  # tensorstore: a heavy optional dependency (slow to import), only when a cache is opened
  import tensorstore as ts  # noqa: PLC0415
  return ts.open(_spec(path, **kw)).result()


def cache_stride(cfg) -> int:
  """Video frames between the starts of the cache's clips: data.cache_clip_stride, or
  data.clip_stride when it is 0."""
  d = cfg.data
  stride = d.cache_clip_stride
  if stride < 0:
    raise DataError(f"config.data.cache_clip_stride={stride} is negative. Fix: use 0 (= "
                    "data.clip_stride) or a positive number of video frames.")
  return int(stride or d.clip_stride)


def cache_description(cfg, data_dir: str, vae_fingerprint: str, text: str = BYTES) -> dict:
  """What the cache must match: the VAE, the data and the clip definition. The clip length is
  derive.cache_frames(cfg) and the horizons derive.cache_horizons(cfg), not the stage's
  data.latent_frames: a stage reading a shorter prefix finds the cache as fresh as encode
  left it."""
  manifest = shards_lib.read_manifest(data_dir)
  d = cfg.data
  t = cache_frames(cfg)
  return {"format": FORMAT, "vae": vae_fingerprint,
          "data": {"config_hash": manifest["config_hash"],
                   "num_episodes": manifest["num_episodes"]},
          "clip": {"frames": clips_lib.clip_frames(t, cfg.model.cond_frames_per_latent),
                   "latent_frames": t, "horizons": cache_horizons(cfg),
                   "frames_per_latent": cfg.model.cond_frames_per_latent,
                   "height": d.latent_height * d.spatial_stride,
                   "width": d.latent_width * d.spatial_stride, "stride": cache_stride(cfg),
                   "palindrome_prob": d.palindrome_prob, "text_len": d.text_len,
                   "seed": cfg.seed},
          "text": text, "alignment": ALIGNMENT}


def _difference(old: dict, new: dict) -> str:
  if old.get("vae") != new["vae"]:
    return f"the VAE checkpoint changed ({old.get('vae')} -> {new['vae']})"
  if old.get("text", BYTES) != new.get("text", BYTES):
    return f"the text encoder changed ({old.get('text', BYTES)} -> {new.get('text', BYTES)})"
  for key in ("data", "clip", "format"):
    if old.get(key) != new[key]:
      return f"the {key} changed ({old.get(key)} -> {new[key]})"
  return ""


def build(cfg, data_dir: str, cache_dir: str, encode_fn: Callable[[np.ndarray], np.ndarray],
          vae_fingerprint: str, latent_channels: int, batch_size: int = 4,
          progress: bool = True, stop_after: int | None = None,
          stats: dict | None = None, text_fn: Callable[[list[str]], np.ndarray] | None = None,
          text_fingerprint: str = BYTES) -> dict:
  """Encodes every clip not yet in the cache. encode_fn: frames uint8 [B, F, H, W, 3] ->
  latents [B, T, h, w, C] float32. Returns a summary (clips encoded now, skipped, seconds,
  whether and why an old cache was rebuilt, the clips' latent frames and horizons). The last
  batch is padded to batch_size (its last clip repeated, the extra latents dropped), so a
  jitted encode_fn compiles once. stats: the per-channel latent {"mean", "std"} to normalise
  by (a pretrained VAE's own, as Wan's config carries them); None: computed from the cache.
  stop_after: stop after this many batches (tests of interruption). text_fn: captions ->
  embeddings float32 [n, L, D] (a text encoder, named by text_fingerprint), or None (byte
  tokens only)."""
  desc = cache_description(cfg, data_dir, vae_fingerprint, text_fingerprint)
  meta_path = os.path.join(cache_dir, CACHE_META)
  rebuilt = ""
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    rebuilt = _difference(old, {**desc, "num_clips": old.get("num_clips")})
  d = cfg.data
  c = desc["clip"]
  source = clips_lib.make_clip_source(cfg, data_dir, latent_frames=c["latent_frames"],
                                      stride=c["stride"])
  n = len(source)
  t, h, w = c["latent_frames"], d.latent_height, d.latent_width
  shapes = {"latents": ((n, t, h, w, latent_channels), (1, t, h, w, latent_channels), "<f4"),
            "actions": ((n, c["frames"], 13), (1, c["frames"], 13), "<f4"),
            "poses": ((n, c["frames"], 12), (1, c["frames"], 12), "<f4"),
            "camera": ((n, c["frames"], 4, 4), (1, c["frames"], 4, 4), "<f8"),
            "action_scale": ((n,), (1,), "<f4"),
            "text_tokens": ((n, d.text_len), (1, d.text_len), "<i4"),
            "clip": ((n, 3), (1, 3), "<i4"),
            "done": ((n,), (min(n, 4096),), "|u1")}
  fresh = rebuilt or not os.path.exists(meta_path)
  if fresh:
    if os.path.isdir(cache_dir):
      if os.path.exists(meta_path):
        os.remove(meta_path)
      for name in ARRAYS + TEXT_ARRAYS + (CAPTIONS,):
        path = os.path.join(cache_dir, name)
        if os.path.isfile(path):
          os.remove(path)
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(cache_dir, exist_ok=True)
    arrays = {k: _open(os.path.join(cache_dir, k), shape=s, chunks=ch, dtype=dt)
              for k, (s, ch, dt) in shapes.items()}
    if text_fn is not None:
      arrays["text_id"] = _write_captions(cfg, data_dir, cache_dir, n, text_fn)
    write_json_atomic(meta_path, {**desc, "num_clips": n})
  else:
    arrays = {k: _open(os.path.join(cache_dir, k)) for k in ARRAYS}
    if text_fn is not None:
      arrays["text_id"] = _open(os.path.join(cache_dir, "text_id"))
  done = np.asarray(arrays["done"].read().result())
  todo = np.flatnonzero(done == 0)
  augment = clips_lib.ClipAugment(
      c["height"], c["width"], d.palindrome_prob, Crop.CENTER, camera_dtype=np.float64,
      turn_frames=[clips_lib.clip_frames(k, c["frames_per_latent"]) for k in c["horizons"]])
  caption_row = _caption_rows(cache_dir, data_dir) if text_fn is not None else None
  t0 = time.perf_counter()
  bar = None
  if progress:
    bar = tqdm(total=n, initial=n - len(todo), unit="clips", dynamic_ncols=True)
  batches = 0
  for s in range(0, len(todo), batch_size):
    idx = todo[s:s + batch_size]
    clips = [augment(source[int(i)], np.random.default_rng([cfg.seed, int(i)])) for i in idx]
    frames = np.stack([x["frames"] for x in clips])
    if 0 < len(idx) < batch_size < len(todo):  # the last batch, padded: no second compile
      frames = np.concatenate([frames, np.repeat(frames[-1:], batch_size - len(idx), 0)])
    latents = np.asarray(encode_fn(frames), np.float32)[:len(idx)]
    if latents.shape != (len(idx), t, h, w, latent_channels):
      raise DataError(f"the VAE encoded clips of {frames.shape[1:]} to {latents.shape[1:]}, "
                      f"expected {(t, h, w, latent_channels)}. Fix: use a VAE whose stride "
                      "matches config.data (4x in time, spatial_stride in space).")
    futures = []
    for j, i in enumerate(idx):
      x = clips[j]
      futures += [arrays["latents"][i].write(latents[j]),
                  arrays["actions"][i].write(x["actions"]),
                  arrays["poses"][i].write(x["poses"]),
                  arrays["camera"][i].write(x["camera"]),
                  arrays["action_scale"][i].write(x["action_scale"]),
                  arrays["text_tokens"][i].write(x["text_tokens"]),
                  arrays["clip"][i].write(np.array([x["episode"], x["start"], x["turn"]],
                                                   np.int32))]
    for f in futures:
      f.result()
    if "text_id" in arrays:  # one chunk for many clips: written one at a time, as done
      for j, i in enumerate(idx):
        arrays["text_id"][i].write(np.int32(caption_row[int(clips[j]["episode"])])).result()
    for i in idx:  # after every array of the batch is written
      arrays["done"][i].write(np.uint8(1)).result()
    if bar is not None:
      bar.update(len(idx))
    batches += 1
    if stop_after is not None and batches >= stop_after:
      break
  if bar is not None:
    bar.close()
  encoded = min(len(todo), batches * batch_size)
  fixed, stats = stats, None
  if np.asarray(arrays["done"].read().result()).all():
    stats = (latent_stats(arrays["latents"]) if fixed is None else
             {"mean": list(fixed["mean"]), "std": list(fixed["std"]), "clips": 0,
              "source": fixed.get("source", "given")})
    with open(meta_path) as f:
      meta = json.load(f)
    write_json_atomic(meta_path, {**meta, "latent_stats": stats})
  return {"num_clips": n, "encoded_now": int(encoded), "skipped": int(n - len(todo)),
          "seconds": time.perf_counter() - t0, "rebuilt": rebuilt, "dir": cache_dir,
          "latent_stats": stats, "latent_frames": t, "horizons": c["horizons"]}


def _episode_captions(data_dir: str) -> list[str]:
  """Every episode's caption, in the dataset's episode order (the clips' episode index)."""
  manifest = shards_lib.read_manifest(data_dir)
  return [entry["caption"] for _, entry in shards_lib.episode_entries(manifest)]


def _write_captions(cfg, data_dir: str, cache_dir: str, num_clips: int, text_fn,
                    chunk: int = 64):
  """Encodes the dataset's distinct captions (row 0: the empty caption) into text_embeddings,
  `chunk` captions at a time (umT5-XXL's embeddings are 8 MiB a caption in float32), and
  writes captions.json; returns the created, empty text_id array [num_clips]."""
  import ml_dtypes  # noqa: PLC0415
  captions = [""] + sorted(set(_episode_captions(data_dir)) - {""})
  table = None
  for s in range(0, len(captions), chunk):
    part = captions[s:s + chunk]
    emb = np.asarray(text_fn(part), np.float32)
    if emb.ndim != 3 or emb.shape[:2] != (len(part), cfg.data.text_len):
      raise DataError(f"the text encoder gave embeddings of shape {emb.shape} for "
                      f"{len(part)} captions, expected [{len(part)}, {cfg.data.text_len}, D]. "
                      "Fix: use a text encoder that pads to config.data.text_len.")
    if emb.shape[2] != cfg.model.text_dim:
      raise DataError(f"the text encoder's embeddings are {emb.shape[2]}-d, but "
                      f"config.model.text_dim={cfg.model.text_dim}. Fix: set model.text_dim to "
                      f"{emb.shape[2]} (umT5-XXL: 4096), or use the text encoder the DiT "
                      "expects.")
    if table is None:
      table = _open(os.path.join(cache_dir, "text_embeddings"),
                    shape=(len(captions),) + emb.shape[1:], chunks=(1,) + emb.shape[1:],
                    dtype="bfloat16")
    table[s:s + len(part)].write(emb.astype(ml_dtypes.bfloat16)).result()
  write_json_atomic(os.path.join(cache_dir, CAPTIONS), captions)
  return _open(os.path.join(cache_dir, "text_id"), shape=(num_clips,),
               chunks=(min(num_clips, 4096),), dtype="<i4")


def _caption_rows(cache_dir: str, data_dir: str) -> list[int]:
  """The text_embeddings row of every episode's caption (captions.json), by episode index."""
  with open(os.path.join(cache_dir, CAPTIONS)) as f:
    row = {c: i for i, c in enumerate(json.load(f))}
  return [row[c] for c in _episode_captions(data_dir)]


def latent_stats(latents, max_clips: int = 256) -> dict:
  """Per-channel mean and std of the cached latents (over up to max_clips evenly spread clips),
  for normalising them before the DiT, (z - mean) / std, as Wan does with its own constants."""
  n = latents.shape[0]
  picks = np.unique(np.linspace(0, n - 1, min(n, max_clips)).round().astype(int))
  z = np.stack([np.asarray(latents[int(i)].read().result()) for i in picks])
  z = z.reshape(-1, z.shape[-1]).astype(np.float64)
  return {"mean": z.mean(0).tolist(), "std": np.maximum(z.std(0), 1e-6).tolist(),
          "clips": int(len(picks))}


class LatentCacheSource:
  """A grain random-access source over a complete latent cache: {"latents" [T, h, w, C],
  "actions" [F, 13], "poses" [F, 12], "camera" [F, 4, 4] float64, "action_scale" (),
  "text_tokens" [L], "clip" [3]}, and with a text encoder's table "text_embedding" [L, D]
  float32 (the clip's caption; `null_text()` is the empty caption's).

  latent_frames: read every clip's prefix of that many latent frames (T' <= the cache's T):
  latents[:T'], camera[:F'] with F' = 1 + 4 (T' - 1), and the actions, action scale and poses
  recomputed from that camera (clips.clip_inputs), as the clip loader computes them for a clip
  of F' frames. None: the whole clips."""

  def __init__(self, cache_dir: str, expected: dict | None = None,
               latent_frames: int | None = None):
    meta_path = os.path.join(cache_dir, CACHE_META)
    if not os.path.exists(meta_path):
      raise DataError(f"no latent cache at {cache_dir} (cache.json is missing). Fix: run "
                      "`relic encode` first.")
    with open(meta_path) as f:
      self.meta = json.load(f)
    if self.meta.get("format") != FORMAT:
      raise DataError(f"the latent cache at {cache_dir} has format {self.meta.get('format')!r}, "
                      f"this code reads {FORMAT!r}. Fix: re-run `relic encode`, which rebuilds "
                      "it.")
    if expected is not None:
      why = _difference(self.meta, expected)
      if why:
        raise DataError(f"the latent cache at {cache_dir} is stale: {why}. Fix: re-run "
                        "`relic encode`, which rebuilds it.")
    clip = self.meta["clip"]
    self.latent_frames = clip["latent_frames"] if latent_frames is None else int(latent_frames)
    if not 1 <= self.latent_frames <= clip["latent_frames"]:
      raise DataError(
          f"the latent cache at {cache_dir} holds clips of {clip['latent_frames']} latent "
          f"frames (horizons {clip.get('horizons')}), but {self.latent_frames} are asked for "
          "(config.data.latent_frames of this stage). Fix: re-run `relic encode` with the config "
          f"whose horizons include {self.latent_frames} (config.derive.cache_horizons: the "
          "teacher's train.horizon_curriculum, ode_init.blocks, distill.rollout_curriculum), or "
          f"read at most {clip['latent_frames']} latent frames.")
    self.video_frames = clips_lib.clip_frames(self.latent_frames, clip["frames_per_latent"])
    self._prefix = self.latent_frames < clip["latent_frames"]
    self._dir = cache_dir
    self._arrays = None
    done = np.asarray(_open(os.path.join(cache_dir, "done")).read().result())
    if not done.all():
      raise DataError(f"the latent cache at {cache_dir} is incomplete ({int(done.sum())} of "
                      f"{len(done)} clips encoded). Fix: run `relic encode` to finish it.")
    self._n = len(done)
    self.text = self.meta.get("text", BYTES)

  def null_text(self) -> np.ndarray:
    """The empty caption's embedding [L, D] float32 (row 0 of text_embeddings)."""
    if self.text == BYTES:
      raise DataError(f"the latent cache at {self._dir} holds no text embeddings (it was built "
                      "with byte captions). Fix: re-run `relic encode` with "
                      "config.model.text_encoder='umt5'.")
    table = _open(os.path.join(self._dir, "text_embeddings"))
    return np.asarray(table[0].read().result(), np.float32)

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    if self._arrays is None:
      names = ARRAYS[:-1] + (TEXT_ARRAYS if self.text != BYTES else ())
      self._arrays = {k: _open(os.path.join(self._dir, k)) for k in names}
    i, t, f = int(index), self.latent_frames, self.video_frames
    per_clip = {k: a for k, a in self._arrays.items() if k != "text_embeddings"}
    if not self._prefix:
      futures = {k: a[i].read() for k, a in per_clip.items()}
      out = {k: np.asarray(fut.result()) for k, fut in futures.items()}
    else:
      futures = {"latents": self._arrays["latents"][i, :t].read(),
                 "camera": self._arrays["camera"][i, :f].read(),
                 "text_tokens": self._arrays["text_tokens"][i].read(),
                 "clip": self._arrays["clip"][i].read()}
      if "text_id" in per_clip:
        futures["text_id"] = per_clip["text_id"][i].read()
      out = {k: np.asarray(fut.result()) for k, fut in futures.items()}
      out |= clips_lib.clip_inputs(out["camera"])
    if "text_id" in out:
      row = self._arrays["text_embeddings"][int(out["text_id"])].read().result()
      out["text_embedding"] = np.asarray(row, np.float32)
    return out
