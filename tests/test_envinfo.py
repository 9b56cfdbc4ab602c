"""``lskd_bench.envinfo``: the environment results and published tables record."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from lskd_bench import envinfo
from lskd_bench.runners import store

from .fixtures import ROOT, TINY_ARGS


@pytest.mark.slow
def test_results_and_leaderboard_record_the_environment(tmp_path, cli):
    from lskd_bench import __version__
    from lskd_bench.envinfo import cpu_model

    rc, out, err = cli("run", "--out", str(tmp_path), *TINY_ARGS, "--no-baseline", "--threads", "1")
    assert rc == 0, err
    env = json.loads(next(tmp_path.rglob(store.RESULT)).read_text())["env"]
    assert env["lskd_bench"] == __version__ and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["cpu"] == cpu_model() and env["threads"] == 1 and env["commit"]
    md = (tmp_path / "digits" / "leaderboard.md").read_text()
    assert f"- trained with lskd-bench {__version__} (commit {env['commit']})\n" in md
    assert (
        f"- torch {torch.__version__}\n- device cpu ({cpu_model()})\n- CPU {cpu_model()}\n- threads per process 1\n"
        in md
    )
    assert "bit-identical when rerun on one machine" in md and md in out


def test_git_commit_is_this_checkouts_and_unknown_outside_git(tmp_path, monkeypatch):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    envinfo.git_commit.cache_clear()  # cached per process: HEAD may have moved since an earlier test asked
    assert re.fullmatch(rf"{head.stdout.strip()}(\+dirty)?", envinfo.git_commit())
    monkeypatch.setattr(envinfo, "__file__", str(tmp_path / "envinfo.py"))  # a source tree outside git
    envinfo.git_commit.cache_clear()
    try:
        assert envinfo.git_commit() == "unknown"
    finally:
        envinfo.git_commit.cache_clear()
