"""Ablation sweeps (relic_jax/sweep.py) with a fake pipeline: loading and checking the shipped
sweep files, first-stage inference, the baseline-linked variant workdirs, the comparison table,
CSV and plots, resuming, and the error paths. No training."""

import csv
import json
import os

import pytest

from relic_jax import pipeline, sweep as sweep_lib
from relic_jax.config import validate
from relic_jax.config.base import parent_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tiny.py")
SWEEPS = os.path.join(REPO, "experiments", "sweeps")


def _write_sweep(tmp_path, variants, base_overrides=None, name="abl", file="abl.py"):
  spec = {"name": name, "description": "a test sweep",
          "base": {"config": TINY, "overrides": base_overrides or {},
                   "description": "the baseline"},
          "variants": variants}
  path = tmp_path / file
  path.write_text(f"def get_sweep():\n  return {spec!r}\n")
  return str(path)


VARIANTS = {
    # an inference-time variant: the baseline's student, evaluated with another window
    "window_3": {"overrides": {"memory.window": 3}, "description": "window of 3",
                 "from_stage": "evaluate"},
    "naive": {"overrides": {"distill.backprop": "naive"}, "description": "naive | backprop"},
    "same": {"overrides": {"memory.window": 6}, "description": "the baseline again"},
}


def _fake_metrics(cfg):
  """Values that depend on the config, so the table shows which run produced which row."""
  w = cfg.memory.window
  relic = {"late_revisit_psnr": 5.0 + w, "late_revisit_ssim": 0.4 + w / 100,
           "revisit_psnr": 10.0 + w, "revisit_ssim": 0.5 + w / 100, "rpe_trans": 0.1 * w,
           "rpe_rot": None if cfg.distill.backprop == "naive" else 2.0,
           "fps": 30.0 if cfg.distill.backprop == "replayed" else 25.0, "extra_metric": 7.0}
  return {"relic": relic, "window": {"revisit_psnr": 5.0 + w},
          "window_sink": {"late_revisit_psnr": 2.0 + w}, "full": {"revisit_psnr": 1.0},
          "copy_last": {"revisit_psnr": None}}


@pytest.fixture
def fake_pipeline(monkeypatch):
  """run_pipeline that writes each stage's directories, a marker and fake metrics; records
  (run name, stages) per call; `fail[(run, stage)]` makes it raise at that stage."""
  calls, fail = [], {}

  def run_pipeline(cfg, workdir, stages=None, progress=True):
    del progress
    stages = tuple(stages or pipeline.PIPELINE_STAGES)
    name = os.path.basename(workdir)
    calls.append((name, stages))
    for stage in stages:
      marker = os.path.join(workdir, "pipeline", f"{stage}.json")
      if os.path.exists(marker):
        continue
      if (name, stage) in fail:
        raise RuntimeError(f"fake failure of {name} at {stage}")
      for d in pipeline.STAGE_DIRS[stage]:
        assert not os.path.islink(os.path.join(workdir, d)), "wrote into a linked stage"
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
        with open(os.path.join(workdir, d, "made_by"), "w") as f:
          f.write(name)
      if stage == "evaluate":
        with open(os.path.join(workdir, "results", "metrics.json"), "w") as f:
          json.dump(_fake_metrics(cfg), f)
      os.makedirs(os.path.dirname(marker), exist_ok=True)
      with open(marker, "w") as f:
        json.dump({"stage": stage, "run": name}, f)
    return {"metrics": _fake_metrics(cfg), "results": os.path.join(workdir, "results")}

  monkeypatch.setattr(pipeline, "run_pipeline", run_pipeline, raising=False)
  return calls, fail


# ------------------------------------------------------------------------- shipped sweeps

@pytest.mark.parametrize("file,first,fields", [
    ("memory.py", "ode_init", {"memory.mode", "memory.window", "memory.schedule", "memory.pool"}),
    ("memory.py:inference", "evaluate", {"memory.mode", "memory.window", "memory.schedule",
                                         "memory.pool"}),
    ("conditioning.py", "train_teacher", {"model.pose_dim", "model.action_dim"}),
    ("backprop.py", "distill", {"distill.backprop", "distill.naive_remat"}),
    ("kv_dtype.py", "evaluate", {"memory.kv_dtype"}),
])
def test_shipped_sweeps_build_valid_configs(file, first, fields, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # the base config is found relative to the repository
  s = sweep_lib.load_sweep(os.path.join(SWEEPS, file))
  base = sweep_lib.variant_config(s, "base")
  validate(base)
  for dotted, value in s.base.overrides.items():
    assert _get(base, dotted) == value
  assert s.variants
  for name, v in s.variants.items():
    cfg = sweep_lib.variant_config(s, name)
    validate(cfg)
    assert v.description and "\n" not in v.description
    for dotted, value in v.overrides.items():
      assert _get(cfg, dotted) == (tuple(value) if isinstance(value, list) else value)
    changed = set(sweep_lib.changed_fields(base, cfg))
    assert changed and changed <= fields, (name, changed)
    assert sweep_lib.first_stage(base, cfg, v.from_stage) == first, name


def test_conditioning_sweep_reads_the_latent_cache_in_every_run():
  s = sweep_lib.load_sweep(os.path.join(SWEEPS, "conditioning.py"))
  dims = {}
  for name in ("base", *s.variants):
    cfg = sweep_lib.variant_config(s, name)
    assert (cfg.data.source, cfg.model.text_encoder) == ("latents", "bytes")
    dims[name] = (cfg.model.pose_dim, cfg.model.action_dim)
  assert dims == {"base": (12, 13), "no_pose": (0, 13), "no_action": (12, 0),
                  "no_conditioning": (0, 0)}


def test_memory_sweep_covers_the_schedules_and_windows():
  s = sweep_lib.load_sweep(os.path.join(SWEEPS, "memory.py"))
  got = {n: sweep_lib.variant_config(s, n).memory for n in ("base", *s.variants)}
  assert got["base"].mode == "relic" and got["base"].window == 6
  assert got["base"].schedule[:4] == (1, 4, 2, 4)
  assert got["uniform_2"].schedule == (2,) and got["uniform_4"].schedule == (4,)
  assert got["full"].mode == "full" and got["window_only"].mode == "window"
  assert {got[n].window for n in ("window_3", "window_12")} == {3, 12}


def _get(cfg, dotted):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


# ---------------------------------------------------------------------------- first stage

@pytest.fixture(scope="module")
def tiny():
  return parent_config(TINY, "tiny")


@pytest.mark.parametrize("changes,expected", [
    ({"memory.window": 3}, "ode_init"),            # the student trains with its memory
    ({"memory.kv_dtype": "bfloat16"}, "ode_init"),
    ({"generate.timesteps": (1000, 500)}, "ode_init"),
    ({"memory.max_frames": 400}, "evaluate"),       # capacity only
    ({"generate.decoder": "vae"}, "evaluate"),     # tiny decodes with its tiny decoder
    ({"distill.backprop": "naive"}, "distill"),
    ({"ode_init.solver_steps": 8}, "ode_init"),
    ({"model.pose_dim": 12}, "train_teacher"),
    ({"train.lr": 1e-4}, "train_teacher"),
    ({"vae.kl_weight": 1e-3}, "train_vae"),
    ({"data.latent_frames": 7}, "encode"),
    ({"data.gen.num_episodes": 4}, "data"),            # longest prefix: data.gen, not data
    ({"evaluate.scripts": ("pan_360",)}, "evaluate"),
    ({"evaluate.pose_estimator.steps": 10}, "pose_estimator"),
    ({"memory.window": 3, "model.dim": 32, "distill.gen_lr": 1.0}, "train_teacher"),
    ({"name": "renamed"}, pipeline.PIPELINE_STAGES[0]),  # no prefix covers it: everything
    ({}, None),
])
def test_first_stage_is_the_earliest_changed_input(tiny, changes, expected):
  variant = tiny.copy_and_resolve_references()
  for dotted, value in changes.items():
    *groups, leaf = dotted.split(".")
    node = variant
    for g in groups:
      node = node[g]
    node[leaf] = value
  assert sweep_lib.first_stage(tiny, variant) == expected
  assert sweep_lib.first_stage(tiny, variant, from_stage="distill") == "distill"


def test_unknown_from_stage_is_refused(tiny, tmp_path):
  with pytest.raises(sweep_lib.SweepError, match="from_stage 'train'.*one of"):
    sweep_lib.first_stage(tiny, tiny, from_stage="train")
  path = _write_sweep(tmp_path, {"v": {"overrides": {"memory.window": 3}, "from_stage": "evl"}})
  with pytest.raises(sweep_lib.SweepError, match="variant 'v'.*from_stage 'evl'"):
    sweep_lib.load_sweep(path)


# ---------------------------------------------------------------------------- run_sweep

def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_run_sweep_writes_table_csv_and_plots(tmp_path, fake_pipeline, capsys):
  calls, _ = fake_pipeline
  path = _write_sweep(tmp_path, VARIANTS)
  work = str(tmp_path / "work")
  out = sweep_lib.run_sweep(path, work, progress=False)
  stages = pipeline.PIPELINE_STAGES
  assert calls == [("base", tuple(stages)), ("window_3", ("evaluate",)),
                   ("naive", tuple(stages[stages.index("distill"):]))]  # "same" runs nothing
  text = capsys.readouterr().out
  assert "[relic] sweep abl: variant 2/4 window_3 (rerun from evaluate)" in text
  assert "variant 4/4 same (rerun from nothing (same config as base))" in text
  assert os.path.join(work, "comparison.md") in text

  rows = _read_csv(os.path.join(work, "comparison.csv"))
  assert [r["variant"] for r in rows] == ["base", "window_3", "naive", "same"]
  by = {r["variant"]: r for r in rows}
  assert by["base"]["rerun_from"] == "all stages" and by["naive"]["rerun_from"] == "distill"
  assert float(by["window_3"]["revisit_psnr"]) == 13.0 and float(by["base"]["revisit_psnr"]) == 16.0
  assert float(by["window_3"]["window_sink_late_revisit_psnr"]) == 5.0
  assert float(by["naive"]["fps"]) == 25.0 and by["naive"]["rpe_rot"] == ""
  assert float(by["same"]["rpe_trans"]) == pytest.approx(0.6)  # the baseline's, linked
  assert float(by["base"]["extra_metric"]) == 7.0
  assert by["naive"]["description"] == "naive | backprop"

  md = open(os.path.join(work, "comparison.md")).read()
  lines = [l for l in md.splitlines() if l.startswith("| `")]
  assert [l.split("|")[1].strip() for l in lines] == ["`base`", "`window_3`", "`naive`", "`same`"]
  w3 = [c.strip() for c in lines[1].split("|")[1:-1]]
  assert w3[:3] == ["`window_3`", "window of 3", "evaluate"]
  assert w3[3:] == ["8.00", "0.430", "13.00", "0.530", "**0.300**", "2.00", "**30.0**", "5.00"]
  assert "naive \\| backprop" in md and "n/a" in lines[2]
  assert "**16.00**" in lines[0]  # best revisit PSNR (tied with "same")

  for key, *_ in sweep_lib.METRICS:
    png = os.path.join(work, f"comparison_{key}.png")
    assert png in out["plots"]
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert not [f for f in os.listdir(work) if ".tmp-" in f]


def test_variant_links_the_baselines_earlier_stages(tmp_path, fake_pipeline):
  path = _write_sweep(tmp_path, VARIANTS)
  work = tmp_path / "work"
  sweep_lib.run_sweep(path, str(work), progress=False)
  stages = pipeline.PIPELINE_STAGES
  for variant, first in (("window_3", "evaluate"), ("naive", "distill")):
    run = work / variant
    for stage in stages:
      for d in pipeline.STAGE_DIRS[stage]:
        p = run / d
        if stages.index(stage) < stages.index(first):
          assert p.is_symlink(), p
          target = os.readlink(p)
          assert not os.path.isabs(target) and target == os.path.join("..", "base", d)
          assert os.path.samefile(p, work / "base" / d)
          assert (p / "made_by").read_text() == "base"
          assert ((run / "pipeline" / f"{stage}.json").read_text()
                  == (work / "base" / "pipeline" / f"{stage}.json").read_text())
        else:
          assert p.is_dir() and not p.is_symlink(), p
          assert (p / "made_by").read_text() == variant
  # a config equal to the baseline's links everything, the results included
  assert (work / "same" / "results").is_symlink()


def test_rerun_skips_finished_variants(tmp_path, fake_pipeline, capsys):
  calls, _ = fake_pipeline
  path = _write_sweep(tmp_path, VARIANTS)
  work = str(tmp_path / "work")
  sweep_lib.run_sweep(path, work, progress=False)
  n = len(calls)
  os.remove(os.path.join(work, "comparison.csv"))
  capsys.readouterr()
  sweep_lib.run_sweep(path, work, progress=False)
  assert len(calls) == n
  assert capsys.readouterr().out.count("(done earlier: skipped)") == 4
  assert len(_read_csv(os.path.join(work, "comparison.csv"))) == 4
  # a new variant added to the sweep runs alone
  path = _write_sweep(tmp_path, {**VARIANTS, "window_12": {"overrides": {"memory.window": 12}}})
  sweep_lib.run_sweep(path, work, progress=False)
  assert calls[n:] == [("window_12", ("ode_init", "distill", "evaluate"))]
  rows = _read_csv(os.path.join(work, "comparison.csv"))
  assert rows[-1]["variant"] == "window_12" and float(rows[-1]["revisit_psnr"]) == 22.0
  assert rows[-1]["description"] == "memory.window=12"


def test_interrupted_variant_is_rerun(tmp_path, fake_pipeline, capsys):
  calls, fail = fake_pipeline
  path = _write_sweep(tmp_path, VARIANTS)
  work = tmp_path / "work"
  fail[("naive", "evaluate")] = True  # distill finishes, evaluate crashes
  with pytest.raises(RuntimeError, match="fake failure of naive"):
    sweep_lib.run_sweep(path, str(work), progress=False)
  assert "naive stopped; rerun the same command" in capsys.readouterr().out
  assert not (work / "naive" / "sweep_done.json").exists()
  assert not (work / "comparison.md").exists()
  n = len(calls)
  del fail[("naive", "evaluate")]
  sweep_lib.run_sweep(path, str(work), progress=False)
  assert [c[0] for c in calls[n:]] == ["naive"]  # base and window_3 skipped, "same" runs nothing
  assert (work / "naive" / "distill" / "made_by").read_text() == "naive"
  rows = _read_csv(work / "comparison.csv")
  assert float({r["variant"]: r for r in rows}["naive"]["fps"]) == 25.0


def test_changed_overrides_are_refused(tmp_path, fake_pipeline):
  calls, _ = fake_pipeline
  path = _write_sweep(tmp_path, VARIANTS)
  work = str(tmp_path / "work")
  sweep_lib.run_sweep(path, work, progress=False)
  n = len(calls)
  changed = {**VARIANTS, "window_3": {"overrides": {"memory.window": 4},
                                      "from_stage": "evaluate"}}
  path = _write_sweep(tmp_path, changed)
  with pytest.raises(sweep_lib.SweepError, match=r"window_3 holds a run of other settings "
                     r"\(overrides: was \{'memory.window': 3\}, now \{'memory.window': 4\}\)"
                     r".*Fix: delete"):
    sweep_lib.run_sweep(path, work, progress=False)
  path = _write_sweep(tmp_path, VARIANTS, base_overrides={"memory.window": 5})
  with pytest.raises(sweep_lib.SweepError, match="base holds a run of other settings.*delete "
                     "the whole sweep directory"):
    sweep_lib.run_sweep(path, work, progress=False)
  assert len(calls) == n


def test_main_cli_defaults_to_runs_sweeps_name(tmp_path, fake_pipeline, monkeypatch):
  path = _write_sweep(tmp_path, {"window_3": VARIANTS["window_3"]}, name="mine")
  monkeypatch.chdir(tmp_path)
  out = sweep_lib.main_cli(path, progress=False)
  assert out["table"] == os.path.join("runs", "sweeps", "mine", "comparison.md")
  assert (tmp_path / "runs" / "sweeps" / "mine" / "base" / "results").is_dir()


# ------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("variants,pattern", [
    ({"v": {"overrides": {"memory.windw": 3}}},
     r"variant 'v': override 'memory.windw': config.memory has no field 'windw'. Did you mean "
     r"'window'\?.*Fix: override an existing field"),
    ({"v": {"overrides": {"nosuch.window": 3}}}, r"config has no field 'nosuch'"),
    ({"v": {"overrides": {"memory.window.x": 3}}},
     r"config.memory.window is not a group of fields"),
    ({"v": {"overrides": {"memory.window": "big"}}},
     r"override memory.window='big'.*Fix: give a value of the field's type \(int, now 6\)"),
    ({"v": {"overrides": {"memory.mode": "bogus"}}},
     r"variant 'v': config.memory.mode='bogus': unknown value. Fix: use one of"),
    ({"a/b": {"overrides": {"memory.window": 3}}}, r"variant name 'a/b' is not a valid directory"),
    ({"..": {"overrides": {}}}, r"variant name '..' is not a valid directory"),
    ({"base": {"overrides": {"memory.window": 3}}}, r"variant name 'base' is reserved"),
    ({"v": {"overides": {"memory.window": 3}}}, r"variant 'v' has unknown keys \['overides'\]"),
    ({}, r"no variants"),
])
def test_bad_sweep_files_give_clear_errors(tmp_path, variants, pattern):
  path = _write_sweep(tmp_path, variants)
  with pytest.raises(sweep_lib.SweepError, match=pattern):
    sweep_lib.load_sweep(path)


def test_bad_base_and_missing_files(tmp_path):
  path = _write_sweep(tmp_path, {"v": {}}, base_overrides={"train.stepz": 3})
  with pytest.raises(sweep_lib.SweepError, match="base overrides: override 'train.stepz'.*"
                     "Did you mean 'steps'"):
    sweep_lib.load_sweep(path)
  with pytest.raises(sweep_lib.SweepError, match="no sweep file .*nope.py.*Fix: pass an existing"):
    sweep_lib.load_sweep(str(tmp_path / "nope.py"))
  (tmp_path / "empty.py").write_text("X = 1\n")
  with pytest.raises(sweep_lib.SweepError, match="defines no get_sweep"):
    sweep_lib.load_sweep(str(tmp_path / "empty.py"))
  (tmp_path / "broken.py").write_text("def get_sweep(:\n")
  with pytest.raises(sweep_lib.SweepError, match="cannot load sweep file.*SyntaxError"):
    sweep_lib.load_sweep(str(tmp_path / "broken.py"))
  (tmp_path / "nocfg.py").write_text(
      "def get_sweep():\n  return {'base': {'config': 'experiments/none.py'}, "
      "'variants': {'v': {}}}\n")
  with pytest.raises(sweep_lib.SweepError, match="base config 'experiments/none.py' not found"):
    sweep_lib.load_sweep(str(tmp_path / "nocfg.py"))
  s = sweep_lib.load_sweep(_write_sweep(tmp_path, {"v": {}}))
  with pytest.raises(sweep_lib.SweepError, match="no variant 'w'. Fix: use one of base, v"):
    sweep_lib.variant_config(s, "w")
