"""Peak dense bf16 FLOP/s per device, for MFU. Figures from the vendors' data sheets (dense,
no sparsity). `config.train.peak_flops_per_device` overrides the table."""

PEAK_BF16_FLOPS = (
    # (substring of jax.Device.device_kind, peak FLOP/s)
    ("H200", 989e12),
    ("H100", 989e12),   # SXM; the PCIe card is ~756e12: set the override
    ("A100", 312e12),
    ("L40S", 362e12),
    ("TPU v6", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak FLOP/s of one device, or None when unknown (CPUs): MFU is then not reported."""
  if override > 0:
    return float(override)
  for key, flops in PEAK_BF16_FLOPS:
    if key.lower() in device_kind.lower():
      return flops
  return None
