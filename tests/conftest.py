from __future__ import annotations

import pytest

from lskd_bench.cli import main
from lskd_bench.runners.grid import resolve_config


def tiny_overrides(epochs: int = 1, **extra):
    o = {
        "grid": {"alphas": [0.0, 0.1], "temperatures": [1.0, 4.0], "seeds": [0]},
        "teacher": {"epochs": epochs},
        "student": {"epochs": epochs},
    }
    o["grid"] = {**o["grid"], **extra.pop("grid", {})}  # one seed unless a test asks for more
    o.update(extra)
    return o


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


def require(module: str, what: str):
    """Import an optional dependency, or skip the test module with the reason. CI sets
    LSKD_REQUIRE_ALL=1, which turns such a skip into a failure: there every test must run."""
    import importlib
    import os

    if os.environ.get("LSKD_REQUIRE_ALL") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed: {what}")


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory):
    """A tiny ImageFolder in ImageNet's layout (3 classes, 4 train / 2 val JPEGs each)."""
    from .image_fixtures import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory):
    """A tiny official CUB_200_2011 folder (its parent directory)."""
    from .image_fixtures import make_cub

    return make_cub(tmp_path_factory.mktemp("cub")).parent
