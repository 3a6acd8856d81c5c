"""AdamW with linear warm-up, then cosine decay or a constant rate, and global-norm clipping."""

import ml_collections
import optax

from relic_jax.config.choices import LRSchedule


def make_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  if t.schedule == LRSchedule.COSINE:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=t.warmup_steps,
        decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.lr * t.min_lr_ratio)
  if t.schedule == LRSchedule.CONSTANT:
    if t.warmup_steps == 0:
      return optax.constant_schedule(t.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, t.lr, t.warmup_steps), optax.constant_schedule(t.lr)],
        [t.warmup_steps])
  raise ValueError(f"config.train.schedule={t.schedule!r} is unknown")


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  parts = []
  if t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  parts.append(optax.adamw(make_schedule(t), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))
  return optax.chain(*parts)
