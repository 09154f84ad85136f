"""The import graph of ``fedwon``: no cycles, and every import points down a layer.

The graph is read by grimp from the source (every ``import``, at module level or inside a
function, counts: a lazy import is still a dependency). A *unit* is a subpackage
(``fedwon.study``) or a top-level module (``fedwon.config``); the cycle check is on units, so a
cycle through any module of two subpackages is one between them. The layers:

- ``fedwon.cli`` is the top: only the entry points import it, and inside it every subcommand
  module imports only the bottom helpers (``console``, ``args``), never another subcommand;
- the library (``fedwon.study``, ``fedwon.deploy`` and the rest) never imports the CLI;
- ``fedwon.engine`` imports nothing from the rest of fedwon;
- ``fedwon.nn`` (the layers) imports nothing from the rest of fedwon;
- every unit sits in one of :data:`LAYERS` (docs/architecture.md) and imports only units of
  its own layer or below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

import grimp

ROOT = "fedwon"
CLI = "fedwon.cli"
CLI_BOTTOM = frozenset({"fedwon.cli.console", "fedwon.cli.args"})
ENTRY_POINTS = frozenset({"fedwon.demo"})
"""Commands beside the CLI at the top (``make demo``): they may use the CLI's console helpers."""
SELF_CONTAINED = ("fedwon.engine", "fedwon.nn")
"""Layers at the bottom: they import nothing from the rest of fedwon."""

KNOWN_CYCLES_BEING_REMOVED: frozenset[frozenset[str]] = frozenset()
"""Cycles of units that exist today and are being removed. Nothing may be added here."""


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(ROOT, cache_dir=None)


def unit(module: str) -> str:
    """``fedwon.study.runs`` -> ``fedwon.study``; ``fedwon.config`` -> ``fedwon.config``."""
    return ".".join(module.split(".")[:2])


def imports(module: str) -> set[str]:
    return set(graph().find_modules_directly_imported_by(module))


def unit_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module in graph().modules:
        for imported in imports(module):
            if unit(module) != unit(imported):
                edges.setdefault(unit(module), set()).add(unit(imported))
    return edges


def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """The cycles of a graph: its strongly connected components of more than one node
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    nodes = sorted(set(edges) | {w for ws in edges.values() for w in ws})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe(cycle: frozenset[str]) -> str:
    """A cycle of units, with one import chain each way between two of them, as evidence."""
    first, *rest = sorted(cycle)
    chains = []
    for other in rest[:1]:
        for a, b in ((first, other), (other, first)):
            chain = graph().find_shortest_chains(importer=a, imported=b, as_packages=True)
            if chain:
                chains.append(" -> ".join(min(chain)))
    return f"{{{', '.join(sorted(cycle))}}} ({'; '.join(chains)})"


def test_strongly_connected_finds_cycles_and_only_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(edges) == [frozenset({"a", "b", "c"})]


def test_no_import_cycle_between_subpackages_and_top_level_modules() -> None:
    cycles = set(strongly_connected(unit_edges()))
    new = sorted(cycles - KNOWN_CYCLES_BEING_REMOVED, key=sorted)
    assert not new, "import cycles: " + "; ".join(describe(c) for c in new)
    gone = sorted(KNOWN_CYCLES_BEING_REMOVED - cycles, key=sorted)
    assert not gone, (
        f"no longer a cycle, delete it from KNOWN_CYCLES_BEING_REMOVED: {[sorted(c) for c in gone]}"
    )


def test_no_import_cycle_between_modules_of_one_package() -> None:
    edges = {m: {i for i in imports(m) if unit(i) == unit(m)} for m in graph().modules}
    cycles = strongly_connected(edges)
    assert not cycles, "import cycles: " + "; ".join(str(sorted(c)) for c in cycles)


def test_only_the_entry_points_import_the_cli() -> None:
    outside = {
        f"{m} imports {i}"
        for m in graph().modules
        if unit(m) != CLI and m not in ENTRY_POINTS
        for i in imports(m)
        if unit(i) == CLI
    }
    assert not outside, sorted(outside)


def test_study_and_deploy_never_reach_the_cli() -> None:
    for library in ("fedwon.study", "fedwon.deploy"):
        chain = graph().find_shortest_chain(importer=library, imported=CLI, as_packages=True)
        assert chain is None, f"{library} reaches the CLI: {' -> '.join(chain or ())}"


def test_each_subcommand_imports_only_the_cli_s_bottom_modules() -> None:
    siblings = {
        f"{m} imports {i}"
        for m in graph().find_descendants(CLI)
        for i in imports(m)
        if unit(i) == CLI and i not in CLI_BOTTOM and i != CLI
    }
    assert not siblings, sorted(siblings)
    upward = {f"{m} imports {CLI}" for m in graph().find_descendants(CLI) if CLI in imports(m)}
    assert upward <= {"fedwon.cli.__main__ imports fedwon.cli"}, sorted(upward)


def test_the_bottom_layers_import_nothing_from_the_rest_of_fedwon() -> None:
    for layer in SELF_CONTAINED:
        modules = graph().find_descendants(layer) | {layer}
        upward = {f"{m} imports {i}" for m in modules for i in imports(m) if unit(i) != layer}
        assert not upward, sorted(upward)


# docs/architecture.md's import layers, bottom first; a unit imports only its layer or below.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(f"{ROOT}.{name}" for name in layer.split())
    for layer in (
        "common",
        "nn engine",
        "models datasets",
        "clients strategies",
        "privacy",
        "protocol config",
        "run",
        "client_app server_app simulation",
        "deploy study",
        "cli demo",
    )
)


def layer_of(unit_name: str) -> int:
    for number, layer in enumerate(LAYERS):
        if unit_name in layer:
            return number
    raise AssertionError(f"{unit_name} is in no layer: add it to LAYERS and docs/architecture.md")


def test_every_import_points_down_the_layers() -> None:
    units = {unit(m) for m in graph().modules if m != ROOT}
    for name in units:
        layer_of(name)  # every unit has a place
    upward = sorted(
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in unit_edges().items()
        if a != ROOT
        for b in targets
        if b != ROOT and layer_of(b) > layer_of(a)
    )
    assert not upward, upward
