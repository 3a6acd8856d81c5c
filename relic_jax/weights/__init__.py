"""Import of pretrained weights (Wan 2.1 diffusers checkpoints, the umT5 text encoder)."""

from relic_jax.weights.safetensors_io import (LazyStateDict, SafetensorsError, iter_tensors,
                                              load_config, load_state_dict, tensor_specs)
from relic_jax.weights.umt5 import UMT5ImportError, import_umt5, umt5_encode
from relic_jax.weights.wan import (WanImportError, import_wan_transformer, infer_model_config,
                                   wan_forward)
from relic_jax.weights.wan_vae import import_wan_vae, wan_vae_decode, wan_vae_encode

__all__ = ["LazyStateDict", "SafetensorsError", "WanImportError", "import_wan_transformer",
           "infer_model_config", "iter_tensors", "load_config", "load_state_dict", "tensor_specs",
           "wan_forward", "import_wan_vae", "wan_vae_decode", "wan_vae_encode", "UMT5ImportError",
           "import_umt5", "umt5_encode"]
