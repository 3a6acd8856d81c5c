"""kv_dtype: the storage dtype of the student's KV cache (the memory), on the tiny experiment.

Inference-time (from_stage "evaluate"): each variant re-evaluates the baseline's student with
its cache stored in a narrower dtype (float8 with a per-token scale), as a deployment would.

Cost: the baseline's full tiny pipeline, then 2 evaluations. Hardware: any; not timed yet.
"""


def get_sweep():
  return {
      "description": "the KV cache's storage dtype",
      "base": {
          "config": "experiments/tiny.py",
          "overrides": {"memory.kv_dtype": "float32"},
          "description": "float32 KV cache",
      },
      "variants": {
          "bfloat16": {"overrides": {"memory.kv_dtype": "bfloat16"},
                       "description": "bfloat16 KV cache (half the memory)",
                       "from_stage": "evaluate"},
          "float8_e4m3fn": {"overrides": {"memory.kv_dtype": "float8_e4m3fn"},
                            "description": "float8 e4m3 KV cache with a per-token scale (a "
                                           "quarter of the memory)",
                            "from_stage": "evaluate"},
      },
  }
