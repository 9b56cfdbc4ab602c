"""The package's declared layers (pyproject.toml, [tool.importlinter]) hold, and every module imports alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .fixtures import ROOT, require

MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "lskd_bench").rglob("*.py")
    if p.name != "__main__.py"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contracts of ``root``/pyproject.toml, on the package under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_layers_contract_is_kept():
    require("importlinter", "the layers contract check (pip install -e '.[test]')")
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 kept, 0 broken" in proc.stdout


@pytest.mark.slow
def test_an_upward_import_breaks_the_contract(tmp_path):
    """A task importing the runner (a layer above it) is reported, naming the import."""
    require("importlinter", "the layers contract check (pip install -e '.[test]')")
    shutil.copytree(ROOT / "lskd_bench", tmp_path / "lskd_bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    base = tmp_path / "lskd_bench" / "tasks" / "base.py"
    base.write_text(base.read_text() + "\nfrom ..runners import grid  # noqa: E402\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1
    assert "lskd_bench.tasks.base -> lskd_bench.runners.grid" in proc.stdout


IMPORT_EACH_ALONE = """
import os, sys, traceback
import numpy, torch  # third-party modules preloaded once: each child below imports lskd_bench from scratch
failed = []
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(module)
print("failed:", " ".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module, imported first in a fresh interpreter (a forked child that has imported nothing of
    lskd_bench), imports: no module depends on another having been imported before it."""
    assert "lskd_bench.runners.units" in MODULES and "lskd_bench.cli" in MODULES
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *MODULES],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr[-3000:]
