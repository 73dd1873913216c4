"""The package's rooms, as docs/architecture.md draws them: imports run one way, in no circle,
at most 12 modules at the top, no two modules of one name, and the code keeps the project's own style
(ruff, lines of at most 110 characters)."""

import ast
import shutil
import subprocess
import sys

import pytest
from processes import REPO

PACKAGE = REPO / "gptdist"
BASE = {"__init__", "errors", "arguments", "config", "distributed", "tokenizer", "files"}
COMMANDS = {"prepare", "train", "generate", "evaluate", "export", "bench", "plan"}
# The rooms each room may import (its own included).
MAY_IMPORT = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "model"},
    "observe": {"base", "observe"},
    "checkpoint": {"base", "model", "checkpoint"},
    "evaluation": {"base", "data", "model", "observe", "checkpoint", "evaluation"},
    "training": {"base", "data", "model", "observe", "checkpoint", "evaluation", "training"},
    "planning": {"base", "data", "model", "observe", "training", "planning"},
    "commands": {"base", "data", "model", "observe", "checkpoint", "evaluation", "training", "planning"},
}


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    if parts[1] in COMMANDS and (len(parts) == 2 or parts[2] == "__main__"):  # gptdist.plan is a package
        return "commands"
    return parts[1]


def imports() -> dict[str, set[str]]:
    """Every gptdist module and the gptdist modules it imports (at any depth of its code)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, package = module_name(path), module_name(path if path.name == "__init__.py" else path.parent)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 packages
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + [base]).strip(".")
                names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found |= {name for name in names if name.startswith("gptdist")}
        graph[module] = found
    known = set(graph)
    return {module: {name for name in found if name in known} for module, found in graph.items()}


def test_every_room_imports_only_the_rooms_below_it():
    wrong = [f"{module} ({room(module)}) imports {target} ({room(target)})"
             for module, targets in imports().items() for target in targets
             if room(target) not in MAY_IMPORT[room(module)]
             and module != f"{target}.__main__"]  # `python -m gptdist.plan` runs its package
    assert not wrong, wrong


def test_at_most_twelve_modules_at_the_top_and_no_two_of_one_name():
    top = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    names: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*"):
        module = path.suffix == ".py" and path.stem != "__init__"
        if path.name != "__pycache__" and (path.is_dir() or module):  # a package is a module too
            names.setdefault(path.stem, []).append(str(path.relative_to(REPO)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}


def test_no_modules_import_each_other_in_a_circle():
    graph = imports()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(module, path):
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                pytest.fail("a circle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            walk(module, [module])


def test_the_code_keeps_the_projects_style():
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:]
