"""The package's shape (docs/architecture.md): no import cycles, no private names imported across
modules, and every stage importing only the stages below it.

Imports are read with ``ast`` from the source, including those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import butterfly

ROOT = Path(butterfly.__file__).parent
PKG = "butterfly"

# Stages, lowest first. A module may import its own stage and the stages below it.
STAGES: list[set[str]] = [
    {"rng", "layers", "imports", "atomic", "safepath", "version", "checkpoint", "config", "hf_local",
     "figure_files"},
    {"data", "metrics", "align"},
    {"models"},
    {"train"},
    {"experiment"},
    {"sweep", "comparison"},
    {"report"},
    {"api", "cli", ""},  # "" is the package itself (butterfly/__init__.py)
]


def module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [PKG, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_names()


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every butterfly import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PKG:
                    found.append((a.name, [], node.lineno))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == PKG
        ):
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def edges() -> dict[str, set[str]]:
    """Module -> the butterfly modules it imports. ``from pkg import sub`` where ``pkg.sub`` is
    a module is an edge to ``pkg.sub``; any other ``from m import x`` is an edge to ``m``."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in imports(path):
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                graph[mod].update(subs)
            if not names or len(subs) < len(names):
                graph[mod].add(target)
    return graph


def stage_of(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else ""
    for i, stage in enumerate(STAGES):
        if top in stage:
            return i
    raise AssertionError(f"module {mod} belongs to no stage: add it to STAGES and the docs")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_module_list_is_what_the_docs_describe() -> None:
    for expected in ("butterfly.experiment.perturb", "butterfly.experiment.spawn",
                     "butterfly.experiment.measure", "butterfly.experiment.rows",
                     "butterfly.sweep.pipelines.finetune", "butterfly.sweep.store"):  # fmt: skip
        assert expected in MODULES
    for gone in ("butterfly.sweep.unit", "butterfly.divergence", "butterfly.perturb"):
        assert gone not in MODULES
    assert all(stage_of(m) >= 0 for m in MODULES)


def test_no_import_cycles() -> None:
    cycles = strongly_connected(edges())
    assert cycles == [], f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]
    assert strongly_connected({"a": {"a"}}) == [["a"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_private_name_is_imported_across_modules() -> None:
    bad = []
    for path in MODULES.values():
        for target, names, line in imports(path):
            hidden = [n for n in [*names, *target.split(".")]
                      if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]  # fmt: skip
            if hidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {hidden} from {target}")
    assert bad == []


def test_every_stage_imports_only_stages_below_it() -> None:
    bad = []
    for mod, targets in edges().items():
        for t in targets:
            if stage_of(t) > stage_of(mod):
                bad.append(f"{mod} (stage {stage_of(mod)}) imports {t} (stage {stage_of(t)})")
    assert bad == []


def test_data_knows_no_models_and_the_report_reads_only_the_store() -> None:
    graph = edges()
    for mod, targets in graph.items():
        if mod.startswith("butterfly.data"):
            assert not any(t.startswith(("butterfly.models", "butterfly.train")) for t in targets)
        if mod.startswith("butterfly.report"):
            # the store, the row schema, the verdicts over a table, the stability search's pure
            # maths (σ* of a grid is the search's own rule), the config's defaults and the
            # figure writer
            allowed = {"butterfly.experiment.rows", "butterfly.experiment.verdict",
                       "butterfly.experiment.threshold", "butterfly.sweep.store",
                       "butterfly.sweep.rundir", "butterfly.atomic", "butterfly.safepath",
                       "butterfly.figure_files"}  # fmt: skip
            outside = [t for t in targets if not (t.startswith(("butterfly.report",
                                                                 "butterfly.config"))
                                                  or t in allowed)]  # fmt: skip
            assert outside == [], (mod, outside)
        if mod.startswith("butterfly.experiment"):  # the method knows nothing of scheduling
            assert not any(t.startswith("butterfly.sweep") for t in targets), mod
        if mod.startswith("butterfly.sweep.runner"):  # pipelines sit above the runner
            assert not any(t.startswith("butterfly.sweep.pipelines") for t in targets)


def test_the_device_is_made_concrete_in_one_place() -> None:
    """``runtime.device`` is read, and ``auto`` turned into a device, only when a run is
    resolved (experiment/resolve.py); everything else takes the resolved device."""
    readers = []
    for mod, path in MODULES.items():
        text = path.read_text()
        if ("runtime.device" in text or "concrete_device(" in text) and not mod.startswith(
            ("butterfly.experiment.resolve", "butterfly.config")
        ):
            readers.append(mod)
    assert readers == []


def test_the_store_file_name_and_the_atomic_write_have_one_owner() -> None:
    for mod, path in MODULES.items():
        text = path.read_text()
        if mod != "butterfly.sweep.rundir":
            assert '"results.db"' not in text, mod
        if mod != "butterfly.atomic":
            assert "os.replace(tmp" not in text and ".tmp\"" not in text, mod
