"""benchmarks/gpu_check.py --small: the GPU check's own code (synthetic bounds, the runner's fused group with
cpu and gpu decoding, teacher training, digits grid, torchrun DDP, translation, the paper estimate) on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_small_prints_and_writes_one_table(tmp_path):
    out = tmp_path / "check.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", str(ROOT / "benchmarks" / "gpu_check.py"),
                        "--small", "--out", str(out)], capture_output=True, text=True, env=env, timeout=3600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines()[0].startswith("gpu_check: starting")
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    names = [r["workload"] for r in rows]
    for want in ("synthetic: resnet18 teacher step", "synthetic: KD step", "decode=cpu", "decode=gpu", "teacher training",
                 "digits default grid", "torchrun DDP, 1 process", "translation"):
        assert any(want in n for n in names), (want, names)
    fused = [r for r in rows if r["workload"].startswith("runner: fused")]
    assert len(fused) == 2 and all(r["achieved"] > 0 and r["bound"] > 0 and r["ratio"] > 0 for r in fused)
    ddp = next(r for r in rows if "torchrun" in r["workload"])
    assert ddp["achieved"] and "FAILED" not in ddp["note"]
    nmt = [r for r in rows if r["workload"].startswith("translation")]
    assert all(r["achieved"] for r in nmt) or any("fairseq is not importable" in r["note"] for r in nmt)
    text = out.read_text()
    assert text in p.stdout and "| workload | achieved | bound | ratio | note |" in text
    assert "ImageNet resnet50 -> resnet18" in text and "| all tables |" in text


def _benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_nmt
    import gpu_check

    monkeypatch.setattr(gpu_check, "ROWS", [])
    return gpu_check, bench_nmt


def test_fairseq_tools_run_as_modules_when_their_scripts_are_on_no_path(tmp_path, monkeypatch):
    """On the GPU machine fairseq is built with ``pip install --target /tmp/site_fs`` (shared/gpu/prelude.sh): its
    console scripts land in /tmp/site_fs/bin, next to no interpreter and on no PATH. vs_fairseq (gpu_check's
    'lskd-bench / fairseq-train' row) then runs them as modules of this interpreter."""
    pytest.importorskip("fairseq_cli")
    _, bench_nmt = _benchmarks(monkeypatch)
    monkeypatch.setattr(bench_nmt, "FAIRSEQ_BIN", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    for name, module in (("fairseq-preprocess", "fairseq_cli.preprocess"), ("fairseq-train", "fairseq_cli.train")):
        assert bench_nmt._fairseq_tool(name) == [sys.executable, "-m", module]
    p = subprocess.run([*bench_nmt._fairseq_tool("fairseq-preprocess"), "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert p.returncode == 0 and "--trainpref" in p.stdout, p.stderr[-2000:]
