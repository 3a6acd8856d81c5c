"""umT5 / T5 v1.1 encoder weights from a Hugging Face checkpoint (`UMT5EncoderModel`,
`T5EncoderModel`, or the encoder of a full model) onto `relic_jax.models.umt5`.

`import_umt5(state_dict, hf_config) -> (UMT5Config, params)` maps the tensor names and
layouts (`nn.Linear` [out, in] -> Dense kernels [in, out]; per-layer tensors stacked on the
scanned "layers" axis) and refuses a checkpoint that does not match, naming the tensor;
`umt5_encode(config, params, input_ids, attention_mask)` runs the encoder.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from relic_jax.models.umt5 import UMT5Config, UMT5Encoder


class UMT5ImportError(ValueError):
  """The checkpoint is not a umT5 / T5 v1.1 encoder this importer understands."""


def config_from_hf(hf_config: Mapping, per_layer_bias: bool, dtype: str = "float32",
                   param_dtype: str = "float32") -> UMT5Config:
  """Our config from a `transformers` UMT5Config / T5Config dict (config.json)."""
  act = hf_config.get("dense_act_fn", "gelu_new")
  proj = hf_config.get("feed_forward_proj", "gated-gelu")
  if proj != "gated-gelu" or act not in ("gelu_new", "gelu_pytorch_tanh"):
    raise UMT5ImportError(
        f"feed_forward_proj={proj!r} with dense_act_fn={act!r}: relic_jax's umT5 has the gated "
        "GELU (tanh) FFN of umT5 and T5 v1.1 only. Fix: import a umT5 / T5 v1.1 checkpoint.")
  try:
    return UMT5Config(
        vocab_size=int(hf_config["vocab_size"]), d_model=int(hf_config["d_model"]),
        d_kv=int(hf_config["d_kv"]), d_ff=int(hf_config["d_ff"]),
        num_layers=int(hf_config["num_layers"]), num_heads=int(hf_config["num_heads"]),
        num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
        max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
        eps=float(hf_config.get("layer_norm_epsilon", 1e-6)), per_layer_bias=per_layer_bias,
        dtype=dtype, param_dtype=param_dtype)
  except KeyError as e:
    raise UMT5ImportError(f"config.json has no {e.args[0]!r}. Fix: use the checkpoint's own "
                          "config.json (a transformers UMT5Config / T5Config).") from None


def _get(sd: Mapping, name: str, shape: tuple, dtype) -> np.ndarray:
  if name not in sd:
    raise UMT5ImportError(f"the checkpoint has no tensor {name!r}. Fix: point at a umT5 / T5 "
                          "v1.1 encoder checkpoint (UMT5EncoderModel or T5EncoderModel).")
  w = np.asarray(sd[name])
  if w.shape != shape:
    raise UMT5ImportError(f"tensor {name!r} has shape {tuple(w.shape)}, the config.json implies "
                          f"{shape}. Fix: use the config.json that came with these weights.")
  return w.astype(dtype)  # one tensor at a time, straight to the params' dtype


def import_umt5(state_dict: Mapping, hf_config: Mapping, dtype: str = "float32",
                param_dtype: str = "float32") -> tuple[UMT5Config, dict]:
  """A Hugging Face umT5 / T5 v1.1 encoder state dict (torch-free: name -> array) and its
  config.json dict -> (our config, params for `UMT5Encoder`). umT5 is recognised by a
  relative-position table in every layer; T5 v1.1 has one, in layer 0."""
  sd = state_dict  # read tensor by tensor (a LazyStateDict reads each only when asked)
  embedding = ("encoder.embed_tokens.weight" if "shared.weight" not in sd
               and "encoder.embed_tokens.weight" in sd else "shared.weight")
  bias = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
  per_layer = bias.format(1) in sd or int(hf_config.get("num_layers", 1)) == 1
  c = config_from_hf(hf_config, per_layer, dtype, param_dtype)
  pdt = jnp.dtype(param_dtype)
  get = lambda name, shape: _get(sd, name, shape, pdt)  # noqa: E731
  inner = c.num_heads * c.d_kv
  block = "encoder.block.{}.layer.{}.{}.weight"

  def stack(layer: int, name: str, shape: tuple, t: bool = True):
    ws = [get(block.format(i, layer, name), shape) for i in range(c.num_layers)]
    return np.stack([w.T if t else w for w in ws])

  layers = {
      "attn_norm": {"scale": stack(0, "layer_norm", (c.d_model,), False)},
      "ffn_norm": {"scale": stack(1, "layer_norm", (c.d_model,), False)},
      **{n: {"kernel": stack(0, f"SelfAttention.{n}", (inner, c.d_model))}
         for n in ("q", "k", "v")},
      "o": {"kernel": stack(0, "SelfAttention.o", (c.d_model, inner))},
      "wi_0": {"kernel": stack(1, "DenseReluDense.wi_0", (c.d_ff, c.d_model))},
      "wi_1": {"kernel": stack(1, "DenseReluDense.wi_1", (c.d_ff, c.d_model))},
      "wo": {"kernel": stack(1, "DenseReluDense.wo", (c.d_model, c.d_ff))},
  }
  table = (c.num_buckets, c.num_heads)
  params = {"token_embedding": {"embedding": get(embedding, (c.vocab_size, c.d_model))},
            "final_norm": {"scale": get("encoder.final_layer_norm.weight", (c.d_model,))}}
  if per_layer:
    layers["relative_attention_bias"] = np.stack(
        [get(bias.format(i), table) for i in range(c.num_layers)])
  else:
    params["relative_attention_bias"] = get(bias.format(0), table)
  params["layers"] = layers
  return c, jax.tree.map(jnp.asarray, params)


def umt5_encode(config: UMT5Config, params, input_ids, attention_mask):
  """input_ids [B, L] int32, attention_mask [B, L] -> float32 [B, L, d_model], padding
  positions zeroed (as Wan zero-pads its text context)."""
  return UMT5Encoder(config).apply({"params": params}, jnp.asarray(input_ids, jnp.int32),
                                   jnp.asarray(attention_mask))
