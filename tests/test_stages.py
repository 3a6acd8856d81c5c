"""The stage registry (relic_jax/stages.py): its records name only Workdir places, the CLI's
usage and dispatch and the pipeline's order, inputs, markers and config derivation all come
from it (a fake record added to a copy shows up in each), and its checks refuse a bad one."""

import dataclasses
import json
import os

import pytest

from relic_jax import cli, pipeline, stages
from relic_jax.config import get_base_config
from data_pipeline.latent_cache import CACHE_META
from relic_jax.workdir import Workdir
from tests.helpers import run_cli

TINY = "--config=experiments/tiny.py"


def _records(registry):
  for s in registry.values():
    yield s
    yield from s.subcommands


def test_every_records_dirs_are_workdir_places():
  for s in _records(stages.REGISTRY):
    for d in s.dirs:
      assert isinstance(getattr(Workdir, d, None), property), (s.name, d)
      assert Workdir(root="/w").stage_dir(d) == getattr(Workdir(root="/w"), d)
  # and the pipeline stages together write every place but the generation's and the markers'
  written = {d for s in pipeline.pipeline_stages() for d in s.dirs}
  assert written == {"data", "pose_estimator", "vae", "vae_tiny", "latents", "teacher",
                     "ode_init", "distill", "evaluate", "results"}


def test_cli_registry_is_the_stage_registry_with_every_body_bound():
  assert list(cli.REGISTRY) == list(stages.REGISTRY)
  for name, s in cli.REGISTRY.items():
    assert callable(s.body), name
    unbound = stages.REGISTRY[name]
    assert dataclasses.replace(s, body=unbound.body) == unbound  # only the body was bound
  with pytest.raises(ValueError, match="stage '(sweep|compile)' has no body"):
    stages.bind(stages.REGISTRY, pipeline=print)
  with pytest.raises(ValueError, match=r"no records \['nope'\]"):
    stages.bind(stages.REGISTRY, pipeline=print, sweep=print, compile=print, nope=print)
  with pytest.raises(ValueError, match="'encode' has a body already"):
    stages.bind(stages.REGISTRY, pipeline=print, sweep=print, compile=print, encode=print)


def test_usage_and_help_list_every_record():
  text = cli.usage()
  for s in _records(cli.REGISTRY):
    assert f" {s.name} " in text or f"  {s.name}" in text, s.name
  assert "  data ingest     convert external episodes" in text
  assert ("`relic pipeline` runs data -> pose_estimator -> train_vae -> encode -> "
          "train_teacher ->") in text
  assert text in cli.__doc__
  r = run_cli("--help")
  for name in cli.REGISTRY:
    assert f"\n  {name} " in r.stdout, (name, r.stdout[:3000])


def _fake_registry(calls, derive=None):
  """The registry with a fake stage `check` between distill and evaluate (step 8, evaluate
  moved to 9) and every pipeline stage's body replaced by one that records (stage,
  data.source)."""
  def body_of(name):
    def body(cfg, workdir):
      calls.append((name, cfg.data.source))
      for d in reg[name].dirs:
        os.makedirs(Workdir.of(cfg, workdir).stage_dir(d), exist_ok=True)
      if name == "encode":  # what marks a latent cache (the DiT stages' derivation looks)
        with open(os.path.join(Workdir.of(cfg, workdir).latents, CACHE_META), "w") as f:
          f.write("{}")
    return body

  fake = stages.Stage("check", "a fake stage between distill and evaluate", None,
                      dirs=("generate",), inputs=("generate.fps_check",), derive=derive,
                      pipeline_step=8, workdir=stages.WorkdirUse.REQUIRED)
  reg = {}
  for name, s in stages.REGISTRY.items():
    if name == "evaluate":
      reg["check"] = fake
      s = dataclasses.replace(s, pipeline_step=9)
    reg[name] = s
  reg = {name: dataclasses.replace(s, body=body_of(name)) if s.pipeline_step is not None else s
         for name, s in reg.items()}
  stages.check_registry(reg)
  return reg


def test_a_record_added_to_the_registry_is_in_the_pipeline_and_the_cli(tmp_path, capsys):
  calls = []
  reg = _fake_registry(calls, derive=stages.latent_cache_config)
  order = [s.name for s in pipeline.pipeline_stages(reg)]
  assert order == ["data", "pose_estimator", "train_vae", "encode", "train_teacher",
                   "ode_init", "distill", "check", "evaluate"]
  assert "check" not in pipeline.PIPELINE_STAGES  # the real registry is untouched
  assert pipeline.first_stage_of("generate.fps_check", reg) == "check"
  assert pipeline.first_stage_of("generate.fps_check") == "ode_init"  # prefix 'generate'
  cfg = get_base_config()
  assert "generate.fps_check" not in pipeline.stage_inputs(cfg, "check", reg)  # no such field
  assert "distill.gen_lr" in pipeline.stage_inputs(cfg, "check", reg)
  assert "evaluate.scripts" not in pipeline.stage_inputs(cfg, "check", reg)
  bound = stages.bind(reg, pipeline=print, sweep=print, compile=print)
  assert "  check           a fake stage between distill and evaluate" in cli.usage(bound)
  assert "distill -> check -> evaluate" in " ".join(cli.usage(bound).split())

  work = str(tmp_path / "run")
  r = pipeline.run_pipeline(cfg, work, progress=False, registry=reg)
  assert [c[0] for c in calls] == order
  # the DiT stages and the fake one run with the pipeline's derived config, and say so
  derived = {"train_teacher", "ode_init", "distill", "check", "evaluate"}
  assert {name for name, source in calls if source == "latents"} == derived
  out = capsys.readouterr().out
  assert out.count("runs with data.source='latents', model.action_dim=13, model.pose_dim=12, "
                   "model.text_encoder='bytes' (derived by stages.latent_cache_config)") == 5
  assert "[relic] pipeline 8/9 check runs with data.source='latents'" in out
  assert list(r["stages"]) == order
  marker = json.loads(open(Workdir(root=work).marker("check")).read())
  assert marker["stage"] == "check" and "distill.gen_lr" in marker["inputs"]
  assert os.path.isdir(Workdir(root=work).generate)
  # the second run skips every stage, the fake one included
  calls.clear()
  pipeline.run_pipeline(cfg, work, progress=False, registry=reg)
  assert calls == [] and capsys.readouterr().out.count(": done before") == 9


def test_a_latents_config_runs_unchanged_and_prints_nothing(tmp_path, capsys):
  calls = []
  reg = _fake_registry(calls, derive=stages.latent_cache_config)
  cfg = get_base_config()
  with cfg.unlocked():
    cfg.data.source = "latents"
  pipeline.run_pipeline(cfg, str(tmp_path / "run"), stages=["train_teacher", "check"],
                        progress=False, registry=reg)
  assert calls == [("train_teacher", "latents"), ("check", "latents")]
  assert "runs with" not in capsys.readouterr().out


def test_the_cli_dispatches_through_the_registry(tmp_path):
  calls = []
  reg = dict(cli.REGISTRY)
  reg["fake"] = stages.Stage(
      "fake", "a fake command", lambda cfg, workdir, source: calls.append(
          (cfg.name, workdir, source)), flags=("source",), workdir=stages.WorkdirUse.REQUIRED)
  work = str(tmp_path / "w")
  try:
    cli.FLAGS(["relic", TINY, f"--workdir={work}", "--source=here"])
    cli.main(["relic", "fake"], registry=reg)
    assert calls == [("tiny", work, "here")]
    cli.FLAGS.unparse_flags()
    cli.FLAGS(["relic", TINY, "--source=here"])
    with pytest.raises(SystemExit):  # the record says it needs --workdir
      cli.main(["relic", "fake"], registry=reg)
    with pytest.raises(SystemExit):  # not in this registry
      cli.main(["relic", "fake"])
  finally:
    cli.FLAGS.unparse_flags()
  assert len(calls) == 1


@pytest.mark.parametrize("change,message", [
    (lambda s: dataclasses.replace(s, dirs=("teacher", "nowhere")),
     r"stage 'train_teacher': dirs \['nowhere'\] are not places"),
    (lambda s: dataclasses.replace(s, pipeline_step=4),
     "stages 'encode' and 'train_teacher' share pipeline step 4"),
    (lambda s: dataclasses.replace(s, inputs=("model", "vae")),
     "config prefix 'vae' is an input of both 'train_vae' and 'train_teacher'"),
    (lambda s: dataclasses.replace(s, pipeline_step=None),
     "stage 'train_teacher' has inputs but no pipeline step"),
    (lambda s: dataclasses.replace(s, name="teacher"),
     "registry key 'train_teacher' holds the record of 'teacher'"),
], ids=["not_a_place", "shared_step", "shared_prefix", "inputs_outside", "wrong_key"])
def test_check_registry_refuses_a_bad_record(change, message):
  reg = dict(stages.REGISTRY)
  reg["train_teacher"] = change(reg["train_teacher"])
  with pytest.raises(ValueError, match=message):
    stages.check_registry(reg)


def test_the_dit_stages_derive_the_latent_setup_where_a_cache_exists(tmp_path):
  cfg = get_base_config()
  work = str(tmp_path / "run")
  for name in ("train_teacher", "ode_init", "distill", "evaluate", "generate"):
    assert stages.REGISTRY[name].derive(cfg, work) is cfg  # no cache: the config as given
  os.makedirs(Workdir(root=work).latents)
  with open(os.path.join(Workdir(root=work).latents, CACHE_META), "w") as f:
    f.write("{}")
  for name in ("train_teacher", "ode_init", "distill", "evaluate", "generate"):
    derived = stages.REGISTRY[name].derive(cfg, work)
    assert stages.changed_fields(cfg, derived) == stages.LATENT_SETUP
  assert stages.REGISTRY["data"].derive is None


def test_a_stage_run_alone_derives_its_config_as_in_the_pipeline(tmp_path, capsys):
  calls = []
  reg = _fake_registry(calls, derive=stages.latent_cache_config)
  work = str(tmp_path / "run")
  cfg = get_base_config()
  pipeline.run_pipeline(cfg, work, stages=["data", "pose_estimator", "train_vae", "encode"],
                        progress=False, registry=reg)
  capsys.readouterr()
  run_cfg = stages.derived_config(reg["train_teacher"], cfg, work, "[relic] train_teacher")
  assert (run_cfg.data.source, run_cfg.model.action_dim) == ("latents", 13)
  assert ("[relic] train_teacher runs with data.source='latents', model.action_dim=13"
          in capsys.readouterr().out)


def test_a_pipeline_stopped_before_evaluate_skips_the_pose_estimator(monkeypatch, capsys):
  # the pose estimator serves only the evaluation (`make assets` stops at train_teacher)
  seen = []

  def fake_run(cfg, workdir, stages=None, progress=True):
    seen.append(stages)
    return {"metrics": None, "results": "", "stages": {}, "seconds": 0.0}

  monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
  cfg = get_base_config()
  cli._pipeline(cfg, "w", until="train_teacher")
  cli._pipeline(cfg, "w", until="pose_estimator")
  cli._pipeline(cfg, "w", until="evaluate")
  assert seen[0] == ["data", "train_vae", "encode", "train_teacher"]
  assert seen[1] == ["data", "pose_estimator"]
  assert "pose_estimator" in seen[2] and seen[2][-1] == "evaluate"
  assert "stopped after train_teacher" in capsys.readouterr().out
