"""`relic sweep`: ablations declared in experiments/sweeps/*.py, run as pipelines that share the
baseline's stages, compared in one table.

A sweep file defines `get_sweep()` (or `get_sweep(arg)`, loaded as `file.py:arg`) returning a
plain dict (plain, because its override keys are dotted field names, which a ConfigDict cannot
hold as keys):

  {"name": "memory",                    # optional: default the file's stem (+ "_<arg>")
   "description": "...",                # optional: the table's title
   "base": {"config": "experiments/tiny.py",   # the experiment file (":arg" allowed), relative
                                               # to the current or the repository directory
            "overrides": {"a.b": v},    # optional: dotted field -> value, for every run
            "description": "..."},      # the baseline's row
   "variants": {                        # in table order; each name is a directory name
       "window_3": {"overrides": {"memory.window": 3},
                    "description": "...",         # one line, for the table
                    "from_stage": "evaluate"}}}   # optional: else inferred (first_stage)

A sweep's workdir:
  base/                 the baseline: every stage of the pipeline
  <variant>/            the stage directories before its first stage are relative symlinks to
                        base/ (their pipeline/<stage>.json markers copied from base/); the
                        pipeline runs the rest here
  <run>/sweep_recipe.json  the run's recipe (config, overrides, first stage), written when it
                        starts
  <run>/sweep_done.json the recipe and the run's metrics, written when it has finished
  sweep.json            the sweep as loaded; comparison.md, comparison.csv,
                        comparison_<metric>.png: the results

A rerun skips finished runs and resumes an interrupted one (the pipeline skips its finished
stages). A run whose recipe changed since it started is refused (SweepError): its directory
holds results, or links, of other settings; delete the directory to rerun it.
"""

import csv
import dataclasses
import difflib
import importlib.util
import io
import json
import math
import os
import re
import time
from collections.abc import Mapping

import ml_collections

from relic_jax import pipeline
from relic_jax.config import ConfigError, validate
from relic_jax.evaluation import report
from relic_jax.io_utils import write_bytes_atomic, write_json_atomic
from relic_jax.stages import REGISTRY
from relic_jax.workdir import Workdir

BASE = "base"
# The "relic" method's metrics in the table: the evaluation's metrics marked `sweep`.
METRICS = tuple(m for m in report.METRICS if m.sweep)
# The reference column: the same run's window-plus-frame-0 baseline at late revisits (method,
# metric key): what the memory adds beyond keeping the input image.
REFERENCE = ("window_sink", "late_revisit_psnr")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")
_SWEEP_KEYS = ("name", "description", "base", "variants")
_BASE_KEYS = ("config", "overrides", "description")
_VARIANT_KEYS = ("overrides", "description", "from_stage")
_OUTPUTS = ("comparison.md", "comparison.csv", "sweep.json")
RECIPE, DONE = "sweep_recipe.json", "sweep_done.json"  # per run: started, finished


class SweepError(ValueError):
  """A sweep file or a sweep's workdir is wrong; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  description: str
  overrides: dict          # dotted field -> value
  from_stage: str | None   # explicit first stage; None: inferred


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  path: str                # the sweep file, as given
  description: str
  config: str              # the experiment file, as the sweep names it
  experiment: ml_collections.ConfigDict  # its config, before any override
  base: Variant            # name "base"; its overrides apply to every run
  variants: dict           # name -> Variant, in table order


# ------------------------------------------------------------------------------------- loading

def _exec_file(path: str, what: str):
  spec = importlib.util.spec_from_file_location(f"relic_{what}_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _resolve_config(config: str, sweep_file: str) -> str:
  """The experiment file: relative to the current directory, else to the sweep file's
  directory or one of its parents (the repository)."""
  file = config.partition(":")[0]
  candidates, d = [file], os.path.dirname(os.path.abspath(sweep_file))
  while not os.path.isabs(file):
    candidates.append(os.path.join(d, file))
    if os.path.dirname(d) == d:
      break
    d = os.path.dirname(d)
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise SweepError(f"{sweep_file}: base config {config!r} not found (relative to "
                   f"{os.getcwd()} or the sweep file's directories). Fix: name an existing "
                   "experiment file, e.g. 'experiments/tiny.py'.")


def _check_keys(where: str, d, allowed, sweep_file: str) -> None:
  if not isinstance(d, Mapping):
    raise SweepError(f"{sweep_file}: {where} is a {type(d).__name__}, not a dict. Fix: write "
                     "it as a dict (see relic_jax/sweep.py for the format).")
  unknown = sorted(set(d) - set(allowed))
  if unknown:
    raise SweepError(f"{sweep_file}: {where} has unknown keys {unknown}. Fix: use only "
                     f"{', '.join(allowed)}.")


def _check_name(name, what: str, sweep_file: str) -> None:
  if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
    raise SweepError(f"{sweep_file}: {what} {name!r} is not a valid directory name. Fix: use "
                     "letters, digits, '_', '-', '.' or '+', starting with a letter or digit "
                     "(at most 100 characters), e.g. 'window_3'.")


def _describe_overrides(overrides: dict) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "no overrides"


def _variant(name: str, raw, sweep_file: str, keys=_VARIANT_KEYS) -> Variant:
  where = "base" if name == BASE else f"variant {name!r}"
  _check_keys(where, raw, keys, sweep_file)
  overrides = raw.get("overrides") or {}
  if not isinstance(overrides, Mapping) or not all(isinstance(k, str) and k for k in overrides):
    raise SweepError(f"{sweep_file}: {where}: overrides must be a dict of dotted field names "
                     f"to values, got {overrides!r}. Fix: e.g. {{'memory.window': 3}}.")
  overrides = {(k[len("config."):] if k.startswith("config.") else k): v
               for k, v in overrides.items()}
  from_stage = raw.get("from_stage")
  if from_stage is not None and from_stage not in pipeline.PIPELINE_STAGES:
    raise SweepError(f"{sweep_file}: {where}: unknown from_stage {from_stage!r}. Fix: use one "
                     f"of {', '.join(pipeline.PIPELINE_STAGES)}, or leave it out to infer it.")
  desc = raw.get("description")
  if desc is not None and not isinstance(desc, str):
    raise SweepError(f"{sweep_file}: {where}: description must be a string, got {desc!r}.")
  desc = " ".join((desc or _describe_overrides(overrides)).split())
  return Variant(name, desc, dict(overrides), from_stage)


def _apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict, where: str,
                     sweep: "Sweep") -> None:
  for dotted, value in overrides.items():
    parts = dotted.split(".")
    node, prefix = cfg, "config"
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        raise SweepError(f"{sweep.path}: {where}: override {dotted!r}: {prefix} is not a group "
                         f"of fields (it holds {node!r}). Fix: override {prefix} itself.")
      if part not in node:
        fields = sorted(node.keys())
        close = difflib.get_close_matches(part, fields, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise SweepError(f"{sweep.path}: {where}: override {dotted!r}: {prefix} has no field "
                         f"'{part}'.{hint} Fields of {prefix}: {', '.join(fields)}. Fix: "
                         f"override an existing field (see {sweep.config} and "
                         "relic_jax/config/base.py).")
      if i < len(parts) - 1:
        node, prefix = node[part], f"{prefix}.{part}"
        continue
      old = node[part]
      try:
        node[part] = value
      except (TypeError, ValueError) as e:
        raise SweepError(f"{sweep.path}: {where}: override {dotted}={value!r}: {e}. Fix: give "
                         f"a value of the field's type ({type(old).__name__}, now "
                         f"{old!r}).") from e


def load_sweep(path: str) -> Sweep:
  """Loads and checks a sweep file (`file.py` or `file.py:arg`): every run's config is built
  and validated, so a bad override fails now, not after the baseline's training."""
  file, _, arg = path.partition(":")
  if not os.path.isfile(file):
    raise SweepError(f"no sweep file {file!r} (relative to {os.getcwd()}). Fix: pass an "
                     "existing file, e.g. experiments/sweeps/memory.py.")
  try:
    module = _exec_file(file, "sweep")
  except Exception as e:
    raise SweepError(f"cannot load sweep file {file}: {type(e).__name__}: {e}. Fix: make the "
                     "file importable on its own (it may import only installed packages).") from e
  if not callable(getattr(module, "get_sweep", None)):
    raise SweepError(f"{file} defines no get_sweep(). Fix: define get_sweep() returning the "
                     "sweep dict (see relic_jax/sweep.py for the format).")
  raw = module.get_sweep(arg) if arg else module.get_sweep()
  _check_keys("get_sweep()", raw, _SWEEP_KEYS, file)
  stem = os.path.splitext(os.path.basename(file))[0]
  name = raw.get("name") or (f"{stem}_{arg}" if arg else stem)
  _check_name(name, "sweep name", file)
  base_raw = raw.get("base")
  _check_keys("base", base_raw, _BASE_KEYS, file)
  config = base_raw.get("config")
  if not isinstance(config, str) or not config:
    raise SweepError(f"{file}: base has no config file. Fix: set base['config'], e.g. "
                     "'experiments/tiny.py'.")
  config_file = _resolve_config(config, file)
  config_arg = config.partition(":")[2]
  try:
    cfg_module = _exec_file(config_file, "config")
    experiment = cfg_module.get_config(config_arg) if config_arg else cfg_module.get_config()
  except Exception as e:
    raise SweepError(f"{file}: cannot load the base config {config}: {type(e).__name__}: {e}. "
                     "Fix: pass an experiment file with get_config().") from e
  base = _variant(BASE, {k: base_raw[k] for k in ("overrides", "description") if k in base_raw},
                  file, keys=("overrides", "description"))
  variants_raw = raw.get("variants")
  if not isinstance(variants_raw, Mapping) or not variants_raw:
    raise SweepError(f"{file}: no variants. Fix: set 'variants' to a dict of name -> "
                     "{'overrides': {...}, 'description': '...'}.")
  variants = {}
  for vname, vraw in variants_raw.items():
    _check_name(vname, "variant name", file)
    if vname == BASE or vname in _OUTPUTS or vname.startswith("comparison_"):
      raise SweepError(f"{file}: variant name {vname!r} is reserved (the baseline's directory "
                       "or a sweep output). Fix: rename the variant.")
    variants[vname] = _variant(vname, vraw, file)
  sweep = Sweep(name=name, path=path, description=" ".join(str(raw.get("description", "")).split()),
                config=config, experiment=experiment, base=base, variants=variants)
  for vname in (BASE, *variants):
    try:
      validate(variant_config(sweep, vname))
    except ConfigError as e:
      where = "base" if vname == BASE else f"variant {vname!r}"
      raise SweepError(f"{file}: {where}: {e}") from e
  return sweep


def variant_config(sweep: Sweep, name: str) -> ml_collections.ConfigDict:
  """The config of a run: the experiment + the base overrides + the variant's overrides
  ("base": none)."""
  if name != BASE and name not in sweep.variants:
    raise SweepError(f"sweep {sweep.name} has no variant {name!r}. Fix: use one of "
                     f"{', '.join((BASE, *sweep.variants))}.")
  cfg = sweep.experiment.copy_and_resolve_references()
  _apply_overrides(cfg, sweep.base.overrides, "base overrides", sweep)
  if name != BASE:
    _apply_overrides(cfg, sweep.variants[name].overrides, f"variant {name!r}", sweep)
  return cfg


# ------------------------------------------------------------------------------- first stage

def changed_fields(base_cfg, variant_cfg) -> list:
  """The dotted fields whose values differ (or exist in one config only), sorted."""
  a, b = pipeline.flatten_config(base_cfg), pipeline.flatten_config(variant_cfg)
  return sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k] != b[k])


def stage_of_field(field: str) -> str:
  """The first stage a dotted field feeds (the stage records' `inputs`, longest prefix); a
  field no prefix covers feeds the first stage of all, to be safe."""
  return pipeline.stage_of_prefix(field) or pipeline.PIPELINE_STAGES[0]


def first_stage(base_cfg, variant_cfg, from_stage: str | None = None) -> str | None:
  """The earliest stage (PIPELINE_STAGES order) whose inputs differ between the configs; an
  explicit from_stage wins. None: the configs are equal (nothing to rerun)."""
  if from_stage is not None:
    if from_stage not in pipeline.PIPELINE_STAGES:
      raise SweepError(f"unknown from_stage {from_stage!r}. Fix: use one of "
                       f"{', '.join(pipeline.PIPELINE_STAGES)}.")
    return from_stage
  stages = {stage_of_field(f) for f in changed_fields(base_cfg, variant_cfg)}
  return min(stages, key=pipeline.PIPELINE_STAGES.index) if stages else None


# --------------------------------------------------------------------------------- running

def _jsonable(x):
  return json.loads(json.dumps(x, default=lambda o: o.to_dict() if hasattr(o, "to_dict")
                               else str(o)))


def _read_json(path: str, what: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SweepError(f"cannot read {what} {path}: {e}. Fix: delete the file (the run is then "
                     "rerun, resuming from the pipeline's finished stages).") from e


def _is_done(run_dir: str, recipe: dict, is_base: bool) -> bool:
  """True if the run finished with this recipe; raises if it ran, or started, with another."""
  started = os.path.join(run_dir, RECIPE)
  if os.path.exists(started):
    old = _read_json(started, "the run's recipe")
    if old != recipe:
      diff = "; ".join(f"{k}: was {old.get(k)!r}, now {recipe.get(k)!r}"
                       for k in sorted(set(old) | set(recipe)) if old.get(k) != recipe.get(k))
      scope = (f"the whole sweep directory {os.path.dirname(run_dir)} (every variant links "
               "into the baseline)" if is_base else run_dir)
      raise SweepError(f"{run_dir} holds a run of other settings ({diff}). Fix: delete {scope} "
                       "to rerun it with the sweep file's settings, or pass another --workdir.")
  done = os.path.join(run_dir, DONE)
  if not (os.path.exists(done) and os.path.exists(_metrics_path(run_dir))):
    return False
  return _read_json(done, "the run's done marker").get("recipe") == recipe


def _metrics_path(run_dir: str) -> str:
  return os.path.join(Workdir(root=run_dir).results, "metrics.json")


def _read_metrics(run_dir: str) -> dict:
  path = _metrics_path(run_dir)
  if not os.path.exists(path):
    raise SweepError(f"the pipeline in {run_dir} finished without {path}. Fix: check that its "
                     "evaluate stage ran (config.evaluate.methods), then rerun the sweep.")
  metrics = _read_json(path, "the metrics")
  if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
    raise SweepError(f"{path} is not a dict of method -> metric -> value. Fix: delete "
                     f"{os.path.dirname(path)} and rerun the sweep to evaluate again.")
  return metrics


def _link_stages(base_dir: str, run_dir: str, stages) -> None:
  """Relative symlinks run_dir/<d> -> base/<d> for the directories of `stages` (their records'
  `dirs`), and copies of the baseline's pipeline/<stage>.json markers, so the pipeline never
  reruns them here."""
  base, run = Workdir(root=base_dir), Workdir(root=run_dir)
  os.makedirs(run.pipeline, exist_ok=True)
  for stage in stages:
    for d in REGISTRY[stage].dirs:
      src, dst = base.stage_dir(d), run.stage_dir(d)
      if not os.path.lexists(src):
        continue
      target = os.path.relpath(src, run_dir)
      if os.path.islink(dst) and os.readlink(dst) == target:
        continue
      if os.path.lexists(dst):
        raise SweepError(f"{dst} exists but is not the link to the baseline's {d} ({target}) "
                         f"that this run reuses. Fix: delete {run_dir} and rerun the sweep.")
      tmp = f"{dst}.tmp-{os.getpid()}"
      if os.path.lexists(tmp):
        os.remove(tmp)
      os.symlink(target, tmp)
      os.replace(tmp, dst)
    marker, base_marker = run.marker(stage), base.marker(stage)
    if os.path.exists(base_marker):
      with open(base_marker, "rb") as f:
        write_bytes_atomic(marker, f.read())
    else:
      write_json_atomic(marker, {"stage": stage, "linked_from": os.path.relpath(base_dir,
                                                                               run_dir)})


def _stage_label(first: str | None, is_base: bool) -> str:
  if is_base:
    return "all stages"
  return first if first else "nothing (same config as base)"


def run_sweep(path, workdir: str, progress: bool = True) -> dict:
  """Runs the baseline pipeline in <workdir>/base, then each variant in <workdir>/<variant>
  from its first stage on (earlier stages linked to the baseline's), skipping finished runs;
  writes the comparison table, CSV and plots. `path` is a sweep file or a loaded Sweep."""
  sweep = path if isinstance(path, Sweep) else load_sweep(path)
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, "sweep.json"), _describe(sweep))
  base_cfg = variant_config(sweep, BASE)
  base_dir = os.path.join(workdir, BASE)
  runs = [sweep.base, *sweep.variants.values()]
  rows, t0 = [], time.time()
  for i, v in enumerate(runs, 1):
    is_base = v.name == BASE
    cfg = base_cfg if is_base else variant_config(sweep, v.name)
    first = (pipeline.PIPELINE_STAGES[0] if is_base
             else first_stage(base_cfg, cfg, v.from_stage))
    recipe = _jsonable({"config": sweep.config, "base_overrides": sweep.base.overrides,
                        "overrides": {} if is_base else v.overrides,
                        "from_stage": v.from_stage, "first_stage": first})
    run_dir = os.path.join(workdir, v.name)
    label = _stage_label(first, is_base)
    head = f"[relic] sweep {sweep.name}: variant {i}/{len(runs)} {v.name}"
    if _is_done(run_dir, recipe, is_base):
      print(f"{head} (done earlier: skipped)", flush=True)
      status, metrics = "skipped", _read_metrics(run_dir)
    else:
      verb = "run" if is_base else "rerun from"
      print(f"{head} ({verb} {label})", flush=True)
      os.makedirs(run_dir, exist_ok=True)
      write_json_atomic(os.path.join(run_dir, RECIPE), recipe)
      start = pipeline.PIPELINE_STAGES.index(first) if first else len(pipeline.PIPELINE_STAGES)
      if not is_base:
        _link_stages(base_dir, run_dir, pipeline.PIPELINE_STAGES[:start])
      stages = tuple(pipeline.PIPELINE_STAGES[start:])
      t_run = time.time()
      if stages:
        try:
          pipeline.run_pipeline(cfg, run_dir, stages=stages, progress=progress)
        except BaseException:
          print(f"[relic] sweep {sweep.name}: {v.name} stopped; rerun the same command to "
                "resume it (finished runs are skipped)", flush=True)
          raise
      status, metrics = "ran", _read_metrics(run_dir)
      write_json_atomic(os.path.join(run_dir, DONE), {"recipe": recipe, "metrics": metrics,
                                                      "seconds": round(time.time() - t_run, 3)})
    rows.append({"variant": v.name, "description": v.description, "rerun_from": label,
                 "status": status, "metrics": metrics.get("relic", {}),
                 "reference": metrics.get(REFERENCE[0], {}).get(REFERENCE[1])})
  report = write_report(sweep, workdir, rows)
  print(f"[relic] sweep {sweep.name}: {len(rows)} runs in {time.time() - t0:.1f}s "
        f"({sum(r['status'] == 'ran' for r in rows)} run now); table {report['table']}, "
        f"CSV {report['csv']}, plots "
        + (", ".join(report["plots"]) if report["plots"] else "none (no metric values)"),
        flush=True)
  return {"workdir": workdir, "rows": rows, **report}


def main_cli(path: str, workdir: str | None = None, progress: bool = True) -> dict:
  """`relic sweep <file.py[:arg]> [--workdir=DIR]`; the workdir defaults to
  runs/sweeps/<sweep name>. Raises SweepError for a bad sweep file or workdir."""
  sweep = load_sweep(path)
  return run_sweep(sweep, workdir or os.path.join("runs", "sweeps", sweep.name),
                   progress=progress)


def _describe(sweep: Sweep) -> dict:
  return _jsonable({
      "name": sweep.name, "file": sweep.path, "description": sweep.description,
      "config": sweep.config, "base": dataclasses.asdict(sweep.base),
      "variants": [dataclasses.asdict(v) for v in sweep.variants.values()]})


# ---------------------------------------------------------------------------------- report

def _number(x):
  """A float, or None for a missing or non-numeric value."""
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  return float(x)


def _fmt(x, spec: str) -> str:
  x = _number(x)
  if x is None:
    return "n/a"
  return format(x, spec) if math.isfinite(x) else str(x)


def _best(rows, key: str, higher: bool):
  vals = [v for v in (_number(r["metrics"].get(key)) for r in rows)
          if v is not None and not math.isnan(v)]
  if len(set(vals)) < 2:  # one value, or all equal: nothing stands out
    return None
  return max(vals) if higher else min(vals)


def _md_cell(s: str) -> str:
  return s.replace("|", "\\|")


def _extra_metrics(rows) -> list:
  main = {m.key for m in METRICS}
  return sorted({k for r in rows for k, v in r["metrics"].items()
                 if k not in main and _number(v) is not None})


def _sweep_fmt(m: report.Metric) -> str:
  return m.sweep_fmt or m.fmt


def _table(sweep: Sweep, rows) -> str:
  has_ref = any(_number(r["reference"]) is not None for r in rows)
  ref = report.BY_KEY[REFERENCE[1]]
  head = ["variant", "description", "rerun from"] + [
      f"{m.title} {'↑' if m.higher else '↓'}" for m in METRICS]
  if has_ref:
    head.append(f"{REFERENCE[0]} {ref.title}")
  lines = [f"# Sweep `{sweep.name}`" + (f": {sweep.description}" if sweep.description else ""),
           "",
           f"Base config `{sweep.config}` with "
           f"{_md_cell(_describe_overrides(sweep.base.overrides))}. Each run lives in "
           "`<workdir>/<variant>`; the metrics are the `relic` method's (results/metrics.json). "
           "↑ higher is better, ↓ lower is better, the best in bold."
           + (" The last column is the same run's window_sink baseline (the window and frame 0, no "
              "other memory)."
              if has_ref else ""),
           "",
           "| " + " | ".join(head) + " |",
           "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
  best = {m.key: _best(rows, m.key, m.higher) for m in METRICS}
  for r in rows:
    cells = [f"`{r['variant']}`", _md_cell(r["description"]), r["rerun_from"]]
    for m in METRICS:
      cell = _fmt(r["metrics"].get(m.key), _sweep_fmt(m))
      v = _number(r["metrics"].get(m.key))
      cells.append(f"**{cell}**" if v is not None and v == best[m.key] else cell)
    if has_ref:
      cells.append(_fmt(r["reference"], _sweep_fmt(ref)))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _csv(rows) -> str:
  keys = [m.key for m in METRICS] + _extra_metrics(rows)
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["variant", "description", "rerun_from", *keys, "_".join(REFERENCE)])
  for r in rows:
    vals = [_number(r["metrics"].get(k)) for k in keys] + [_number(r["reference"])]
    w.writerow([r["variant"], r["description"], r["rerun_from"],
                *("" if v is None else repr(v) for v in vals)])
  return buf.getvalue()


def _plot(sweep: Sweep, rows, key: str, title: str, higher: bool) -> bytes | None:
  """A bar per run (the baseline grey, with a dashed line at its value); for late revisit PSNR also
  the window_sink baseline's. None if no run has a finite value."""
  # matplotlib: a heavy optional dependency (slow to import), imported when a plot is drawn
  from matplotlib.figure import Figure  # noqa: PLC0415
  vals = [_number(r["metrics"].get(key)) for r in rows]
  vals = [v if v is not None and math.isfinite(v) else None for v in vals]
  if all(v is None for v in vals):
    return None
  refs = None
  if key == REFERENCE[1]:
    refs = [_number(r["reference"]) for r in rows]
    refs = [v if v is not None and math.isfinite(v) else None for v in refs]
    if all(v is None for v in refs):
      refs = None
  n = len(rows)
  fig = Figure(figsize=(max(4.0, 0.9 * n + 1.5), 3.6), dpi=100)
  ax = fig.add_subplot()
  width = 0.4 if refs else 0.7
  xs = list(range(n))
  colors = ["0.6" if r["variant"] == BASE else "C0" for r in rows]
  bars = ax.bar([x - (width / 2 if refs else 0) for x in xs], [v or 0.0 for v in vals], width,
                color=colors)
  for b, v in zip(bars, vals):
    ax.annotate("n/a" if v is None else f"{v:.3g}", (b.get_x() + b.get_width() / 2,
                b.get_height()), ha="center", va="bottom", fontsize=7)
  if refs:
    from matplotlib.patches import Patch  # noqa: PLC0415  (matplotlib, as above)
    ax.bar([x + width / 2 for x in xs], [v or 0.0 for v in refs], width, color="C1")
    ax.legend(handles=[Patch(color="C0", label="relic (baseline grey)"),
                       Patch(color="C1", label="window_sink, same run")], fontsize=7)
  if vals[0] is not None and rows[0]["variant"] == BASE:
    ax.axhline(vals[0], color="0.3", linestyle="--", linewidth=0.8)
  ax.set_xticks(xs)
  ax.set_xticklabels([r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
  ax.set_ylabel(title)
  ax.set_title(f"sweep {sweep.name}: {title} ({'higher' if higher else 'lower'} is better)",
               fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def write_report(sweep: Sweep, workdir: str, rows) -> dict:
  """comparison.md, comparison.csv and comparison_<metric>.png in workdir (atomic writes)."""
  table, csv_path = os.path.join(workdir, "comparison.md"), os.path.join(workdir, "comparison.csv")
  write_bytes_atomic(table, _table(sweep, rows).encode())
  write_bytes_atomic(csv_path, _csv(rows).encode())
  plots = []
  for m in METRICS:
    png = _plot(sweep, rows, m.key, m.title, m.higher)
    out = os.path.join(workdir, f"comparison_{m.key}.png")
    if png is not None:
      write_bytes_atomic(out, png)
      plots.append(out)
    elif os.path.exists(out):  # from an earlier run that had values
      os.remove(out)
  return {"table": table, "csv": csv_path, "plots": plots}
