"""The import graph of relic_jax and data_pipeline: no cycles, and no module imports from a
layer above its own (docs/architecture.md draws the layers). Read from the source with ast, so
function-local imports count too."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first: a module may import its own layer and the ones before it.
LAYERS = (
    ("relic_jax.io_utils", "relic_jax.workdir", "relic_jax.config"),
    ("relic_jax.models", "relic_jax.diffusion", "relic_jax.parallel"),
    ("relic_jax.memory",),
    ("data_pipeline",),
    ("relic_jax.checkpoint", "relic_jax.weights"),
    ("relic_jax.inference",),
    ("relic_jax.evaluation", "relic_jax.play"),
    ("relic_jax.training",),
    ("relic_jax.stages", "relic_jax.pipeline", "relic_jax.sweep", "relic_jax.cli",
     "relic_jax.bench", "relic_jax.assets"),
)
PACKAGE_ROOTS = ("relic_jax", "data_pipeline")  # their __init__ modules: any layer may import


def layer_of(module: str) -> int:
  if module in PACKAGE_ROOTS:
    return 0
  best, level = "", None
  for i, names in enumerate(LAYERS):
    for name in names:
      if (module == name or module.startswith(name + ".")) and len(name) > len(best):
        best, level = name, i
  assert level is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
  return level


def modules() -> dict[str, str]:
  out = {}
  for top in ("relic_jax", "data_pipeline"):
    for d, _, names in os.walk(os.path.join(ROOT, top)):
      for n in names:
        if n.endswith(".py"):
          path = os.path.join(d, n)
          mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          out[mod.removesuffix(".__init__")] = path
  return out


def imports(path: str, mod: str, known) -> set[str]:
  pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = pkg.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    for name in names:
      while name and name not in known:
        name = name.rpartition(".")[0]
      if name and name != mod:
        out.add(name)
  return out


def graph() -> dict[str, set[str]]:
  known = modules()
  return {m: imports(p, m, known) for m, p in known.items()}


def test_no_module_imports_from_a_higher_layer():
  upward = upward_imports(graph())
  assert not upward, "\n".join(upward)


def upward_imports(g) -> list[str]:
  return sorted(f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
                for m, deps in g.items() for d in deps if layer_of(d) > layer_of(m))


def cycles_of(g) -> list[list[str]]:
  index, low, stack, on, cycles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in g[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        cycles.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return cycles


def test_no_import_cycles():
  cycles = cycles_of(graph())
  assert not cycles, cycles


def test_the_checks_find_a_planted_cycle_and_upward_import():
  g = {"relic_jax.models.dit": {"relic_jax.memory.kv_cache"},
       "relic_jax.memory.kv_cache": {"relic_jax.models.dit"},
       "relic_jax.inference.generate": {"relic_jax.training.trainer"},
       "relic_jax.training.trainer": {"relic_jax.inference.generate"}}
  assert cycles_of(g) == [["relic_jax.inference.generate", "relic_jax.training.trainer"],
                          ["relic_jax.memory.kv_cache", "relic_jax.models.dit"]]
  assert upward_imports(g) == [
      "relic_jax.inference.generate (layer 5) imports relic_jax.training.trainer (layer 7)",
      "relic_jax.models.dit (layer 1) imports relic_jax.memory.kv_cache (layer 2)"]


def test_every_module_has_a_layer():
  for m in graph():
    layer_of(m)
