"""backprop: the generator's gradient in self-forcing distillation, replayed block by block
(constant memory) vs naive back-propagation through the whole rollout, on the tiny experiment.

The two compute the same gradient (tests/test_self_forcing.py), so the metrics should agree up
to floating-point noise; what differs is memory and speed (see bench.distill_memory). Each
variant reruns distill and evaluate.

Cost: the baseline's full tiny pipeline, then 2 times distill and evaluate. Hardware: any; not
timed yet.
"""


def get_sweep():
  return {
      "description": "replayed vs naive back-propagation in distillation",
      "base": {
          "config": "experiments/tiny.py",
          "overrides": {"distill.backprop": "replayed"},
          "description": "replayed: block by block from the cached rollout, constant memory",
      },
      "variants": {
          "naive": {"overrides": {"distill.backprop": "naive", "distill.naive_remat": True},
                    "description": "naive: back-propagation through the rollout, blocks "
                                   "rematerialised"},
          "naive_no_remat": {"overrides": {"distill.backprop": "naive",
                                           "distill.naive_remat": False},
                             "description": "naive: back-propagation through the rollout, "
                                            "every activation kept"},
      },
  }
