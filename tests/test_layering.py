"""The package's layers, read from the import statements (with `ast`, nothing is imported):

- a stage (rlhf/stages/<name>.py) imports the library below it, never another stage: what two stages share
  belongs in the library;
- the library (rlhf/*.py and rlhf/labeling/) never imports a stage.

Exceptions, by design: rlhf/cli.py and rlhf/pipeline.py sit above the stages and dispatch to them by name
(`importlib.import_module` of a module name held as a string in their tables), which no import statement
shows and these checks therefore let pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "rlhf" / "stages"
LIBRARY = sorted([*(ROOT / "rlhf").glob("*.py"), *(ROOT / "rlhf" / "labeling").glob("*.py")])


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, nested ones (inside functions) included, in
    line order. `from X import a, b` counts as X, or, where X is a package of this project's whose members are
    modules (rlhf, rlhf.stages), as X.a and X.b. `package`: the file's package (default: from its place under
    ROOT), for relative imports."""
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..stages import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if module in ("rlhf", "rlhf.stages"):
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return sorted(found, key=lambda item: item[0])


def stage_imports(path: Path, package: str | None = None) -> list[str]:
    """The imports of another stage in the stage file `path`, as `file:line imports module`."""
    own = f"rlhf.stages.{path.stem}"
    return [f"{path.name}:{line} imports {module}" for line, module in imported_modules(path, package)
            if (module == "rlhf.stages" or module.startswith("rlhf.stages.")) and module != own]


def test_the_check_sees_every_form_of_import(tmp_path):
    """The reader catches absolute, relative, nested and `from package import module` imports of a stage, and
    lets the library and the stage's own module pass."""
    probe = tmp_path / "probe.py"
    probe.write_text("import rlhf.stages.sft\n"
                     "from rlhf.stages import collect\n"
                     "from .policy import train\n"
                     "def f():\n"
                     "    from rlhf.stages.evaluate import run\n"
                     "from rlhf.rollout import sample\n"
                     "from . import probe\n"
                     "import rlhf.stages.probe\n"
                     "from rlhf import stages\n"
                     "from rlhf import losses\n")
    bad = stage_imports(probe, package="rlhf.stages")
    assert bad == ["probe.py:1 imports rlhf.stages.sft", "probe.py:2 imports rlhf.stages.collect",
                   "probe.py:3 imports rlhf.stages.policy", "probe.py:5 imports rlhf.stages.evaluate",
                   "probe.py:9 imports rlhf.stages"]


@pytest.mark.parametrize("path", sorted(STAGES.glob("*.py")), ids=lambda p: p.name)
def test_a_stage_imports_no_other_stage(path):
    assert not stage_imports(path), "a stage imports another stage (move what they share into the library):\n" \
        + "\n".join(stage_imports(path))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT / "rlhf")))
def test_the_library_imports_no_stage(path):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}" for line, module in imported_modules(path)
           if module == "rlhf.stages" or module.startswith("rlhf.stages.")]
    assert not bad, "a library module imports a stage:\n" + "\n".join(bad)


def test_the_layers_hold_files():
    """The globs above find the files they are meant to check (a moved directory would make them pass empty)."""
    assert {p.name for p in STAGES.glob("*.py")} >= {"sft.py", "collect.py", "policy.py", "evaluate.py"}
    names = {p.name for p in LIBRARY}
    assert {"rollout.py", "models.py", "losses.py", "pipeline.py", "store.py"} <= names
