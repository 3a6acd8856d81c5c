"""Atomic file writes (no JAX): a reader sees the old file or the complete new one, never a
partial one, and a killed writer leaves only a `*.tmp-<pid>` file behind. Also the two helpers
one-line error messages quote with (`one_line`, `short_repr`)."""

import hashlib
import io
import json
import os
from typing import Any

import numpy as np


def one_line(error: BaseException, limit: int = 300) -> str:
  """An exception's text on one line (library messages may span several), at most `limit`
  characters: for embedding in a one-line error message."""
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= limit else text[:limit] + " ..."


def short_repr(value, limit: int = 80) -> str:
  """repr(value), cut at `limit` characters: a value quoted in a one-line message."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes bytes to a temporary file, syncs it, and renames it over `path`."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON atomically (see `write_bytes_atomic`)."""
  write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_npz_atomic(path: str, **arrays) -> None:
  """Writes numpy arrays as an .npz atomically (see `write_bytes_atomic`)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes_atomic(path, buf.getvalue())


def sha256_file(path: str) -> str:
  """The SHA-256 (hex) of a file's bytes, read in 4 MiB chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()
