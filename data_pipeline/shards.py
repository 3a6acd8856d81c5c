"""Episode shards: ArrayRecord files of frame records, per-shard index files, and a manifest.

Layout of a dataset directory:
  shard-00000.arrayrecord   one record per frame, episodes stored whole and in order
  shard-00000.json          that shard's index: its episodes' metadata and first record, the
                            record count, byte size and SHA-256 of the shard file
  manifest.json             the dataset: format, the generating config (and its hash), counts,
                            and every shard's index; written last
  dataset_config.json       the config the directory belongs to (data_pipeline/writer.py)

A frame record is  b"RLF1" | crc32 (u32) | header | image bytes,  where the CRC covers
everything after it and the header holds the episode's index in the shard, the frame index, the
4x4 float64 pose, the 13 float32 actions and the image codec. Images are JPEG or PNG.

Writes are atomic: a shard is written to `*.tmp-<pid>` and renamed when complete and synced, its
index is written after it, the manifest last; so a shard with an index is complete, and a
re-run skips it, while a killed run leaves only temporary files, which are removed and redone.
A re-run also checks the size and SHA-256 of each shard it would skip (`shard_status`) and
rewrites a damaged or missing one. Reading checks the record count and size against the index
(a truncated shard), the SHA-256 when asked, and every record's CRC (a corrupt record); each
failure is a `DataError` naming the file and the command that repairs it (`repair_fix`: the
dataset's own, `relic data` or `relic data ingest --source=...`).
"""

import glob
import io
import json
import os
import struct
import zlib

import numpy as np
from array_record.python import array_record_module
from PIL import Image

from data_pipeline.episode import DataError, Episode
from relic_jax.config.choices import Codec
from relic_jax.io_utils import one_line, sha256_file, write_json_atomic

FORMAT = "relic_jax.episodes/1"
MAGIC = b"RLF1"
CODECS = {Codec.JPEG: 1, Codec.PNG: 2}  # the codec's id in a record header
_HEADER = struct.Struct("<4sIiiB16d13d")  # magic, crc, episode, frame, codec, pose, action
MANIFEST = "manifest.json"
STATE = "dataset_config.json"  # written by data_pipeline/writer.py
INGESTED = "ingest"  # the config "source" of a dataset `relic data ingest` wrote


def is_ingested(manifest: dict) -> bool:
  """Whether a dataset's manifest is that of ingested episodes (not generated ViZDoom)."""
  return manifest.get("config", {}).get("source") == INGESTED
_REWRITES = "it checks every shard's SHA-256 and rewrites the damaged or missing ones"
_GENERIC_FIX = ("Fix: re-run the command that made this dataset with the same --config and "
                "--workdir (`relic data`, or `relic data ingest --source=DIR` for ingested "
                f"episodes); {_REWRITES}.")


def read_json_object(path: str, fix: str) -> dict:
  """The JSON object in `path`; a DataError naming the file and `fix` when it cannot be read,
  is not JSON or not an object (a damaged or hand-edited file)."""
  try:
    with open(path, "rb") as f:
      obj = json.loads(f.read().decode("utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise DataError(f"{path} cannot be read as JSON ({one_line(e)}): the file is damaged. "
                    f"{fix}") from None
  if not isinstance(obj, dict):
    raise DataError(f"{path} holds a JSON {type(obj).__name__}, not an object: the file is "
                    f"damaged. {fix}")
  return obj


def repair_fix(config: dict | None, effect: str = _REWRITES) -> str:
  """The fix for a damaged or missing shard of a dataset made with `config` (the manifest's or
  dataset_config.json's): re-running the command that made it, which rewrites such shards
  (`effect` says what the re-run repairs)."""
  if not isinstance(config, dict):
    return _GENERIC_FIX.replace(_REWRITES, effect)
  if config.get("source") == INGESTED:
    src = config.get("source_dir") or "DIR"
    command = (f"`relic data ingest --source=<path to {src}>` (the source directory it was "
               "ingested from)")
  else:
    command = "`relic data`"
  return f"Fix: re-run {command} with this dataset's --config and --workdir; {effect}."


def shard_name(index: int) -> str:
  return f"shard-{index:05d}.arrayrecord"


def index_name(index: int) -> str:
  return f"shard-{index:05d}.json"


def encode_image(frame: np.ndarray, codec: str, quality: int = 95) -> bytes:
  buf = io.BytesIO()
  if codec == Codec.JPEG:
    Image.fromarray(frame).save(buf, "JPEG", quality=quality, subsampling=0)
  elif codec == Codec.PNG:
    Image.fromarray(frame).save(buf, "PNG", compress_level=1)
  else:
    raise DataError(f"image codec {codec!r} is unknown. Fix: use 'jpeg' or 'png'.")
  return buf.getvalue()


def encode_record(episode_index: int, frame_index: int, pose, action, image: bytes,
                  codec: str) -> bytes:
  body = _HEADER.pack(MAGIC, 0, episode_index, frame_index, CODECS[codec],
                      *np.asarray(pose, np.float64).reshape(16),
                      *np.asarray(action, np.float64).reshape(13))[8:] + image
  return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def decode_record(record: bytes, where: str, fix: str = _GENERIC_FIX) -> dict:
  """A frame record -> {"episode", "frame", "pose" [4,4] f64, "action" [13] f32, "image" [H,W,3]
  uint8}; a DataError naming `where` and `fix` (`repair_fix`) if it is corrupt."""
  if len(record) < _HEADER.size or record[:4] != MAGIC:
    raise DataError(f"{where}: not a relic_jax frame record (bad magic or too short). The shard "
                    f"is corrupt. {fix}")
  (crc,) = struct.unpack_from("<I", record, 4)
  if zlib.crc32(memoryview(record)[8:]) != crc:
    raise DataError(f"{where}: CRC mismatch; the shard is corrupt. {fix}")
  fields = _HEADER.unpack_from(record, 0)
  ep, frame, codec = fields[2], fields[3], fields[4]
  pose = np.array(fields[5:21], np.float64).reshape(4, 4)
  action = np.array(fields[21:34], np.float32)
  try:  # the CRC matched, so only a writer's bug gets here; still a DataError, not a traceback
    image = np.asarray(Image.open(io.BytesIO(record[_HEADER.size:])).convert("RGB"))
  except Exception as e:  # PIL raises several classes for an undecodable image
    raise DataError(f"{where}: the image cannot be decoded ({one_line(e)}). {fix}") from None
  return {"episode": ep, "frame": frame, "pose": pose, "action": action, "image": image,
          "codec": codec}


def _writer(path):
  return array_record_module.ArrayRecordWriter(path, "group_size:1")


def _reader(path):
  return array_record_module.ArrayRecordReader(path)


def write_shard(directory: str, index: int, episodes: list[Episode], codec: str = "jpeg",
                quality: int = 95, config_hash: str = "") -> dict:
  """Writes one shard and then its index, both atomically; returns the index."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, shard_name(index))
  tmp = f"{path}.tmp-{os.getpid()}"
  writer = _writer(tmp)
  entries, record = [], 0
  try:
    for e, ep in enumerate(episodes):
      entries.append({**ep.metadata(), "first_record": record, "codec": codec})
      for f in range(len(ep)):
        writer.write(encode_record(e, f, ep.poses[f], ep.actions[f],
                                   encode_image(ep.frames[f], codec, quality), codec))
        record += 1
  finally:
    writer.close()
  with open(tmp, "rb+") as fh:
    os.fsync(fh.fileno())
  os.replace(tmp, path)
  meta = {"shard": shard_name(index), "num_records": record, "bytes": os.path.getsize(path),
          "sha256": sha256_file(path), "config_hash": config_hash, "episodes": entries}
  write_json_atomic(os.path.join(directory, index_name(index)), meta)
  return meta


def clean_partial(directory: str) -> list[str]:
  """Removes what a killed writer left (temporary files, shards without an index)."""
  removed = []
  for tmp in glob.glob(os.path.join(directory, "*.tmp-*")):
    os.remove(tmp)
    removed.append(tmp)
  for shard in glob.glob(os.path.join(directory, "shard-*.arrayrecord")):
    if not os.path.exists(shard[:-len(".arrayrecord")] + ".json"):
      os.remove(shard)
      removed.append(shard)
  return removed


_INDEX_KEYS = {"shard": str, "num_records": int, "bytes": int, "sha256": str,
               "config_hash": str, "episodes": list}


def shard_status(directory: str, index: int, verify: bool = True) -> tuple[dict | None,
                                                                          str | None]:
  """(the index of shard `index` if it is complete, else None; why it is not, or None when it
  was never written). Complete: its index is readable and names it, and the shard file has the
  recorded size and, when `verify` (reads the file once), the recorded SHA-256."""
  meta_path = os.path.join(directory, index_name(index))
  path = os.path.join(directory, shard_name(index))
  if not os.path.exists(meta_path):
    return None, None  # never written, or killed before its index (clean_partial removes it)
  try:
    meta = read_json_object(meta_path, "")
  except DataError:
    return None, f"its index {index_name(index)} is damaged (not a JSON object)"
  if not (all(isinstance(meta.get(k), t) for k, t in _INDEX_KEYS.items())
          and all(isinstance(e, dict) for e in meta["episodes"])):
    return None, f"its index {index_name(index)} is damaged (fields missing)"
  if not os.path.isfile(path):
    return None, "it is missing (its index is there)"
  size = os.path.getsize(path)
  if size != meta["bytes"]:
    return None, f"it is {size} bytes but its index says {meta['bytes']} (truncated)"
  if verify and sha256_file(path) != meta["sha256"]:
    return None, "its SHA-256 differs from the one in its index (the file is damaged)"
  return meta, None


def load_index(directory: str, index: int) -> dict | None:
  """The index of a complete shard (size checked, not the SHA-256), or None if the shard is
  missing or incomplete."""
  return shard_status(directory, index, verify=False)[0]


def write_manifest(directory: str, config: dict, config_hash: str, shards: list[dict]) -> dict:
  manifest = {"format": FORMAT, "config": config, "config_hash": config_hash,
              "num_shards": len(shards),
              "num_episodes": sum(len(s["episodes"]) for s in shards),
              "num_frames": sum(s["num_records"] for s in shards), "shards": shards}
  write_json_atomic(os.path.join(directory, MANIFEST), manifest)
  return manifest


def _recorded_config(directory: str) -> dict | None:
  """The config in the directory's dataset_config.json, or None if it cannot be read."""
  try:
    config = read_json_object(os.path.join(directory, STATE), "").get("config")
  except DataError:
    return None
  return config if isinstance(config, dict) else None


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise DataError(f"no dataset at {directory}: {MANIFEST} is missing (generation not run or "
                    "not finished). Fix: run `relic data` (or `relic data ingest`) for it, or "
                    "point config.data.dir at a finished dataset.")
  fix = repair_fix(_recorded_config(directory),
                   f"it checks the shards and rewrites {MANIFEST} from their indexes")
  manifest = read_json_object(path, fix)
  if manifest.get("format") != FORMAT:
    raise DataError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}. Fix: "
                    "regenerate the dataset with this version of relic_jax.")
  shards = manifest.get("shards")
  if not (isinstance(shards, list) and all(isinstance(m, dict) and all(
      isinstance(m.get(k), t) for k, t in _INDEX_KEYS.items()) for m in shards)):
    raise DataError(f"{path} has no valid list of shard indexes: the file is damaged. {fix}")
  return manifest


class ShardReader:
  """Random access to the frames of a dataset's shards, with integrity checks.

  `verify` checks each shard's SHA-256 on first open (reads the file once); the record count
  and size are always checked, and every record's CRC on every read.
  """

  def __init__(self, directory: str, manifest: dict, verify: bool = True):
    self._dir = directory
    self._shards = {s["shard"]: s for s in manifest["shards"]}
    self._verify = verify
    self._readers = {}
    self._fix = repair_fix(manifest.get("config"))

  def __getstate__(self):  # readers are per process (grain may pickle the source)
    return {**self.__dict__, "_readers": {}}

  def _open(self, shard: str):
    reader = self._readers.get(shard)
    if reader is not None:
      return reader
    meta = self._shards[shard]
    path = os.path.join(self._dir, shard)
    fix = self._fix
    if not os.path.exists(path):
      raise DataError(f"{path} is missing but listed in the manifest. {fix}")
    size = os.path.getsize(path)
    if size != meta["bytes"]:
      raise DataError(f"{path} is {size} bytes but its index says {meta['bytes']}: the shard is "
                      f"truncated or was overwritten. {fix}")
    if self._verify and sha256_file(path) != meta["sha256"]:
      raise DataError(f"{path}: SHA-256 mismatch with its index; the shard is corrupt. {fix}")
    try:
      reader = _reader(path)
      count = reader.num_records()
    except Exception as e:  # riegeli raises on damaged file structure
      raise DataError(f"{path} cannot be opened as an ArrayRecord file ({one_line(e)}). "
                      f"{fix}") from e
    if count != meta["num_records"]:
      raise DataError(f"{path} holds {count} records but its index says "
                      f"{meta['num_records']}: the shard is truncated. {fix}")
    self._readers[shard] = reader
    return reader

  def read(self, shard: str, records: list[int]) -> list[dict]:
    reader = self._open(shard)
    try:
      raw = reader.read(list(records))
    except Exception as e:  # riegeli detects damaged blocks
      raise DataError(f"{os.path.join(self._dir, shard)}: reading records {records[0]}.."
                      f"{records[-1]} failed ({one_line(e)}); the shard is corrupt. "
                      f"{self._fix}") from e
    return [decode_record(r, f"{os.path.join(self._dir, shard)} record {i}", self._fix)
            for i, r in zip(records, raw)]

  def read_episode(self, shard: str, entry: dict, start: int = 0, stop: int | None = None):
    stop = entry["num_frames"] if stop is None else stop
    first = entry["first_record"]
    return self.read(shard, list(range(first + start, first + stop)))


def episode_entries(manifest: dict) -> list[tuple[str, dict]]:
  """(shard, episode metadata) for every episode, in manifest order."""
  return [(s["shard"], e) for s in manifest["shards"] for e in s["episodes"]]


def load_episode(directory: str, name: str, verify: bool = True) -> Episode:
  """A whole episode from a dataset, by name (for previews and tests)."""
  manifest = read_manifest(directory)
  for shard, entry in episode_entries(manifest):
    if entry["name"] == name:
      recs = ShardReader(directory, manifest, verify).read_episode(shard, entry)
      return Episode(name=name, frames=np.stack([r["image"] for r in recs]),
                     poses=np.stack([r["pose"] for r in recs]),
                     actions=np.stack([r["action"] for r in recs]),
                     action_scale=entry["action_scale"], caption=entry["caption"],
                     fps=entry["fps"], source=entry["source"], map=entry["map"],
                     seed=entry["seed"])
  names = [e["name"] for _, e in episode_entries(manifest)]
  raise DataError(f"no episode named {name!r} in {directory}. It has {len(names)}: "
                  f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}.")
