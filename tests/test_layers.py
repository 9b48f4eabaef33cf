"""The package's import layers (shared/DESIGN.md, "The pipeline, and a package that shows
it"): a module never imports a module of a higher layer. Every module is parsed with
``ast`` (nothing is imported); an import inside a function counts like one at the top, and
so does a module named by a string (``importlib.import_module("multiret_jax.train")``, a
``python -m`` module in a subprocess command).

    layer 0  data/ (tokenization included), metrics/, partitioning, gin_utils, cli,
             checksums, tables, trec, embedded/
    layer 1  models/, multitask/ (jax / optax / numpy and multitask/ itself only)
    layer 2  encoding, run_dir
    layer 3  index/, training/ losses, gradcache, checkpointing, scalars, distributed
    layer 4  training/ step, validation, ance; train (the loop, ``python -m multiret_jax.train``)
    layer 5  evaluate, retrieve, experiments/ (compare, plots, zero_few_shot), reproduce,
             serve/, export/
"""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

PACKAGE = "multiret_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# A module's layer is that of its longest listed prefix; every module must have one.
LAYERS: Dict[str, int] = {
    PACKAGE: 0,  # the package's own __init__ (this entry matches it alone)
    f"{PACKAGE}.data": 0, f"{PACKAGE}.metrics": 0, f"{PACKAGE}.embedded": 0,
    f"{PACKAGE}.partitioning": 0, f"{PACKAGE}.gin_utils": 0, f"{PACKAGE}.cli": 0,
    f"{PACKAGE}.checksums": 0, f"{PACKAGE}.tables": 0, f"{PACKAGE}.trec": 0,
    f"{PACKAGE}.outputs": 0, f"{PACKAGE}.processes": 0,
    f"{PACKAGE}.models": 1, f"{PACKAGE}.multitask": 1,
    f"{PACKAGE}.encoding": 2, f"{PACKAGE}.run_dir": 2,
    f"{PACKAGE}.index": 3, f"{PACKAGE}.training": 3, f"{PACKAGE}.training.losses": 3,
    f"{PACKAGE}.training.gradcache": 3, f"{PACKAGE}.training.checkpointing": 3,
    f"{PACKAGE}.training.scalars": 3, f"{PACKAGE}.training.inputs": 3, f"{PACKAGE}.training.distributed": 3,
    f"{PACKAGE}.training.run_config": 3, f"{PACKAGE}.training.settings": 3,
    f"{PACKAGE}.training.step": 4, f"{PACKAGE}.training.validation": 4,
    f"{PACKAGE}.training.ance": 4, f"{PACKAGE}.training.report": 4, f"{PACKAGE}.train": 4,
    f"{PACKAGE}.evaluate": 5, f"{PACKAGE}.retrieve": 5, f"{PACKAGE}.experiments": 5,
    f"{PACKAGE}.reproduce": 5, f"{PACKAGE}.serve": 5, f"{PACKAGE}.export": 5,
}

# The upward references that remain, each with its reason; the test fails when one is
# added and when one of these goes away (then delete it here).
KNOWN_UPWARD = {
    (f"{PACKAGE}.run_dir", f"{PACKAGE}.train"):
        "a run's settings are train()'s gin parameters and their defaults (by name, when "
        "called: importlib in run_dir._train_module)",
}

# Library packages that the trainer, the tools and the experiments build on.
LIBRARIES = ("data", "models", "multitask", "index")
ABOVE_LIBRARIES = (f"{PACKAGE}.train", f"{PACKAGE}.training.step",
                   f"{PACKAGE}.training.validation", f"{PACKAGE}.training.ance",
                   f"{PACKAGE}.experiments", f"{PACKAGE}.evaluate", f"{PACKAGE}.retrieve",
                   f"{PACKAGE}.reproduce", f"{PACKAGE}.serve", f"{PACKAGE}.export")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(target: str, names: Tuple[str, ...]) -> List[str]:
    """Our modules that ``from target import names`` (or ``import target``) loads."""
    out = []
    for n in names or ("",):
        sub = f"{target}.{n}" if n else target
        if sub in MODULES:
            out.append(sub)
        elif target in MODULES:
            out.append(target)
    return out


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def references(module: str) -> Set[str]:
    """Our modules that ``module`` imports (anywhere in it) or names by a string."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.update(_resolve(a.name, ()))
        elif isinstance(node, ast.ImportFrom):
            out.update(_resolve(_absolute(module, node), tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in MODULES:  # importlib.import_module(...), ["-m", ...]
                out.add(node.value)
    out.discard(module)
    return out


REFS = {m: references(m) for m in MODULES}


def layer_of(module: str) -> Optional[int]:
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    parts = module.split(".")
    for k in range(len(parts), 1, -1):
        if ".".join(parts[:k]) in LAYERS:
            return LAYERS[".".join(parts[:k])]
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_package_is_found():
    for name in (f"{PACKAGE}.train", f"{PACKAGE}.encoding", f"{PACKAGE}.data.tokenization",
                 f"{PACKAGE}.training.step", f"{PACKAGE}.experiments.zero_few_shot.plan"):
        assert name in MODULES
    assert f"{PACKAGE}.training.losses" in REFS[f"{PACKAGE}.training.step"]
    assert f"{PACKAGE}.train" in REFS[f"{PACKAGE}.run_dir"]  # a string reference counts


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"


def test_no_module_imports_a_higher_layer():
    upward = {(m, r): f"{m} (layer {layer_of(m)}) -> {r} (layer {layer_of(r)})"
              for m, refs in REFS.items() for r in refs
              if None not in (layer_of(m), layer_of(r)) and layer_of(r) > layer_of(m)}
    new = [why for key, why in upward.items() if key not in KNOWN_UPWARD]
    assert not new, "imports of a higher layer:\n  " + "\n  ".join(sorted(new))
    gone = set(KNOWN_UPWARD) - set(upward)
    assert not gone, f"no longer upward, remove from KNOWN_UPWARD: {sorted(gone)}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_do_not_import_the_trainer_or_the_tools(library):
    bad = [f"{m} -> {r}" for m, refs in REFS.items() if _under(m, f"{PACKAGE}.{library}")
           for r in refs if any(_under(r, top) for top in ABOVE_LIBRARIES)]
    assert not bad, bad


def test_multitask_imports_only_multitask():
    bad = [f"{m} -> {r}" for m, refs in REFS.items() if _under(m, f"{PACKAGE}.multitask")
           for r in refs if not _under(r, f"{PACKAGE}.multitask")]
    assert not bad, bad
    imported = set()
    for m in MODULES:
        if _under(m, f"{PACKAGE}.multitask"):
            for node in ast.walk(ast.parse(MODULES[m].read_text())):
                if isinstance(node, ast.Import):
                    imported.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    imported.add(node.module.split(".")[0])
    # gin: ``multitask.method = "taco"`` in the gin files (``base.build_method``).
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", PACKAGE}
    assert third_party <= {"jax", "optax", "numpy", "gin"}, sorted(third_party)


def test_no_import_cycles():
    """Tarjan's strongly connected components of the reference graph."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    counter = itertools.count()
    cycles = []

    def visit(v):
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(REFS[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_reexport_shims():
    """A module (other than a package's ``__init__``) does something besides importing."""
    shims = []
    for m, path in MODULES.items():
        if _is_package(m):
            continue
        body = ast.parse(path.read_text()).body
        rest = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))
                and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                and not (isinstance(n, ast.Assign) and [getattr(t, "id", None)
                                                        for t in n.targets] == ["__all__"])]
        if not rest:
            shims.append(m)
    assert not shims, f"modules that only re-export: {shims}"
