"""Streaming reader of safetensors checkpoints (single files and sharded `*.index.json` sets).

The format is 8 bytes (little-endian header length), a JSON header mapping tensor names to
{dtype, shape, data_offsets}, then the raw little-endian data. Tensors are read one at a time
through a memory map, so a 14B checkpoint is never held in host memory twice; bf16/fp8 come
back as `ml_dtypes` numpy arrays (no torch needed).
"""

import json
import mmap
import os
import struct
from collections.abc import Mapping
from typing import Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsError(ValueError):
  """A safetensors file or index is unreadable; the message names the file and the fix."""


def read_header(path: str) -> dict:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: too short to be a safetensors file. Fix: re-download it.")
    (n,) = struct.unpack("<Q", raw)
    size = os.path.getsize(path)
    if n > size - 8:
      raise SafetensorsError(f"{path}: header length {n} exceeds the file size {size} "
                             "(truncated file?). Fix: re-download it.")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise SafetensorsError(f"{path}: unreadable header ({e}). Fix: re-download it.") from e
  header.pop("__metadata__", None)
  data_size = size - 8 - n
  for name, info in header.items():
    start, end = info["data_offsets"]
    if end > data_size:
      raise SafetensorsError(f"{path}: tensor {name} ends at byte {end} of a {data_size}-byte "
                             "data section (truncated file?). Fix: re-download it.")
    if info["dtype"] not in DTYPES:
      raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
  return header


def checkpoint_files(source: str) -> list[str]:
  """The safetensors files of a checkpoint: a file, or a directory with one file or a sharded
  set described by `*.safetensors.index.json`."""
  if os.path.isfile(source):
    return [source]
  if not os.path.isdir(source):
    raise SafetensorsError(f"{source}: no such file or directory. Fix: point at the model's "
                           "directory (the one holding config.json and the .safetensors files).")
  names = sorted(os.listdir(source))
  index = [n for n in names if n.endswith(".safetensors.index.json")]
  if index:
    with open(os.path.join(source, index[0])) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
    missing = [fn for fn in files if not os.path.isfile(os.path.join(source, fn))]
    if missing:
      raise SafetensorsError(f"{source}: {index[0]} lists {missing[0]}, which is missing"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. "
                             "Fix: download every shard.")
    return [os.path.join(source, fn) for fn in files]
  files = [os.path.join(source, n) for n in names if n.endswith(".safetensors")]
  if not files:
    raise SafetensorsError(f"{source}: no .safetensors files. Fix: point at the directory that "
                           "holds the checkpoint (for diffusers models, its transformer/ folder).")
  return files


def tensor_specs(source: str) -> dict[str, tuple[tuple[int, ...], str, str]]:
  """name -> (shape, safetensors dtype, file), reading headers only."""
  out = {}
  for path in checkpoint_files(source):
    for name, info in read_header(path).items():
      if name in out:
        raise SafetensorsError(f"tensor {name} appears in both {out[name][2]} and {path}.")
      out[name] = (tuple(info["shape"]), info["dtype"], path)
  return out


def iter_tensors(source: str) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (name, array) one tensor at a time (read-only arrays); the file is memory-mapped,
  so only the tensor being converted is in host memory."""
  for path in checkpoint_files(source):
    header = read_header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
      (n,) = struct.unpack("<Q", mm[:8])
      base = 8 + n
      for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]])
        raw = mm[base + start:base + end]  # a copy of this tensor's bytes only
        yield name, np.frombuffer(raw, dtype=dtype).reshape(info["shape"])


def load_state_dict(source: str) -> dict[str, np.ndarray]:
  """Every tensor in host memory at once (fine for small models; see LazyStateDict)."""
  return dict(iter_tensors(source))


class LazyStateDict(Mapping):
  """name -> array, reading a tensor from its file only when it is asked for (headers are read
  up front). Shapes are known without reading: `shapes[name]`."""

  def __init__(self, source: str):
    self._specs = tensor_specs(source)
    self._headers: dict[str, dict] = {}
    self.shapes = {k: v[0] for k, v in self._specs.items()}

  def __getitem__(self, name: str) -> np.ndarray:
    shape, dtype_name, path = self._specs[name]
    if path not in self._headers:
      self._headers[path] = read_header(path)
    start, end = self._headers[path][name]["data_offsets"]
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      f.seek(8 + n + start)
      raw = f.read(end - start)
    return np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype_name])).reshape(shape)

  def __contains__(self, name) -> bool:  # from the headers: Mapping's would read the tensor
    return name in self._specs

  def __iter__(self):
    return iter(self._specs)

  def __len__(self):
    return len(self._specs)


def load_config(source: str) -> dict | None:
  """The checkpoint's config.json (diffusers), or None."""
  path = os.path.join(source if os.path.isdir(source) else os.path.dirname(source), "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
