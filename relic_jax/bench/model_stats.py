"""Model size and FLOPs from abstract shapes only (runs for 14B on a laptop).

python -m relic_jax.bench.model_stats --config=experiments/relic_14b.py --out=stats.json
"""

import jax
from absl import app

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.config import validate
from relic_jax.models import flops
from relic_jax.models.dit import RELIC_ADDITIONS
from relic_jax.training.teacher import TeacherTask

define_flags("experiments/tiny.py")

def model_stats(cfg) -> dict:
  validate(cfg)
  task = TeacherTask(cfg)
  shapes = jax.eval_shape(task.init_params, jax.random.key(0))
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  total = count(shapes)
  # everything RELIC adds (encoders and per-block projections) is not backbone
  additions = sum(x.size for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]
                  if any(getattr(k, "key", None) in RELIC_ADDITIONS for k in path))
  d = cfg.data
  return {
      "config": cfg.name,
      "param_count": total,
      "backbone_param_count": total - additions,
      "flops_per_token_fwd": flops.flops_per_token_fwd(task.dit, d.latent_frames, d.latent_height,
                                                       d.latent_width, d.text_len),
      "tokens_per_clip": flops.tokens(task.dit, d.latent_frames, d.latent_height,
                                      d.latent_width)[2],
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
