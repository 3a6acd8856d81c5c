"""conditioning: the camera-pose and action injection of the DiT on and off, on the tiny
experiment trained on its latent cache.

A change of model.pose_dim or model.action_dim retrains from the teacher on (train_teacher,
ode_init, distill, evaluate); the dataset, the VAE and the latent cache are the baseline's.
The latent-cache setup (data.source, text encoder, 13-d actions, 12-d poses) is in the base
overrides, since the pipeline uses a config that already reads the latent cache as it is.

Cost: the baseline's full tiny pipeline, then 3 times train_teacher, ode_init, distill and
evaluate. Hardware: any; not timed yet.
"""


def get_sweep():
  return {
      "description": "pose and action conditioning of the DiT",
      "base": {
          "config": "experiments/tiny.py",
          "overrides": {"data.source": "latents", "model.text_encoder": "bytes",
                        "model.action_dim": 13, "model.pose_dim": 12},
          "description": "RELIC: 12-d poses into Q/K and 13-d actions after self-attention",
      },
      "variants": {
          "no_pose": {"overrides": {"model.pose_dim": 0},
                      "description": "actions only: no camera-pose injection"},
          "no_action": {"overrides": {"model.action_dim": 0},
                        "description": "poses only: no action injection"},
          "no_conditioning": {"overrides": {"model.pose_dim": 0, "model.action_dim": 0},
                              "description": "neither: image and caption only"},
      },
  }
