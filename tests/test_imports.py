"""The package's import structure (docs/packages.md): light modules stay light, the module graph
has no circle, no module reaches into another's private names and no source file grows past
700 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nnrobustloss"
MAX_LINES = 700
HEAVY = ("SimpleITK", "scipy", "torch")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) of every run-time import of a module: module level and
    inside functions, not under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node) if n is not node and not any(n is o for o in node.orelse)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names in _imports(module, path):
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            for t in hits or [target]:
                if t in modules and t != module:
                    graph[module].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                    out.append(component)
    return out


def test_layout_and_config_load_no_heavy_module() -> None:
    code = ("import sys, nnrobustloss.layout, nnrobustloss.config, nnrobustloss.metrics.regions, "
            "nnrobustloss.report.outputs; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    env_path = str(SRC)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == ""


def test_report_outputs_load_nothing_heavy() -> None:
    code = ("import sys; from nnrobustloss.report.outputs import report_stems; "
            "print(','.join(m for m in ('numpy', 'pandas', 'matplotlib', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == ""


def test_light_stages_load_no_trainer() -> None:
    """select_best and report look methods up (``register_methods``) but train nothing: without
    custom methods they must not import the trainers (torch, nnU-Net: 5 s and 0.9 GB per job)."""
    code = ("import sys; from nnrobustloss.pipeline import register_methods; "
            "from nnrobustloss.tuning import select_best; from nnrobustloss.report import build; "
            "register_methods({'task': 'T', 'method': 'APL2'}); "
            "print(','.join(m for m in ('torch', 'nnunetv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == ""


def test_import_graph_has_no_circle() -> None:
    """No circle, function-level imports included: the registry (``methods``) is data below the
    trainers; loading a method's trainer class is ``trainers.loading``'s job (docs/packages.md)."""
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_private_name_of_another_module() -> None:
    modules = _modules()
    bad = []
    for module, path in modules.items():
        for target, names in _imports(module, path):
            if target.startswith("nnrobustloss") and target != module:
                bad += [f"{module}: from {target} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("nnrobustloss") for a in node.names
                   if f"{node.module}.{a.name}" in modules}
        bad += [f"{module}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id in aliases and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert bad == []


def test_no_source_file_over_700_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_package_contracts() -> None:
    import inspect

    from nnrobustloss.metrics import evaluate_case
    from nnrobustloss.noise import corrupt_dataset, dice_per_case

    assert list(inspect.signature(evaluate_case).parameters) == [
        "pred", "ref", "spacing", "regions", "tolerance_mm"]
    assert callable(corrupt_dataset) and callable(dice_per_case)
