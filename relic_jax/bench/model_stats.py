"""Model size and FLOPs from abstract shapes only (runs for 14B on a laptop).

python -m relic_jax.bench.model_stats --config=experiments/relic_14b.py --out=stats.json
"""

import jax
from absl import app

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.config import validate

define_flags("experiments/tiny.py")

# Top-level param collections that RELIC adds on top of the Wan 2.1 backbone (action and pose
# encoders arrive with the conditioning work); everything else is the backbone.
RELIC_ADDITIONS = ("action_encoder", "pose_encoder")


def model_stats(cfg) -> dict:
  from relic_jax.models import flops
  from relic_jax.training.teacher import TeacherTask
  validate(cfg)
  task = TeacherTask(cfg)
  shapes = jax.eval_shape(task.init_params, jax.random.key(0))
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  total = count(shapes)
  additions = count({k: v for k, v in shapes.items() if k in RELIC_ADDITIONS})
  d = cfg.data
  return {
      "config": cfg.name,
      "param_count": total,
      "backbone_param_count": total - additions,
      "flops_per_token_fwd": flops.flops_per_token_fwd(task.dit, d.latent_frames, d.latent_height,
                                                       d.latent_width, d.text_len),
      "tokens_per_clip": flops.tokens(task.dit, d.latent_frames, d.latent_height, d.latent_width)[2],
      "layers": task.dit.num_layers,
      "dim": task.dit.dim,
      "ffn_dim": task.dit.ffn_dim,
      "num_heads": task.dit.num_heads,
  }


def main(argv):
  del argv
  emit(model_stats(FLAGS.config))


if __name__ == "__main__":
  app.run(main)
