"""pytest fixtures and hooks only; plain helpers live in tests/fixtures.py."""

from __future__ import annotations

import os

import pytest

from lskd_bench.cli import main
from lskd_bench.runners.grid import resolve_config

from .fixtures import ROOT, make_cub, make_imagefolder, tiny_overrides


def pytest_configure(config):
    """Subprocesses (``python -m lskd_bench``, workers, benchmarks) import this checkout's package, whatever their
    working directory and whichever copy of the package the virtual environment has installed."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


@pytest.fixture
def tiny_cfg():
    return resolve_config("digits", {}, tiny_overrides())


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str):
        rc = main(list(argv))
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    return run


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory):
    """A tiny ImageFolder in ImageNet's layout (3 classes, 4 train / 2 val JPEGs each)."""
    return make_imagefolder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory):
    """A tiny official CUB_200_2011 folder (its parent directory)."""
    return make_cub(tmp_path_factory.mktemp("cub")).parent
