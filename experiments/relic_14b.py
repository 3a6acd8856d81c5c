"""relic_14b: the Wan 2.1 T2V 14B backbone RELIC fine-tunes (dim 5120, FFN 13824, 40 heads,
40 layers): wan_1_3b's recipe (bf16, umT5 text, RELIC's curriculum, the student's ODE init of
7 blocks and rollouts of 7, 13 and 26 blocks; block inputs offloaded to host memory between
forward and backward, the cache's chunked kernel, the student's KV cache in bf16, ODE init and
distillation batches of 8) with the 14B dims, laid out to fit a v5p-64 at every stage
(docs/scale.md: `relic compile` on a CPU host): params, EMA and Adam state sharded over fsdp x
context (all 32 chips), each clip's tokens over its context group of 4, splash attention for
the full-sequence passes. 32 H100s: experiments/relic_14b_h100.py.

Clip: 21 latent frames of 60x104 (5 s at 480x832). RELIC's horizon curriculum
(train.horizon_curriculum) extends this to 10 s (41 latent frames) and 20 s (81), with YaRN
on the temporal RoPE (factors 41/21 and 81/21). Hardware: the paper trains on 32 H100s; plan
a v5p-64 / 32+ H100s. On a small machine only abstract shapes run (the model_stats benchmark).
"""

from relic_jax.config import DEFAULT_RULES, parent_config


def get_config():
  c = parent_config(__file__, "wan_1_3b")  # Wan 2.1's recipe and RELIC's curriculum
  c.name = "relic_14b"
  m = c.model
  m.dim, m.ffn_dim, m.num_heads, m.num_layers = 5120, 13824, 40, 40
  # measured on a v5p-64 with RELIC's conditioning (relic compile, peak per chip of 95.74 GiB;
  # docs/scale.md): the teacher at 81 latent frames (20 s), batch 16, 72.6 GiB (backbone only:
  # 65.3; batch 32 needed 102.9, too much); ODE init (22 latent frames, batch 8) 84.1 GiB;
  # distillation with the 20 s replayed rollout (26 blocks, 79 latent frames, batch 8) 88.6
  c.mesh.shape = {"data": 1, "fsdp": -1, "context": 4, "tensor": 1}
  c.mesh.rules = tuple((axis, ("fsdp", "context")) if axis == "embed" else (axis, mesh_axes)
                       for axis, mesh_axes in DEFAULT_RULES)
  m.attention_impl = "splash"  # the TPU kernel for the full-sequence passes (wan_1_3b: chunked)
  c.train.batch_size = 16
  c.train.steps = 10000      # without the curriculum; with it, each phase has its own steps
  c.train.checkpoint_every = 250
  return c
