"""Bad input through the `relic` command: one `relic: error:` line naming the thing and the fix,
exit code 2, no traceback, and nothing written (docs/usage.md "Errors").

The table below is the command-line half of the bad-input cases (workdirs, locks, configs,
action scripts, start images, output directories, checkpoints); the data half (the ingest
format, shards) is the table in tests/test_data_ingest.py, the config fields' values the
table in tests/test_config_cli.py, and tests/test_fuzz.py fuzzes the ingest format and the
script parser. Adding a case is adding a row: (id, setup, args, needle), where setup(tmp)
makes the inputs in a fresh directory and returns the values the args' {placeholders} take.

Every row runs `relic` in a fork of one process that imported it once (tests/cli_forker.py), so
a row costs what its command does, not an interpreter start and a JAX import.
"""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from relic_jax.workdir import LOCK_FILE, locked

TINY = "--config=experiments/tiny.py"


def _tree(root) -> list[str]:
  """Every path under root (relative), to check that a refused command wrote nothing."""
  out = []
  for d, dirs, files in os.walk(root):
    out += [os.path.relpath(os.path.join(d, n), root) for n in dirs + files]
  return sorted(out)


# ------------------------------------------------------------------------------ inputs

def _file(tmp, name, data: bytes | str) -> str:
  path = os.path.join(tmp, name)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return path


def _png16(tmp, name="gray16.png") -> str:
  img = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
  path = os.path.join(tmp, name)
  img.save(path)
  return path


def _huge_png(tmp) -> str:
  """A valid PNG header claiming 20000 x 10000 pixels (200 MP), a few bytes long."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
  data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
          + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
  return _file(tmp, "huge.png", data)


def _script(text):
  return lambda tmp: {"script": _file(tmp, "script.txt", text)}


def _bytes_script(data):
  return lambda tmp: {"script": _file(tmp, "script.txt", data)}


def _config(text):
  return lambda tmp: {"cfg": _file(tmp, "exp.py", text)}


def _as_file(tmp):
  return {"wd": _file(tmp, "wd", "not a directory")}


def _wd(tmp):
  return {"wd": os.path.join(tmp, "wd")}


def _wd_with(extra):
  def setup(tmp):
    v = _wd(tmp)
    v.update(extra(tmp))
    return v
  return setup


def _data_dir_file(tmp):
  return {"wd": os.path.join(tmp, "wd"), "dd": _file(tmp, "dataset", "x")}


GEN = ("generate", TINY, "--workdir={wd}")
# (id, setup, args, needle in the one error line)
CASES = [
    # workdirs
    ("workdir_is_a_file_train", _as_file, ("train_teacher", TINY, "--workdir={wd}"),
     "is a file, not a directory"),
    ("workdir_is_a_file_data", _as_file, ("data", TINY, "--workdir={wd}"), "is a file"),
    ("workdir_is_a_file_generate", _as_file, (*GEN, "--actions=look_around"), "is a file"),
    ("workdir_under_a_file", lambda tmp: {"wd": os.path.join(_file(tmp, "f", "x"), "run")},
     ("train_teacher", TINY, "--workdir={wd}"), "cannot be written"),
    ("workdir_missing_flag", _wd, ("train_teacher", TINY), "needs --workdir"),
    ("data_dir_is_a_file", _data_dir_file, ("data", TINY, "--config.data.dir={dd}"),
     "is a file"),
    # configs (values: tests/test_config_cli.py; here: the file and the command line)
    ("config_missing_file", _wd, ("train_teacher", "--config=experiments/nope.py",
                                  "--workdir={wd}"), "no such file"),
    ("config_syntax_error", _wd_with(_config("def get_config(:\n")),
     ("train_teacher", "--config={cfg}", "--workdir={wd}"), "cannot load --config"),
    ("config_raises", _wd_with(_config("def get_config():\n  raise RuntimeError('boom')\n")),
     ("train_teacher", "--config={cfg}", "--workdir={wd}"), "cannot load --config"),
    ("config_no_get_config", _wd_with(_config("x = 1\n")),
     ("train_teacher", "--config={cfg}", "--workdir={wd}"), "cannot load --config"),
    ("config_unknown_field", _wd, ("train_teacher", TINY, "--workdir={wd}",
                                   "--config.train.lrr=1"), "has no field 'lrr'"),
    ("config_lr_inf", _wd, ("train_teacher", TINY, "--workdir={wd}", "--config.train.lr=inf"),
     "config.train.lr=inf"),
    ("config_fps_absurd", _wd, ("train_teacher", TINY, "--workdir={wd}",
                                "--config.generate.fps=1e300"), "above the limit"),
    ("config_vae_dim_mult_int", _wd, ("train_vae", TINY, "--workdir={wd}",
                                      "--config.vae.dim_mult=3"),
     "config.vae.dim_mult=(3,): has 1 levels, a spatial stride of 1"),
    ("config_wrong_type", _wd, ("train_teacher", TINY, "--workdir={wd}",
                                "--config.train.steps=many"), "config"),
    ("unknown_stage", _wd, ("train_teachr", TINY, "--workdir={wd}"), "Did you mean"),
    ("unknown_subcommand", _wd, ("data", "ingestt", TINY, "--workdir={wd}"), "no subcommand"),
    ("unknown_flag", _wd, ("train_teacher", TINY, "--workdir={wd}", "--stepz=3"),
     "Unknown command line flag"),
    ("ingest_without_source", _wd, ("data", "ingest", TINY, "--workdir={wd}"),
     "needs --source"),
    ("ingest_source_missing", _wd, ("data", "ingest", TINY, "--workdir={wd}",
                                    "--source={wd}/nowhere"), "does not exist"),
    # action scripts (the parser: tests/test_fuzz.py)
    ("script_missing", _wd, (*GEN, "--actions={wd}/none.txt"), "nor a readable file"),
    ("script_unknown_builtin", _wd, (*GEN, "--actions=look_arund"), "look_arund"),
    ("script_binary", _wd_with(_bytes_script(bytes(range(256)) * 8)),
     (*GEN, "--actions={script}"), "script"),
    ("script_inf_seconds", _wd_with(_script("inf dolly_in\n")), (*GEN, "--actions={script}"),
     "inf"),
    ("script_nan_speed", _wd_with(_script("2 dolly_in xnan\n")), (*GEN, "--actions={script}"),
     "nan"),
    ("script_absurd_speed", _wd_with(_script("2 dolly_in x1e30\n")),
     (*GEN, "--actions={script}"), "1e30"),
    ("script_absurd_length", _wd_with(_script("1e12 dolly_in\n")), (*GEN, "--actions={script}"),
     "1e12"),
    ("script_empty", _wd_with(_script("")), (*GEN, "--actions={script}"), "script"),
    ("script_unknown_action", _wd_with(_script("2 jump\n")), (*GEN, "--actions={script}"),
     "jump"),
    ("script_negative_seconds", _wd_with(_script("-2 dolly_in\n")), (*GEN, "--actions={script}"),
     "-2"),
    # start images (checked before any model is loaded)
    ("image_missing", _wd, (*GEN, "--actions=look_around", "--image={wd}/none.png"),
     "--image="),
    ("image_not_an_image", _wd_with(lambda tmp: {"img": _file(tmp, "x.png", "text")}),
     (*GEN, "--actions=look_around", "--image={img}"), "cannot read it as an image"),
    ("image_200_megapixels", _wd_with(lambda tmp: {"img": _huge_png(tmp)}),
     (*GEN, "--actions=look_around", "--image={img}"), "--image="),
    ("image_truncated", _wd_with(lambda tmp: {"img": _file(tmp, "t.png", open(
        _png16(tmp), "rb").read()[:200])}), (*GEN, "--actions=look_around", "--image={img}"),
     "--image="),
    # output directories (tried before generating: a generated video is never lost)
    ("out_is_a_file", _wd_with(lambda tmp: {"out": _file(tmp, "out", "x"), "img": _png16(tmp)}),
     (*GEN, "--actions=look_around", "--image={img}", "--out={out}"), "is a file"),
    ("out_under_a_file", _wd_with(lambda tmp: {"out": os.path.join(_file(tmp, "o", "x"), "v"),
                                               "img": _png16(tmp)}),
     (*GEN, "--actions=look_around", "--image={img}", "--out={out}"), "cannot be written"),
    # a workdir without the stage's inputs
    ("generate_untrained_workdir", _wd_with(lambda tmp: {"img": _png16(tmp)}),
     (*GEN, "--actions=look_around", "--image={img}"), "Fix:"),
    ("distill_without_teacher", _wd, ("distill", TINY, "--workdir={wd}"), "Fix:"),
    ("ode_init_without_teacher", _wd, ("ode_init", TINY, "--workdir={wd}"), "Fix:"),
    ("encode_without_vae", _wd, ("encode", TINY, "--workdir={wd}"), "Fix:"),
    ("evaluate_without_estimator", _wd, ("evaluate", TINY, "--workdir={wd}"), "Fix:"),
    ("export_assets_empty_workdir", _wd_with(lambda tmp: {"out": os.path.join(tmp, "assets")}),
     ("export-assets", TINY, "--workdir={wd}", "--out={out}"), "Fix:"),
    ("import_wan_missing_source", _wd, ("import-wan", TINY, "--source={wd}/none",
                                        "--out={wd}/w"), "Fix:"),
    ("pipeline_until_unknown", _wd, ("pipeline", TINY, "--workdir={wd}", "--until=teachr"),
     "is not a pipeline stage"),
]


@pytest.mark.parametrize("setup,args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(relic, tmp_path, setup, args, needle):
  values = setup(str(tmp_path))
  before = _tree(tmp_path)
  r = relic(*(a.format(**values) for a in args), cwd=None)
  err = r.stderr.strip().splitlines()
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = [ln for ln in err if ln.startswith("relic: error:")]
  assert len(lines) == 1, r.stderr[-2000:]
  assert needle in lines[0], lines[0]
  assert _tree(tmp_path) == before  # nothing written, nothing left behind


# ------------------------------------------------------------------------------ the lock

def test_a_second_run_in_a_workdir_is_refused_naming_the_first(relic, tmp_path):
  wd = str(tmp_path / "wd")
  with locked(wd, "train_teacher --config=experiments/tiny.py"):
    r = relic("data", TINY, f"--workdir={wd}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"--workdir={wd} is in use by `relic train_teacher" in r.stderr
    assert f"pid {os.getpid()}" in r.stderr
    # a stage that only reads the run does not lock it
    r = relic("generate", TINY, f"--workdir={wd}", "--actions=look_around")
    assert "in use by" not in r.stderr
  assert not os.path.exists(os.path.join(wd, LOCK_FILE))  # released and removed


def test_a_lock_left_by_a_killed_run_is_taken_over(relic, tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  # what a SIGKILLed run leaves: the file naming it, and no flock (the kernel dropped it)
  (wd / LOCK_FILE).write_text(json.dumps({"command": "distill", "pid": 999999,
                                          "host": "elsewhere", "since": 0}))
  r = relic("data", "ingest", TINY, f"--workdir={wd}", f"--source={wd}/none")
  assert "took over the lock of `relic distill` (pid 999999 on elsewhere" in r.stdout
  assert r.returncode == 2 and "does not exist" in r.stderr  # then the run goes on, and fails
  assert not (wd / LOCK_FILE).exists()


def test_a_refused_run_keeps_the_config_that_wrote_the_checkpoint(relic, tmp_path):
  """A teacher trained with one model; the run with another model is refused on restore and
  leaves config.json and curriculum.json as the first run wrote them (the error's advice, "use
  the config that wrote it", points at them)."""
  wd = str(tmp_path / "wd")
  one = ("--config.train.steps=2", "--config.train.horizon_curriculum=((4, 2), (8, 1))")
  r = relic("train_teacher", TINY, f"--workdir={wd}", *one)
  assert r.returncode == 0, r.stderr[-2000:]
  files = {p: open(os.path.join(wd, "teacher", p)).read()
           for p in ("config.json", "curriculum.json")}
  # resuming the last phase (trained longer) restores it; the finished first phase is skipped
  # after checking its checkpoint's model
  longer = ("--config.train.steps=2", "--config.train.horizon_curriculum=((4, 2), (8, 2))")
  for args in (one, longer):
    r = relic("train_teacher", TINY, f"--workdir={wd}", *args, "--config.model.ffn_dim=96")
    assert r.returncode == 2 and "written by a different model" in r.stderr, r.stderr[-2000:]
    assert "model.ffn_dim: checkpoint 128, config 96" in r.stderr
    assert "Traceback" not in r.stderr
    for p, text in files.items():
      assert open(os.path.join(wd, "teacher", p)).read() == text, p


# ------------------------------------------------------------------------------ checkpoints

FAIL_AT_STEP_4 = """
import os
from relic_jax import checkpoint
_save = checkpoint.Checkpointer.save
def save(self, step, *args):
  if step == 4:  # the disk goes away between two checkpoints: checkpoints/ becomes a file
    self.wait()
    os.rename(self.directory, self.directory + ".gone")
    open(self.directory, "w").close()
  return _save(self, step, *args)
checkpoint.Checkpointer.save = save
"""


def test_a_failed_checkpoint_write_stops_the_run_with_one_message(relic, tmp_path):
  wd = str(tmp_path / "wd")
  r = relic("train_teacher", TINY, f"--workdir={wd}", "--config.train.steps=40",
            "--config.train.checkpoint_every=2", "--config.train.log_every=1",
            "--config.train.horizon_curriculum=()", prelude=FAIL_AT_STEP_4)
  assert r.returncode == 2, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and "ERROR:absl" not in r.stderr, r.stderr[-3000:]
  line, = [ln for ln in r.stderr.splitlines() if ln.startswith("relic: error:")]
  assert "writing the checkpoint of step 4 to" in line and "Fix:" in line, line
  assert "rerun the same command: it resumes from" in line
  # it stopped there: the background write of step 4 failed, and the run went no further
  # than its next checkpoint (a finished write's failure is checked after every step: a step
  # here is shorter than the write)
  with open(os.path.join(wd, "teacher", "metrics.jsonl")) as f:
    steps = [json.loads(x)["step"] for x in f]
  assert 4 <= max(steps) <= 6, steps


def test_an_unwritable_workdir_is_refused_before_anything(tmp_path, monkeypatch):
  """Permissions do not stop root (who runs these tests), so the refusal of a read-only or
  unwritable workdir is checked with the write failing as it fails there."""
  from relic_jax import workdir as workdir_lib  # noqa: PLC0415

  real_open = open

  def read_only(path, *args, **kwargs):
    if ".relic-write-test-" in str(path):
      raise PermissionError(13, "Permission denied", str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr("builtins.open", read_only)
  wd = str(tmp_path / "new" / "wd")
  with pytest.raises(workdir_lib.WorkdirError, match=r"--workdir=.*/new/wd cannot be written "
                     r"\(Permission denied\)\. Fix: pass a directory you can write to"):
    with workdir_lib.locked(wd, "train_teacher"):
      raise AssertionError("the run started in a workdir it cannot write")
  assert os.listdir(tmp_path) == []  # the directories it tried are gone again
