"""relic_14b_h100: relic_14b laid out for 32 H100s (80 GB), the paper's hardware.

The same mesh as relic_14b (params, EMA and Adam state over fsdp x context, all 32 cards; each
clip's tokens over its context group of 4), offloaded block inputs and the bf16 KV cache, with
the `chunked` kernel for the full-sequence passes as well as the cache (splash is TPU-only;
cuDNN attention is faster on the cards, `--config.model.attention_impl=cudnn`, but cannot be
compiled ahead of time, so the plan below is chunked's). The teacher's global batch is 8: at
20 s (81 latent frames) a batch of 16 needs 79.9 GiB per card, over the 71.7 GiB (90% of
80 GB) the plan allows. Compiled here for `h100x32` (docs/scale.md): teacher 19.0 / 28.9 /
41.1 GiB at 21 / 41 / 81 latent frames, ODE init 68.6 GiB, distillation with the 20 s
replayed rollout 58.6 GiB per card.
"""

from relic_jax.config.base import parent_config


def get_config():
  c = parent_config(__file__, "relic_14b")
  c.name = "relic_14b_h100"
  c.model.attention_impl = "chunked"
  c.train.batch_size = 8
  return c
