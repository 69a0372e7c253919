"""Structure rules anyone can check, read from the source with ``ast`` (imports inside functions
count): Ray only in ``facray/runners/``, no import cycles, lazy facray imports only with a reason,
inference without training code, a run folder's layout in one module."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facray"
# Where a lazy facray import needs no written reason: the command handlers import each command's
# code only when that command runs, so `facray --help` and `facray label` stay light.
LAZY_ANYWHERE = {"cli", "commands"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(path: Path):
    """(module imported, line, inside a function, source text) for every import statement."""
    source = path.read_text()
    lines = source.splitlines()

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, inside, "\n".join(lines[child.lineno - 1:child.end_lineno])
            elif isinstance(child, ast.ImportFrom) and not child.level:
                text = "\n".join(lines[child.lineno - 1:child.end_lineno])
                for alias in child.names:  # `from facray import storage` imports facray.storage
                    yield f"{child.module}.{alias.name}", child.lineno, inside, text
                    yield child.module, child.lineno, inside, text
            yield from walk(child, inside)
    yield from walk(ast.parse(source), False)


def _facray_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for imported, *_ in _imports(path):
            if imported in modules and imported not in (name, "facray"):
                graph[name].add(imported)
    return graph


def test_ray_is_imported_only_in_runners():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for name, path in _modules().items() if not name.startswith("facray.runners")
                 for imported, line, _, _ in _imports(path) if imported == "ray" or imported.startswith("ray.")]
    assert offenders == [], "Ray belongs in facray/runners/ only"


def test_no_import_cycles():
    graph, state, cycles = _facray_graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_structure_test_sees_lazy_imports_and_cycles(tmp_path):
    """The scanner itself: an import inside a function counts, and a two-module cycle is one."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import ray.data\n    from facray.runs import RunFolder  # lazy: a reason\n")
    found = {(imported, inside) for imported, _, inside, _ in _imports(f)}
    assert {("ray.data", True), ("facray.runs.RunFolder", True), ("facray.runs", True)} <= found


def test_lazy_facray_imports_say_why():
    """A facray import inside a function hides a dependency from the module's header: allowed in
    the CLI, elsewhere only with a ``# lazy: <reason>`` comment (torch kept out of a light process)."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text.strip()}"
                 for name, path in _modules().items() if name.rsplit(".", 1)[-1] not in LAZY_ANYWHERE
                 for imported, line, inside, text in _imports(path)
                 if inside and imported.startswith("facray") and "# lazy:" not in text]
    assert sorted(set(offenders)) == []


def test_inference_does_not_import_training_code():
    """What labelling loads (predictors, labelling, the label runner, the MLflow pyfunc) needs no trainer."""
    code = ("import sys; import facray.predictors.networks, facray.labelling.batch, facray.runners.label, "
            "facray.predictors.pyfunc; print(sorted(m for m in sys.modules if m.startswith('facray.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_commands_help_imports_neither_torch_nor_ray_nor_mlflow():
    """``facray --help`` builds every command's parser: from torch-free config modules only."""
    code = ("import sys\nfrom facray.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'ray', 'mlflow'} & set(sys.modules)), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "train-binary" in out.stdout and out.stderr.strip().splitlines()[-1] == "[]"


def test_run_folder_paths_are_joined_in_one_module_only():
    """Nothing but facray/runs.py builds a path into a run folder (``x / "jobs"``)."""
    names = ("run.json", "config.yaml", "parent_run_id", "mlflow_run_id", "mlflow_logged.json", "mlflow.db",
             "ray_results", "jobs", "jobs_summary.csv", "combined", "model", "metrics.json", "model.pt", "report",
             ".injected_failure")
    join = re.compile(r"/\s*[\"'](" + "|".join(re.escape(n) for n in names) + r")[\"']")
    offenders = [f"{f.relative_to(PACKAGE)}:{i}: {line.strip()}"
                 for f in PACKAGE.rglob("*.py") if f.name != "runs.py"
                 for i, line in enumerate(f.read_text().splitlines(), 1) if join.search(line)]
    assert offenders == []


def test_no_module_is_a_grab_bag():
    """About 300 lines at most per module; the dataset readers hold a format each and may run longer."""
    readers = {"data/celeba.py", "data/folder.py"}
    long = {str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 320 and str(f.relative_to(PACKAGE)) not in readers}
    assert long == {}
