"""The layout of a run's workdir: one object that says where every stage reads and writes.

  <root>/data            the episode dataset (config.data.dir overrides it)
  <root>/pose_estimator  the evaluation's pose estimator
  <root>/vae, vae_tiny   the VAE and its tiny streaming decoder (+ vae/pretrained.json when
                         the VAE is a pretrained one used as is: where from, its latent stats)
  <root>/latents         the latent cache (config.data.latent_dir overrides it)
  <root>/teacher         the bidirectional teacher (+ latent_stats.json, curriculum phases)
  <root>/ode_init        the student's ODE initialisation
  <root>/distill         the distilled student
  <root>/evaluate        the evaluation's per-case intermediates
  <root>/results         the evaluation's report (metrics, videos, plots)
  <root>/generate        `relic generate`'s videos
  <root>/pipeline        the pipeline's done-markers, one <stage>.json per finished stage

Nothing in `Workdir` touches the disk; a stage creates what it writes. `locked(root, command)`
is the lock a stage that writes a run holds on its workdir (`relic` takes it for them).
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import time

import ml_collections

LATENT_STATS = "latent_stats.json"


@dataclasses.dataclass(frozen=True)
class Workdir:
  """The directories of one run. `data` and `latents` follow config.data.dir / latent_dir
  when those are set (a dataset or cache shared between runs)."""
  root: str
  data_dir: str = ""
  latent_dir: str = ""

  @classmethod
  def of(cls, cfg: ml_collections.ConfigDict, root: str | None) -> "Workdir":
    """The layout of `root` for `cfg`. root may be None only for a config whose dataset has a
    directory of its own (config.data.dir): nothing else has a place then."""
    if not root and not cfg.data.dir:
      raise ValueError("set config.data.dir or pass --workdir (the dataset goes to "
                       "<workdir>/data)")
    return cls(root=root or "", data_dir=cfg.data.dir or "",
               latent_dir=cfg.data.get("latent_dir", "") or "")

  def _under(self, name: str) -> str:
    if not self.root:
      raise ValueError(f"no --workdir: '{name}' has no place. Fix: pass --workdir=DIR.")
    return os.path.join(self.root, name)

  def stage_dir(self, name: str) -> str:
    """The directory of the place `name` (one of PLACES)."""
    if name not in PLACES:
      raise ValueError(f"{name!r} is not a place of a workdir; the places: "
                       f"{', '.join(PLACES)}.")
    return getattr(self, name)

  @property
  def data(self) -> str:
    return self.data_dir or self._under("data")

  @property
  def latents(self) -> str:
    return self.latent_dir or self._under("latents")

  @property
  def latent_stats(self) -> str:
    """The latent cache's statistics the teacher trained with (and generation de-normalises
    by), copied beside the teacher."""
    return os.path.join(self.teacher, LATENT_STATS)

  @property
  def vae_pretrained(self) -> str:
    """Where a VAE used as is came from and its own latent statistics (`relic train_vae`
    with config.vae.init_from and vae.finetune_steps = 0; `relic encode` normalises by them)."""
    return os.path.join(self.vae, "pretrained.json")

  def marker(self, stage: str) -> str:
    """The pipeline's done-marker of `stage`."""
    return os.path.join(self.pipeline, f"{stage}.json")


# The places of a run (the module docstring says what each holds); every one but data and
# latents (above) is <root>/<its name>.
PLACES = ("data", "pose_estimator", "vae", "vae_tiny", "latents", "teacher", "ode_init",
          "distill", "evaluate", "results", "generate", "pipeline", "play")
for _name in PLACES:
  if not hasattr(Workdir, _name):
    setattr(Workdir, _name, property(lambda self, name=_name: self._under(name),
                                     doc=f"<root>/{_name}"))
del _name


# ------------------------------------------------------------------------------ the lock

LOCK_FILE = ".relic.lock"


class WorkdirError(ValueError):
  """A workdir that cannot be used: not a directory, not writable, or in use by another run."""


def check_writable(path: str, what: str = "--workdir", keep: bool = True) -> bool:
  """Refuses a path that is a file or cannot be written, before anything is written; creates
  the directory when it does not exist (keep=False: only to try, then removes it again) ->
  whether it created it."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{what}={path} is a file, not a directory. Fix: pass a directory (a "
                       "new one is created).")
  created = not os.path.exists(path)
  new = _missing(path)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".relic-write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
    if not keep:
      _remove(new)
  except OSError as e:
    _remove(new)
    raise WorkdirError(f"{what}={path} cannot be written ({e.strerror or e}). Fix: pass a "
                       "directory you can write to (check its permissions, that its file "
                       "system is not read-only or full).") from e
  return created


def _missing(path: str) -> list[str]:
  """The directories that creating `path` would create, deepest first."""
  out, d = [], os.path.abspath(path)
  while not os.path.exists(d):
    out.append(d)
    d = os.path.dirname(d)
  return out


def _remove(dirs: list[str]) -> None:
  for d in dirs:
    with contextlib.suppress(OSError):
      os.rmdir(d)


def _holder(fd: int) -> dict:
  try:
    raw = os.pread(fd, 4096, 0)
    return json.loads(raw) if raw.strip() else {}
  except (OSError, ValueError):
    return {}


def _describe(h: dict) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if "since" in h else "?"
  return (f"`relic {h.get('command', '?')}` (pid {h.get('pid', '?')} on "
          f"{h.get('host', '?')}, since {since})")


@contextlib.contextmanager
def locked(root: str, command: str):
  """Holds an exclusive lock on the workdir `root` while a run writes it: a second run in the
  same workdir is refused naming the first. The lock is an flock on <root>/.relic.lock, which
  the kernel releases when its process dies, so a lock left by a killed run is taken over (and
  said so); the file names the holder. A workdir this call created is removed again when the
  run leaves it empty (a refused run writes nothing)."""
  new = _missing(root)
  check_writable(root)
  path = os.path.join(root, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      held = _holder(fd)
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f"cannot lock {path} ({e.strerror}). Fix: use a workdir on a file "
                           "system with file locks.") from e
      raise WorkdirError(f"--workdir={root} is in use by {_describe(held)}. Fix: wait for that "
                         "run to finish (or stop it), or use another --workdir.") from None
    try:  # the file may have been removed by the holder we waited on: lock the new one
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  stale = _holder(fd)
  if stale:
    print(f"[relic] {root}: took over the lock of {_describe(stale)}, which is no longer "
          "running", flush=True)
  me = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
        "since": time.time()}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(me).encode(), 0)
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(path)
    os.close(fd)
    _remove(new)  # what this call created, when the run left it empty
