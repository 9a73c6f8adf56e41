"""The package's folders are its layers, and imports run one way: down.

Every `import` and `from ... import` of every module (at its top or inside a function: a lazy
import is an arrow too) is read from the source with the ast module, mapped to the layer of
the module it names, and checked against the order below.  A module may import from its own
layer and from the layers under it, never from one above.  Nor may the modules import each
other in a cycle (within a layer too)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaefail"

# Bottom to top.  The top-level modules other than the two entry points are the foundation
# every layer may use (settings, grid, catalogue, files, provenance, runtime, random streams,
# the convergence rule, the criteria); the entry points (the command line and the bench) may
# use everything.
LAYERS = ("foundation", "models", "data", "engine", "evaluation", "jobs", "analyses", "report", "entry")
ENTRY_POINTS = ("vaefail.__main__", "vaefail.bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "foundation"


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports, anywhere in its source."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import name`: name is a module of pkg, or something defined in pkg
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known and name != module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {module: imported_modules(module, path, known) for module, path in modules.items()}


def test_every_module_is_in_a_layer():
    graph = import_graph()
    assert len(graph) > 40
    top_level = sorted(m for m in graph if m.count(".") == 1 and layer_of(m) == "foundation")
    assert top_level == ["vaefail.catalogue", "vaefail.config", "vaefail.convergence", "vaefail.criteria",
                         "vaefail.files", "vaefail.grid", "vaefail.provenance", "vaefail.randomness",
                         "vaefail.runtime"]
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS) - {"foundation", "entry"}


def test_no_import_runs_up_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if rank[layer_of(target)] > rank[layer_of(module)]]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_an_upward_and_a_lazy_import(tmp_path):
    """The parser itself: a relative import from a function body is found and mapped."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..report.tables import to_latex\n    from .. import grid\n")
    known = {"vaefail.report.tables", "vaefail.grid", "vaefail.engine.m"}
    assert imported_modules("vaefail.engine.m", source, known) == {"vaefail.report.tables", "vaefail.grid"}
