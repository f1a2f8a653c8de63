"""The import ladder and one source per python model. Reads the source with `ast`, imports
nothing (import-linter's grimp cannot see the stage folders that pyproject's package-dir maps
under towerlite.*, so the graph is built here from the same mapping).

    application  towerlite.cli, towerlite.eval_cli, towerlite.demo, towerlite.__main__,
                 towerlite.bench_cli
    stages       towerlite.distill | towerlite.export | towerlite.serving   (not each other)
    evaluation   towerlite.evaluation
    base         every other towerlite module (imports nothing above)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
APPLICATION = ("towerlite.cli", "towerlite.demo", "towerlite.eval_cli", "towerlite.__main__",
               "towerlite.bench_cli")
STAGES = ("towerlite.distill", "towerlite.export", "towerlite.serving")
EVALUATION = "towerlite.evaluation"


def _modules() -> dict[str, Path]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    modules = {}
    for package, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if "triton_models" not in name:  # Triton's python models import no towerlite code
                modules.setdefault(name, path)
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The towerlite modules `name` imports: `from P import m` counts module P.m where m is a
    module, else P itself."""
    out = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            for alias in node.names:
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {i for i in out if i == "towerlite" or i.startswith("towerlite.")}


def _layer(module: str) -> tuple[int, str]:
    def under(prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")
    if any(under(p) for p in APPLICATION):
        return 3, "application"
    for stage in STAGES:
        if under(stage):
            return 2, stage
    if under(EVALUATION):
        return 1, "evaluation"
    return 0, "base"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(name, path, modules):
            owners = [m for m in modules if imported == m or imported.startswith(m + ".")]
            if owners:
                targets.add(max(owners, key=len))
        graph[name] = targets - {name}
    return graph


def test_the_stage_folders_install_under_one_namespace():
    modules = _modules()
    assert {"towerlite.distill.pipeline", "towerlite.export.pipeline", "towerlite.serving.deploy",
            "towerlite.evaluation.recommend", "towerlite.distill.finetune.train"} <= set(modules)
    generic = [line for p in modules.values() for line in p.read_text().splitlines()
               if re.match(r"\s*(from|import) (distill|export|serving)\b", line)]
    assert not generic, generic


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject lists packages by hand (package-dir mapping rules out `find`): a folder left
    out installs in editable mode from a stale egg-info and breaks on a clean clone."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *parts)))
    assert on_disk == set(setuptools["packages"])


def test_imports_only_go_down_the_ladder():
    wrong = []
    for module, targets in _graph().items():
        rank, name = _layer(module)
        for target in targets:
            t_rank, t_name = _layer(target)
            if t_rank > rank or (t_rank == rank == 2 and t_name != name):
                wrong.append(f"{module} ({name}) imports {target} ({t_name})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    # module level, lazy (in-function) imports included: the ladder orders the layers, this
    # catches circles inside one
    edges = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if not state.get(nxt) and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if not state.get(start):
            cycle = visit(start, [])
            assert cycle is None, " → ".join(cycle)


def test_each_python_model_has_one_source():
    # the Triton python models live in serving/triton_models only; deploy copies them into a
    # repository (the committed model_repository/ holds configs, not copies)
    sources = sorted(p.name for p in (ROOT / "serving" / "triton_models").glob("*.py")
                     if p.name != "__init__.py")
    assert sources
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "model_repository").rglob("*.py")]
    assert not copies, copies
