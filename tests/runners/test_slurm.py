"""The slurm executor against a real one-node Slurm (tests/slurm/start.sh): a digits grid submitted through
sbatch with teacher -> student dependencies, status, re-submission skipping, a job killed with scancel
resuming from its checkpoint, and --wait returning when a job dies without its result. Skipped, with the
reason, where Slurm cannot start here; the bad-input checks that need no cluster always run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from lskd_bench import store

from ..fixtures import ROOT, require

submitit = require("submitit", "the slurm executor (pip install -e '.[slurm]')")

HANG_GUARD_S = 15 * 60


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "slurm" / "start.sh")], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.skip(
            f"a local Slurm could not start here (start.sh exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
        )
    conf = proc.stdout.strip().splitlines()[-1]
    profile = tmp_path_factory.mktemp("profile") / "slurm.yaml"
    profile.write_text("partition: debug\ncpus_per_task: 1\ntime_min: 30\npoll_s: 0.5\n")
    env = {**os.environ, "SLURM_CONF": conf}
    yield env, profile
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], env=env, capture_output=True)


def lskd(env, *args, check=True, timeout=HANG_GUARD_S):
    p = subprocess.run(
        [sys.executable, "-m", "lskd_bench", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


def wait_for(predicate, what: str):
    guard = time.time() + HANG_GUARD_S  # only stops a hang; nothing depends on speed
    while not predicate():
        assert time.time() < guard, f"timed out waiting for {what}"
        time.sleep(0.2)


def job_ids(out: str) -> list[str]:
    m = re.search(r"Slurm jobs: ([\d ]+)", out)
    return m.group(1).split() if m else []


def squeue(env) -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %T %r"], env=env, capture_output=True, text=True).stdout


GRID = ["--alphas", "0.1", "--temperatures", "1,2", "--seeds", "0", "--no-progress"]


@pytest.mark.slow
def test_grid_through_sbatch_with_dependencies_status_and_resubmission(slurm, tmp_path):
    env, profile = slurm
    runs = tmp_path / "runs"
    args = [
        "run",
        "--out",
        str(runs),
        "--runner-profile",
        str(profile),
        *GRID,
        "--set",
        "teacher.epochs=20",
        "--set",
        "student.epochs=2",
    ]
    first = lskd(env, *args)
    assert "4 cells: trained 0, reused 0 finished, submitted 4 to Slurm" in first.stdout
    teacher_job, student_job = job_ids(first.stdout)  # the teacher alone, the fused student group after it
    infos = {p.parent.name.split("-")[0]: json.loads(p.read_text()) for p in runs.rglob("slurm.json")}
    assert infos["teacher_cnn_wide_a0.1_s0"]["job_id"] == teacher_job
    assert {i["job_id"] for n, i in infos.items() if n != "teacher_cnn_wide_a0.1_s0"} == {student_job}
    assert infos["student_kd_cnn_tiny_a0.1_T1_s0"]["dependency"] == f"afterok:{teacher_job}"
    shown = subprocess.run(["scontrol", "show", "job", student_job], env=env, capture_output=True, text=True).stdout
    assert f"Dependency=afterok:{teacher_job}" in shown or "JobState=COMPLETED" in shown or "JobState=RUNNING" in shown

    # re-submitting while the jobs are queued, running or finished submits nothing new
    again = lskd(env, *args)
    assert not job_ids(again.stdout) and "submitted" not in again.stdout.split("->")[0]
    assert {json.loads(p.read_text())["job_id"] for p in runs.rglob("slurm.json")} == {teacher_job, student_job}
    status = lskd(env, "status", "--runs", str(runs)).stdout
    assert re.search(rf"student_kd_cnn_tiny_a0\.1_T1_s0-\w+\s+(queued|running|finished)\s+{student_job}", status)

    wait_for(lambda: len(list(runs.rglob(store.RESULT))) == 4, "the grid's results")
    status = lskd(env, "status", "--runs", str(runs)).stdout
    assert status.strip().endswith("4 finished")
    done = lskd(env, *args)
    assert "4 cells: trained 0, reused 4 finished" in done.stdout and not job_ids(done.stdout)
    assert "| T = 2 |" in done.stdout  # the leaderboard of the finished grid


@pytest.mark.slow
def test_scancelled_job_resumes_from_its_checkpoint_on_resubmission(slurm, tmp_path):
    env, profile = slurm
    runs = tmp_path / "runs"
    args = [
        "run",
        "--out",
        str(runs),
        "--runner-profile",
        str(profile),
        *GRID,
        "--set",
        "teacher.epochs=400",
        "--set",
        "student.epochs=1",
        "--set",
        "baseline=false",
    ]
    first = lskd(env, *args)
    teacher_job = job_ids(first.stdout)[0]
    (tdir,) = [p for p in (runs / "digits").iterdir() if p.name.startswith("teacher_")]

    def checkpointed():
        try:
            import torch

            return torch.load(tdir / store.STATE, weights_only=False)["position"]["epoch"] >= 2
        except Exception:
            return False

    wait_for(checkpointed, "the teacher's epoch checkpoint")
    subprocess.run(["scancel", teacher_job], env=env, check=True)
    wait_for(lambda: teacher_job not in squeue(env), "the cancelled job to leave the queue")
    wait_for(
        lambda: not any(line.split()[0] != teacher_job for line in squeue(env).splitlines()),
        "the students' job (killed: its dependency can never be satisfied)",
    )
    status = lskd(env, "status", "--runs", str(runs)).stdout
    assert re.search(
        rf"teacher_cnn_wide_a0\.1_s0-\w+\s+failed\s+{teacher_job}\s+job {teacher_job} left the queue", status
    )

    lskd(env, *args, "--wait")  # re-submission: the teacher resumes, then its students train
    res = json.loads((tdir / store.RESULT).read_text())
    assert res["resumes"] and res["resumes"][0]["epoch"] >= 2  # picked up from the checkpoint, not from scratch
    assert len(res["history"]) == 400
    assert len(list(runs.rglob(store.RESULT))) == 3


@pytest.mark.slow
def test_wait_returns_when_a_job_dies_without_its_result(slurm, tmp_path):
    """No accounting database: the executor reads squeue, so a cancelled job cannot leave --wait hanging."""
    env, profile = slurm
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lskd_bench",
            "run",
            "--out",
            str(runs),
            "--runner-profile",
            str(profile),
            "--wait",
            *GRID,
            "--set",
            "teacher.epochs=400",
            "--set",
            "baseline=false",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: list(runs.rglob("teacher_*/slurm.json")), "the submission")
        jid = json.loads(next(runs.rglob("teacher_*/slurm.json")).read_text())["job_id"]  # the teacher's job
        wait_for(lambda: f"{jid} RUNNING" in squeue(env), "the teacher's job to start")
        subprocess.run(["scancel", jid], env=env, check=True)
        _out, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert f"failed: teacher_cnn_wide_a0.1_s0: RuntimeError: Slurm job {jid} ended without a result" in err
    assert (
        "not run: student_kd_cnn_tiny_a0.1_T1_s0: its teacher teacher_cnn_wide_a0.1_s0 failed" in err
        or "student_kd_cnn_tiny_a0.1_T1_s0" in err
    )


# ------------------------------------------------------------------------------------------ bad input (no cluster)
@pytest.mark.slow
def test_no_sbatch_on_path(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("partition: debug\n")
    env = {**os.environ, "PATH": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "lskd_bench", "run", "--out", str(tmp_path / "runs"), "--runner-profile", str(profile)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "the slurm executor needs sbatch on PATH" in p.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text,message", [
    ("partition: [debug\n", "is not valid YAML"),
    ("partiton: debug\n", "unknown config key partiton (did you mean partition?) (runner profile"),
    ("time_min: soon\n", "time_min must be an integer, got 'soon'"),
])  # fmt: skip
def test_bad_profile(tmp_path, cli, text, message):
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    rc, _, err = cli("run", "--out", str(tmp_path / "runs"), "--runner-profile", str(profile))
    assert rc == 2 and message in err and not (tmp_path / "runs").exists()


def test_missing_profile(tmp_path, cli):
    rc, _, err = cli("run", "--out", str(tmp_path / "runs"), "--runner-profile", str(tmp_path / "nope.yaml"))
    assert rc == 2 and "cannot read config" in err


@pytest.mark.slow
def test_unknown_partition(slurm, tmp_path):
    env, _ = slurm
    profile = tmp_path / "p.yaml"
    profile.write_text("partition: gpu-huge\n")
    p = lskd(env, "run", "--out", str(tmp_path / "runs"), "--runner-profile", str(profile), check=False)
    assert p.returncode == 2 and "unknown Slurm partition 'gpu-huge' (known: debug)" in p.stderr
    assert not (tmp_path / "runs").exists()
