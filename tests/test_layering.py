"""The import structure of the library, read from the source: no import cycle
(function-level imports included, since they only hide one), `stviz_jax` never
imports the top-level `converters` package, and no module uses another
module's private names (`from m import _x` or `m._x`)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("stviz_jax", "converters")


def _modules() -> dict[str, str]:
  """Dotted module name -> file path, for every module of PACKAGES."""
  out = {}
  for package in PACKAGES:
    for d, dirs, names in os.walk(os.path.join(ROOT, package)):
      dirs[:] = [x for x in dirs if not x.startswith((".", "__"))]
      for n in names:
        if n.endswith(".py"):
          rel = os.path.relpath(os.path.join(d, n), ROOT)[:-3].replace(os.sep, ".")
          out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, n)
  return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  is_package = MODULES[module].endswith("__init__.py")
  base = module.split(".")[:len(module.split(".")) - node.level + is_package]
  return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
  """(imported module, names imported from it or None, line) for every import."""
  tree = ast.parse(open(MODULES[module]).read(), MODULES[module])
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, None, node.lineno, alias.asname or alias.name
    elif isinstance(node, ast.ImportFrom):
      target = _resolve(module, node)
      for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in MODULES:  # `from pkg import submodule`
          yield sub, None, node.lineno, alias.asname or alias.name
        else:
          yield target, alias.name, node.lineno, alias.asname or alias.name


def _edges() -> dict[str, set[str]]:
  graph = {m: set() for m in MODULES}
  for m in MODULES:
    for target, _, _, _ in _imports(m):
      # `import a.b.c` runs a, a.b and a.b.c; the edge that matters is the deepest one.
      while target and target not in MODULES:
        target = target.rpartition(".")[0]
      if target and target != m:
        graph[m].add(target)
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _is_private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def test_the_module_graph_was_read():
  graph = _edges()
  assert len(MODULES) > 40
  assert "stviz_jax.files" in graph["stviz_jax.job"]
  assert "stviz_jax.models.specs" in graph["stviz_jax.models.receptive_field"]


def test_no_import_cycle():
  cycles = _cycles(_edges())
  assert not cycles, "import cycles (an arrow would have to point back): " + "; ".join(
      " <-> ".join(c) for c in cycles)


def test_the_library_never_imports_converters():
  bad = [f"{MODULES[m]}:{line} imports {target}"
         for m in MODULES if m.startswith("stviz_jax")
         for target, _, line, _ in _imports(m) if target.split(".")[0] == "converters"]
  assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_of_another_module(module):
  bad = []
  bound = {}  # local name -> project module it is bound to.
  for target, name, line, local in _imports(module):
    if target.split(".")[0] not in PACKAGES:
      continue
    if name is not None and _is_private(name):
      bad.append(f"line {line}: from {target} import {name}")
    if name is None:
      bound[local.split(".")[0] if "." in local and local == target else local] = target
  tree = ast.parse(open(MODULES[module]).read())
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and _is_private(node.attr)
        and isinstance(node.value, ast.Name) and node.value.id in bound
        and bound[node.value.id] != module):
      bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
  assert not bad, f"{MODULES[module]} uses private names of other modules: {bad}"


def test_every_converter_error_is_a_conversion_error():
  """One base class: `except ConversionError` catches every converter's errors."""
  import importlib  # pylint: disable=g-import-not-at-top
  from stviz_jax.models.checkpoint import ConversionError  # pylint: disable=g-import-not-at-top
  errors = []
  for name in sorted(MODULES):
    if name.startswith("converters") or name == "stviz_jax.models.zoo.i3d_kinetics400":
      module = importlib.import_module(name)
      errors += [obj for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, Exception)
                 and obj.__module__ == name]
  assert len(errors) >= 6, errors
  assert [e for e in errors if not issubclass(e, ConversionError)] == []


def test_no_command_is_imported_by_the_package():
  """A module run as `python -m stviz_jax.X` must not be imported by `import
  stviz_jax` (runpy would warn, on stderr, that it was found in sys.modules)."""
  graph = _edges()
  seen, todo = set(), ["stviz_jax"]
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo.extend(graph[m])
  commands = {m for m in MODULES if m.startswith("stviz_jax")
              and 'if __name__ == "__main__"' in open(MODULES[m]).read()}
  assert "stviz_jax.stats" in commands and "stviz_jax.main" in commands
  assert sorted(commands & seen) == []
