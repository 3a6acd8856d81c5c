"""memory: the student's KV memory (RELIC's schedule vs uniform pooling, no pooling, no memory,
the window size), on the tiny experiment.

By default each variant reruns from ode_init (memory.* feeds the student's training: the ODE
initialisation and the distillation roll out with that memory), so every row is a student
trained and evaluated with its memory. tiny's recipe reads the memory in both stages (ODE
init: 13 clean latent frames; rollouts up to 25), so the variants train different students
(tests/test_student_recipe.py); window_12's ODE init keeps only frame 0 (unpooled) in memory,
as full does, and differs from it through distillation. `memory.py:inference` only
re-evaluates the baseline's student with each memory instead: an inference-time ablation,
much cheaper.

Cost: the baseline's full tiny pipeline, then 8 times ode_init, distill and evaluate
(`:inference`: 8 evaluations). Hardware: any; not timed yet.
"""

RELIC_SCHEDULE = (1, 4, 2, 4, 4, 4, 2, 4, 4, 2, 4, 4, 4, 2, 4, 4, 2, 4)

VARIANTS = {
    "uniform_2": ({"memory.schedule": (2,)}, "every memory frame pooled 2x2"),
    "uniform_4": ({"memory.schedule": (4,)}, "every memory frame pooled 4x4"),
    "full": ({"memory.mode": "full"}, "no pooling: the full history (upper bound, most memory)"),
    "window_only": ({"memory.mode": "window"}, "no memory: the last 6 latent frames only"),
    "window_sink": ({"memory.mode": "window_sink"},
                    "the last 6 latent frames and frame 0, no other memory"),
    "subsample_pool": ({"memory.pool": "subsample"},
                       "RELIC's schedule, a patch kept as its middle token instead of its mean"),
    "window_3": ({"memory.window": 3}, "RELIC's schedule, a window of 3 latent frames"),
    "window_12": ({"memory.window": 12}, "RELIC's schedule, a window of 12 latent frames"),
}


def get_sweep(arg=""):
  if arg not in ("", "inference"):
    raise ValueError(f"memory sweep: unknown argument {arg!r}. Fix: use memory.py or "
                     "memory.py:inference.")
  from_stage = "evaluate" if arg == "inference" else None
  return {
      "description": "the student's memory" + (" (evaluated with the baseline's student)"
                                               if arg else " (retrained per variant)"),
      "base": {
          "config": "experiments/tiny.py",
          "overrides": {"memory.mode": "relic", "memory.window": 6,
                        "memory.schedule": RELIC_SCHEDULE, "memory.pool": "mean"},
          "description": "RELIC: window 6, memory pooled by RELIC's schedule S (mean)",
      },
      "variants": {name: {"overrides": o, "description": d, "from_stage": from_stage}
                   for name, (o, d) in VARIANTS.items()},
  }
