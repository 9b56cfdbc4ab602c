"""The subprocess and torchrun (DDP, gloo on the CPU) executors train the same cells as the local one."""
from __future__ import annotations

import json

import pytest

from lskd_bench import store

ARGS = ["--alphas", "0.1", "--temperatures", "2", "--epochs", "2", "--seeds", "0", "--no-progress"]


@pytest.mark.parametrize("extra", [["--executor", "subprocess", "--jobs", "2"], ["--nproc-per-node", "2"]])
def test_process_executors_finish_every_cell(tmp_path, cli, extra):
    rc, out, err = cli("run", "--out", str(tmp_path), *ARGS, *extra)
    assert rc == 0, err
    assert "3 cells: trained 3, reused 0" in out
    results = [json.loads(p.read_text()) for p in tmp_path.rglob(store.RESULT)]
    assert sorted(r["cell"]["role"] for r in results) == ["baseline", "student", "teacher"]
    expected_procs = 2 if "--nproc-per-node" in extra else 1
    assert {r["env"]["processes"] for r in results} == {expected_procs}
    assert all(len(r["history"]) == 2 for r in results)
    rc, out, _ = cli("run", "--out", str(tmp_path), *ARGS, *extra)
    assert rc == 0 and "trained 0, reused 3" in out
