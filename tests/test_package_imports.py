"""The package import graph (issue 16): domain packages import each other one way, down `PACKAGE_ORDER`.

Every module of `app/` is parsed with `ast` (nothing is imported, so no test's side effects hide or add an
edge). A module's imports are sorted into three kinds: at module level (what loads with the module: the
graph these tests pin), under `if TYPE_CHECKING:` (for mypy only) and inside a function (loaded when it
runs). Each import maps to its node: the package `app.<pkg>`, or the top-level module `app.<module>`. A
settings module (`app/<pkg>/settings.py`, `app/<pkg>/.../settings.py`) is its own node: it imports nothing
of `app` (tests/test_import_boundaries.py proves it in a fresh interpreter) and `app.config` composes them
all, so counting it in its package would only restate that config composes every domain's settings. A
domain's command-line module (`app/<pkg>/cli.py`, `app/<pkg>/.../cli.py`) is its own node too, ranked with
`app.cli` at the top: it is a front door, the composition root of its commands, as `create_app` is for the
routes. It builds the one context from `app.wiring` (`opened_context`), which the routes get through a
dependency instead; nothing below it may import it.

`python tests/test_package_imports.py` prints the graph's loops with every edge's file:line, and the
function-local and type-checking edges that climb the order (not pinned: the report shows them).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"

Kind = Literal["module", "type_checking", "function"]

# Low to high: a package imports only packages before it. A node not listed (clock, db, errors, logs, config,
# the settings modules, context, deps, transaction, metrics, tracing, server, workflow, ...) is the base,
# below every listed one; edges among base nodes are checked by the loop pin only.
PACKAGE_ORDER: tuple[str, ...] = (
    "app.storage",  # BlobStore, RegionRouter: knows no tickets, people or HTTP
    "app.vault",  # envelope encryption: the same
    "app.audit",  # called by every service, calls none of them
    "app.input_text",  # the text rules every schema uses (the audit trail's id rule among them)
    "app.identity",  # principals, tokens, staff and teams
    "app.resources",  # the directory the relay routes by
    "app.tickets",  # tickets, assignments, consents (the Resource they name)
    "app.relay",  # the relay routes by resources; capture implements its tap
    "app.capture",  # the recorder, the reader, recording rows
    "app.retention",  # purges what capture recorded
    "app.access",  # grants over tickets, staff and recordings; playback reads capture
    "app.console",  # the web console over every service
    "app.models",  # every table, for Alembic and tests
    "app.wiring",  # builds the one context from every part
    "app.main",  # create_app
    "app.demo",  # `voicelog demo`
    "app.cli",  # `voicelog ...`
    "app.cli_main",
)

# Edges that still climb the order, each with why it is still there. A new climbing edge fails
# `test_imports_point_down_the_package_order`; removing one of these fails
# `test_every_tolerated_back_edge_is_still_there` until it is dropped here (and from EXPECTED_LOOPS).
TOLERATED_BACK_EDGES: dict[tuple[str, str], str] = {}

# The strongly connected components (more than one node) of the module-level graph: none. The grant endings
# go through identity's GrantEnder and the domains' CLIs are front doors of their own.
EXPECTED_LOOPS: list[frozenset[str]] = []


@dataclass(frozen=True)
class Import:
    """One `import` of an `app` module, where it is written and when it runs."""

    source: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted
    path: Path
    line: int
    kind: Kind

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def node_of(module: str) -> str:
    """The graph node a module belongs to: its settings or command-line module's own node, else
    `app.<first part>`."""
    if module.endswith(".settings") or is_domain_cli(module):
        return module
    return ".".join(module.split(".")[:2])


def is_domain_cli(module: str) -> bool:
    """`app.<pkg>[.<sub>].cli`: a domain's commands, registered by `app.cli`."""
    return module.endswith(".cli") and module.count(".") >= 2


def is_module(dotted: str) -> bool:
    relative = Path(*dotted.split("."))
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool) -> Iterator[str]:
    """The modules one import statement names: `from a.b import c` names `a.b.c` when that is a module."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = source.split(".") if is_package else source.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    named = {f"{module}.{alias.name}" for alias in node.names}
    yield from sorted({name if is_module(name) else module for name in named})


def imports_of(path: Path) -> list[Import]:
    """Every import of an `app` module in `path`, with its kind."""
    source = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def walk(node: ast.AST, kind: Kind) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(statement, "type_checking" if kind == "module" else kind)
                for statement in child.orelse:
                    visit(statement, kind)
            else:
                visit(child, kind)

    def visit(node: ast.AST, kind: Kind) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            kind = "function"
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node, source, is_package):
                if target.split(".")[0] == "app" and target != "app":
                    found.append(Import(source, target, path, node.lineno, kind))
        walk(node, kind)

    walk(ast.parse(path.read_text(), filename=str(path)), "module")
    return found


def all_imports() -> list[Import]:
    return [found for path in sorted(APP.rglob("*.py")) for found in imports_of(path)]


def package_edges(kinds: frozenset[Kind] = frozenset({"module"})) -> dict[tuple[str, str], list[Import]]:
    """Node -> node edges (no self-edges), each with the imports that make it."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for found in all_imports():
        if found.kind in kinds:
            source, target = node_of(found.source), node_of(found.target)
            if source != target:
                edges[(source, target)].append(found)
    return dict(edges)


def strongly_connected(edges: dict[tuple[str, str], list[Import]]) -> list[frozenset[str]]:
    """Tarjan's components with more than one node, largest first (iterative: no recursion limit)."""
    successors: dict[str, list[str]] = defaultdict(list)
    for source, target in sorted(edges):
        successors[source].append(target)
    nodes = sorted({node for edge in edges for node in edge})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            nexts = successors[node]
            if position < len(nexts):
                work.append((node, position + 1))
                child = nexts[position]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(frozenset(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components, key=lambda c: (-len(c), sorted(c)))


def rank(node: str) -> int:
    """Position in PACKAGE_ORDER (a domain's command-line module ranks with `app.cli`); -1 for the base."""
    if is_domain_cli(node):
        return PACKAGE_ORDER.index("app.cli")
    return PACKAGE_ORDER.index(node) if node in PACKAGE_ORDER else -1


def climbing(edges: dict[tuple[str, str], list[Import]]) -> dict[tuple[str, str], list[Import]]:
    """The edges that go up the order: to a listed node above the source (a base node is below every one)."""
    return {edge: found for edge, found in edges.items()
            if rank(edge[1]) >= 0 and rank(edge[1]) > rank(edge[0])}


def describe(edges: dict[tuple[str, str], list[Import]]) -> str:
    return "\n".join(f"{source} -> {target}: " + ", ".join(f"{f.where} ({f.target})" for f in found)
                     for (source, target), found in sorted(edges.items()))


def test_imports_point_down_the_package_order() -> None:
    """A module-level import from a package to one above it in PACKAGE_ORDER is a new loop in the making."""
    new = {edge: found for edge, found in climbing(package_edges()).items() if edge not in TOLERATED_BACK_EDGES}
    assert new == {}, "imports climbing PACKAGE_ORDER (import the lower package's service the other way, " \
                      "or move the shared type down):\n" + describe(new)


def test_every_tolerated_back_edge_is_still_there() -> None:
    """A back-edge that is gone is dropped from TOLERATED_BACK_EDGES, so the pin stays exact."""
    gone = sorted(set(TOLERATED_BACK_EDGES) - set(climbing(package_edges())))
    assert gone == [], f"no longer imported, drop from TOLERATED_BACK_EDGES and update EXPECTED_LOOPS: {gone}"


def test_the_import_loops_are_the_pinned_ones() -> None:
    """The module-level graph's strongly connected components are exactly EXPECTED_LOOPS."""
    edges = package_edges()
    loops = strongly_connected(edges)
    up = {edge: found for edge, found in climbing(edges).items()
          if any(edge[0] in loop and edge[1] in loop for loop in loops)}
    found = "; ".join(", ".join(sorted(loop)) for loop in loops) or "none"
    assert loops == EXPECTED_LOOPS, f"the import loops are now: {found}\nthe edges that climb inside them:\n" \
                                    + describe(up)


def report() -> str:
    """The loops of the module-level graph with every edge inside, then the hidden climbing edges."""
    lines: list[str] = []
    edges = package_edges()
    for loop in strongly_connected(edges):
        lines.append(f"loop of {len(loop)}: {', '.join(sorted(loop))}")
        inside = {edge: found for edge, found in edges.items() if edge[0] in loop and edge[1] in loop}
        lines.extend("  " + line for line in describe(inside).splitlines())
    lines.append("climbing PACKAGE_ORDER at module level:")
    lines.extend("  " + line for line in describe(climbing(edges)).splitlines())
    for kind in ("type_checking", "function"):
        hidden = climbing(package_edges(frozenset({kind})))
        lines.append(f"climbing PACKAGE_ORDER, {kind} imports (not pinned):")
        lines.extend("  " + line for line in describe(hidden).splitlines())
    everything = strongly_connected(package_edges(frozenset({"module", "type_checking", "function"})))
    lines.append("loops counting every kind: " + "; ".join(", ".join(sorted(loop)) for loop in everything))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())  # noqa: T201 - the script's output
