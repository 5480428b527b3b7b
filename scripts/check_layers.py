#!/usr/bin/env python
"""Check that imports between selfplay's modules point one way and form no cycle.

Layers, highest first (a module may import its own layer or any lower one, never a higher one):

    cli  ->  stages  ->  evals, methods, htmlreport, model_card  ->  judges  ->  envs  ->  core  ->  data  ->  base

where *base* is the top-level modules (config, config_ranges, config_tree, errors, hardware, io, liveness, loop_stop, model_meta,
models, progress, remote, resources, runs, testing, threads, trackers). What is checked, by reading the source (nothing is
imported):

* every ``import selfplay...`` / ``from selfplay... import ...`` statement of every file under
  ``selfplay/`` — module-level ones, the ones inside functions (lazy imports) and the ones under
  ``if TYPE_CHECKING:`` alike: a lazy import is still a dependency, it only runs later;
* an import from a lower layer into a higher one is an error;
* a cycle of files (a imports b ... imports a, through any mix of module-level and lazy imports) is an
  error, inside one layer too. A package's ``__init__.py`` counts as a file (``selfplay.judges``).

``python scripts/check_layers.py`` prints every import edge with ``--list``, and exits 1 naming each
violation. ``--root DIR`` checks another tree laid out the same way (the tests plant violations in one).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

# Highest first. A name is a subpackage (every module under it) or a top-level module of the package.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("stages",),
    ("evals", "methods", "htmlreport", "model_card"),
    ("judges",),
    ("envs",),
    ("core",),
    ("data",),
    ("config", "config_ranges", "config_tree", "errors", "hardware", "io", "liveness", "loop_stop", "model_meta", "models",
     "progress", "remote", "resources", "runs", "testing", "threads", "trackers", "__init__"),
)


def module_name(path: Path, root: Path) -> str:
    """``root/selfplay/judges/base.py`` -> ``selfplay.judges.base``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str, package: str) -> int:
    """The index in :data:`LAYERS` of a module of ``package`` (0 = highest); unknown names are an error."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise SystemExit(f"check_layers: {module} is in no layer; add '{name}' to LAYERS in {__file__}")


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module a dotted import name lands in: the longest prefix that is a module of the tree."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_edges(root: Path, package: str = "selfplay") -> list[tuple[str, str, int, bool]]:
    """Every import between modules of ``package``: (importer, imported, line, at module level)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    edges = []
    for importer, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from selfplay.core import losses` imports the module selfplay.core.losses
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise SystemExit(f"check_layers: {path}:{node.lineno}: use absolute imports")
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            targets = {_resolve(n, modules) for n in names if n == package or n.startswith(package + ".")}
            for target in sorted(t for t in targets if t and t != importer):
                edges.append((importer, target, node.lineno, id(node) in top))
    return edges


def upward_imports(edges: list[tuple[str, str, int, bool]], package: str = "selfplay") -> list[str]:
    """One message per import from a lower layer into a higher one."""
    out = []
    for importer, target, line, _ in edges:
        if layer_of(target, package) < layer_of(importer, package):
            out.append(f"{importer} (line {line}) imports {target}, a higher layer")
    return out


def cycles(edges: list[tuple[str, str, int, bool]]) -> list[list[str]]:
    """The import cycles among files, one per strongly connected component (Tarjan), each as a path."""
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth <= number of modules (~100)
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
                components.append(_cycle_path(sorted(component), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, as a readable path a -> b -> a."""
    inside = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & inside):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return component


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the directory holding the selfplay package (default: this repository)")
    parser.add_argument("--list", action="store_true", help="print every import edge first")
    args = parser.parse_args(argv)
    edges = import_edges(args.root)
    if args.list:
        for importer, target, line, top in edges:
            print(f"{importer}:{line} -> {target}{'' if top else '  (lazy)'}")
    problems = upward_imports(edges) + [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check_layers: {len(problems)} problem(s); layers, highest first: "
              + " -> ".join("/".join(layer) for layer in LAYERS), file=sys.stderr)
        return 1
    print(f"check_layers: {len(edges)} imports between {len({e[0] for e in edges})} modules, all pointing down, "
          "no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
