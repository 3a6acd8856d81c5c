"""`relic generate`: a video from a start image, a caption and a scripted action sequence.

Models come from the run's workdir: the student from <workdir>/distill, else <workdir>/ode_init,
else the teacher's params (<workdir>/teacher) run block-causally with the KV cache (a teacher
trained bidirectionally is not a trained student: that fallback is for trying the pipeline
before distillation); the VAE from <workdir>/vae (and the tiny decoder from <workdir>/vae_tiny
with config.generate.decoder='tiny'); the latent normalisation from
<workdir>/teacher/latent_stats.json when the teacher trained on the latent cache.

The start image is --image (any size: centre-cropped and resized to the model's), else frame 0
of the first held-out episode of the dataset, whose caption is then the text (--text overrides).
Writes <workdir>/generate/<script>.mp4 (each frame captioned with its time and active actions)
and <script>.json (the actions, the source of each model, the timing).
"""

import os
import time

import numpy as np
from PIL import Image

from data_pipeline import loader
from data_pipeline.episode import DataError
from data_pipeline.generate import dataset_dir
from data_pipeline.images import to_rgb8
from data_pipeline.preview import frame_captions, write_video
from relic_jax.config.derive import with_teacher_rope
from relic_jax.inference import scripts as scripts_lib
from relic_jax.inference.loading import load_decoder, load_dit
from relic_jax.inference.session import Session
from relic_jax.io_utils import one_line, write_json_atomic
from relic_jax.workdir import Workdir, check_writable


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3] -> the model's size: centre crop to its aspect, then bilinear resize."""
  y0, x0, ch, cw = loader.crop_box(image.shape[0], image.shape[1], height, width)
  return np.asarray(Image.fromarray(image[y0:y0 + ch, x0:x0 + cw]).resize(
      (width, height), Image.Resampling.BILINEAR))


def start_image(cfg, workdir: str, image_path: str | None):
  """(uint8 [H, W, 3] at the model's size, caption or None)."""
  h = cfg.data.latent_height * cfg.data.spatial_stride
  w = cfg.data.latent_width * cfg.data.spatial_stride
  if image_path:
    try:
      with Image.open(image_path) as im:
        img = to_rgb8(im)  # every mode by its range: a 16-bit PNG is not clipped to white
    except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError, ...
      raise DataError(f"--image={image_path}: cannot read it as an image ({one_line(e)}). "
                      "Fix: pass a PNG or JPEG file.") from None
    caption = None
  else:
    src = loader.make_clip_source(cfg, dataset_dir(cfg, workdir), split="heldout")
    clip = src[0]
    img, caption = clip["frames"][0], loader.detokenize_caption(clip["text_tokens"])
  return fit_image(img, h, w), caption


def generate(cfg, workdir: str, script: str, image_path: str | None = None,
             text: str | None = None, out_dir: str | None = None, seed: int = 0) -> dict:
  cfg = with_teacher_rope(cfg)  # the DiT runs with the final teacher's RoPE (YaRN)
  # every input given is checked, and the output directory is tried, before anything is
  # loaded or generated: a bad one costs nothing and a generated video is never lost to a
  # bad --out (the default start image, from the run's dataset, after the model it needs)
  actions = scripts_lib.load(script, cfg.generate.fps)
  if image_path:
    image, caption = start_image(cfg, workdir, image_path)
  what = "--out" if out_dir else "the output directory <workdir>/generate"
  out_dir = out_dir or Workdir(root=workdir).generate
  check_writable(out_dir, what, keep=False)
  params, source = load_dit(cfg, workdir)
  decoder = load_decoder(cfg, workdir)
  if not image_path:
    image, caption = start_image(cfg, workdir, None)
  text = text if text is not None else (caption or "")
  if cfg.model.text_encoder == "none":
    # the model reads embeddings made elsewhere (the synthetic source's), which this command
    # cannot make; 'bytes' and 'umt5' encode the caption (Session.text_input)
    print("[relic] note: model.text_encoder='none' takes precomputed text embeddings; "
          "generating with an all-zero text context")
    text = np.zeros((cfg.data.text_len, cfg.model.text_dim), np.float32)
  bf = cfg.model.block_frames
  blocks = scripts_lib.to_blocks(actions, 4 * bf)
  frames_needed = 1 + bf * len(blocks)
  max_frames = max(cfg.memory.max_frames, frames_needed)
  session = Session(cfg, params, decoder=decoder, max_frames=max_frames)
  t0 = time.perf_counter()
  state, video0 = session.start(text, image=image, seed=seed)
  frames = [video0[0]]
  times = []
  for a in blocks:
    t1 = time.perf_counter()
    state, out = session.step(state, a)
    frames.append(out["video"][0])
    times.append(time.perf_counter() - t1)
  total = time.perf_counter() - t0
  video = np.concatenate(frames)[:1 + len(actions)]
  all_actions = np.concatenate([np.eye(13, dtype=np.float32)[12:13], actions])
  name = os.path.splitext(os.path.basename(script))[0]
  os.makedirs(out_dir, exist_ok=True)
  caps = frame_captions(all_actions, -np.ones(len(video), int), cfg.generate.fps, threshold=0.0)
  path = write_video(os.path.join(out_dir, f"{name}.mp4"), video, cfg.generate.fps, caps)
  steady = times[1:] or times
  result = {"video": path, "script": script, "frames": int(len(video)), "blocks": len(blocks),
            "dit_from": source, "decoder": cfg.generate.decoder, "memory": cfg.memory.mode,
            "text": text if isinstance(text, str) else "", "seconds": total,
            "first_block_s": times[0],
            "block_latency_s": float(np.median(steady)),
            "fps": 4 * bf / float(np.median(steady)), "actions": actions.tolist()}
  write_json_atomic(os.path.join(out_dir, f"{name}.json"), result)
  return result
