"""Runs `relic` commands for the table-driven error tests without starting Python and importing
JAX for each: this process imports relic_jax.cli once (no device is touched), then forks one
child per request. A request is one JSON line {"argv": [...], "cwd": ..., "env": {...}} on
stdin, with an optional "prelude" (Python run in the child first: a test's fault injection);
the answer one JSON line {"code", "stdout", "stderr"}.

  python -m tests.cli_forker   (started by tests.helpers.CliForker)
"""

import json
import os
import sys
import tempfile


def _child(req: dict, out_path: str, err_path: str) -> None:
  out = os.open(out_path, os.O_WRONLY)
  err = os.open(err_path, os.O_WRONLY)
  os.dup2(out, 1)
  os.dup2(err, 2)
  code = 1
  try:
    os.chdir(req.get("cwd") or os.getcwd())
    os.environ.update(req.get("env") or {})
    sys.argv = ["relic", *req["argv"]]
    if req.get("prelude"):
      exec(req["prelude"], {})  # noqa: S102 (test-only fault injection)
    from relic_jax import cli  # noqa: PLC0415 (imported by the parent already)
    cli.run()
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # noqa: BLE001 (a traceback is what the tests look for)
    import traceback  # noqa: PLC0415
    traceback.print_exc()
    code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
  from relic_jax import cli  # noqa: F401, PLC0415 (the import every child shares)
  tmp = tempfile.mkdtemp(prefix="relic-forker-")
  answers = os.fdopen(os.dup(1), "w")
  for line in sys.stdin:
    req = json.loads(line)
    out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    for p in (out_path, err_path):
      open(p, "w").close()
    pid = os.fork()
    if pid == 0:
      _child(req, out_path, err_path)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out_path, errors="replace") as f, open(err_path, errors="replace") as g:
      answers.write(json.dumps({"code": code, "stdout": f.read(), "stderr": g.read()}) + "\n")
    answers.flush()


if __name__ == "__main__":
  main()
