"""relic_14b_h100: relic_14b laid out for 32 H100s (80 GB), the paper's hardware.

relic_14b's offloaded block inputs and bf16 KV cache, with the `chunked` kernel for the
full-sequence passes as well as the cache (splash is TPU-only; cuDNN attention is faster on the
cards, `--config.model.attention_impl=cudnn`, but cannot be compiled ahead of time, so the plan
below is chunked's), and its own mesh: fsdp 8 x context 2 x tensor 2 (params, EMA and Adam
state over all 32 cards: "embed" over fsdp x context, heads and FFN over tensor; each clip's
tokens over its context pair, its heads over its tensor pair). relic_14b's context 4 left ODE
init at 72.7 GiB per card once RELIC's conditioning was in (over the 71.7 GiB, 90% of 80 GB,
the plan allows): the student's blocks attend to the whole cache, whose keys and values every
context shard gathers, so context parallelism does not shrink them and tensor parallelism
(heads) does. The teacher's global batch is 8 (at 20 s a batch of 16 needed 79.9 GiB per card
with context 4). Compiled here for `h100x32` (docs/scale.md), per card: teacher 20.4 / 28.7 /
44.8 GiB at 21 / 41 / 81 latent frames, ODE init 69.2 GiB, distillation with the 20 s replayed
rollout 62.6 GiB.
"""

from relic_jax.config.base import parent_config


def get_config():
  c = parent_config(__file__, "relic_14b")
  c.name = "relic_14b_h100"
  c.model.attention_impl = "chunked"
  c.mesh.shape = {"data": 1, "fsdp": -1, "context": 2, "tensor": 2}
  c.train.batch_size = 8
  return c
