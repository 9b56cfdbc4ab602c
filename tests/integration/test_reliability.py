"""Reliability across modules, through the CLI: closed pipes, locales, byte-order marks, FIFOs, GPU options without
a GPU, one-line errors for bad inputs, the same data at another path, SIGTERM. A module's own cases live in its
test file (config: tests/test_config.py, locks: tests/runners/test_lock.py, ...; tests/README.md)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.lock import LOCK

from ..fixtures import (
    HANG_GUARD_S,
    IMAGE_ARGS,
    TINY_ARGS,
    WNIDS,
    cell_dirs,
    edit_cifar_train,
    make_imagefolder,
    require,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["tasks"],
        ["methods"],
        ["config"],
        ["--help"],
        ["run", "--help"],
        ["run", "--dry-run", "--out", "{tmp}/runs"],
        ["leaderboard", "--runs", "{tmp}/runs"],
        ["status", "--runs", "{tmp}/runs"],
    ],
)
def test_closed_output_pipe_ends_every_command_quietly(tmp_path, argv):
    """`lskd-bench tasks | head -c1`: the reader is gone before the command writes (a pipe whose read end is
    closed, so the write fails every time): no traceback, no 'Exception ignored', exit 141 as SIGPIPE'd tools."""
    from ..fixtures import fake_results

    fake_results(tmp_path / "runs")
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lskd_bench", *[a.format(tmp=tmp_path) for a in argv]],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=HANG_GUARD_S,
        )
    finally:
        os.close(w)
    expected = 0 if "--help" in argv else 141  # argparse's help swallows the failed write itself
    assert proc.returncode == expected and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, (
        proc.stderr
    )
    assert "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_head_reads_the_first_line_of_tasks(tmp_path):
    out = subprocess.run(
        f"{sys.executable} -m lskd_bench tasks | head -c1; echo; {sys.executable} -m lskd_bench methods | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert out.stderr == "" and out.stdout.count("\n") == 2 and out.stdout.startswith("c\n") and len(out.stdout) > 10


FAST_DIGITS = ["--epochs", "1", "--alphas", "0.1", "--temperatures", "1", "--seeds", "0", "--no-progress"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--device", "cuda"], "device cuda: torch sees no CUDA GPU on this machine; use --device cpu or auto"),
        (["run", "--device", "cuda", "--executor", "subprocess"], "device cuda: torch sees no CUDA GPU"),
        (
            ["run", "--gpus", "3"],
            "gpus 3: torch sees no CUDA GPU on this machine; leave out --gpus (and --per-gpu) to train on the CPU",
        ),
        (["run", "--gpus", "0,1", "--nproc-per-node", "2"], "gpus 0,1: torch sees no CUDA GPU"),
        (["translate", "--run", "{tmp}/none", "--device", "cuda"], "device cuda: torch sees no CUDA GPU"),
    ],
)
def test_gpu_options_without_a_gpu_are_one_line(tmp_path, cli, argv, needle):
    """--device cuda and --gpus on a machine without a GPU: one line, exit 2, nothing written (they used to
    train on the CPU saying '1 GPU (3)', or end in a traceback)."""
    runs = tmp_path / "runs"
    rc, _out, err = cli(
        *[a.format(tmp=tmp_path) for a in argv], *(["--out", str(runs), *FAST_DIGITS] if argv[0] == "run" else [])
    )
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not runs.exists()


@pytest.mark.slow
def test_ascii_locale_reads_recipes_and_writes_tables(tmp_path):
    """Under LANG=C without Python's UTF-8 mode the locale encoding is ASCII: the shipped recipes (UTF-8, 'mean ±
    std') are read as UTF-8 and tables with 'α' are written as UTF-8 and printed escaped, not a traceback."""
    from ..fixtures import fake_results

    fake_results(tmp_path / "runs")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = {}
    for argv in (["config"], ["tasks"], ["leaderboard", "--runs", str(tmp_path / "runs")]):
        proc = subprocess.run(
            [sys.executable, "-m", "lskd_bench", *argv], env=env, capture_output=True, timeout=HANG_GUARD_S
        )
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        out[argv[0]] = proc.stdout
    assert "α = 0.0" in (tmp_path / "runs" / "leaderboard.md").read_text(encoding="utf-8")
    assert b"\\u03b1 = 0.0" in out["leaderboard"]


def test_method_given_twice_is_one_line(tmp_path, cli):
    rc, _, err = cli("run", "--dry-run", "--methods", "kd,dkd,kd", "--out", str(tmp_path / "runs"))
    assert rc == 2 and err == "lskd-bench: error: methods lists kd twice: kd, dkd, kd\n"


def test_byte_order_marks_are_not_text(tmp_path, cli, cub_root):
    """A UTF-8 BOM (Windows editors) used to become part of the first reference BLEU scores, of the first line
    translate/score read, and a 'field-count' error in a CUB index file."""
    import shutil

    from lskd_bench.runners.inference import read_text_lines
    from lskd_bench.tasks.nmt.corpus import read_corpus

    from ..fixtures import make_plain

    root = make_plain(tmp_path / "corpus", n_train=10, n_valid=3, n_test=4)
    clean = read_corpus(root, "en", "de")
    for name in ("test.de", "train.en"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    bom = read_corpus(root, "en", "de")
    assert bom.test == clean.test and bom.train == clean.train
    (tmp_path / "in.txt").write_bytes(b"\xef\xbb\xbfHallo\nWelt\n")
    assert read_text_lines(str(tmp_path / "in.txt")) == ["Hallo", "Welt"]
    cub = tmp_path / "cub"
    shutil.copytree(cub_root, cub)
    index = next(cub.rglob("images.txt"))
    index.write_bytes(b"\xef\xbb\xbf" + index.read_bytes())
    rc, _out, err = cli("check-data", "--task", "cub200", "--data-root", str(cub), "--no-progress")
    assert rc == 0, err


def test_score_on_empty_files_is_one_line(tmp_path, cli):
    for name in ("ref.de", "hyp.de"):
        (tmp_path / name).write_text("")
    rc, _, err = cli("score", "--ref", str(tmp_path / "ref.de"), "--hyp", str(tmp_path / "hyp.de"))
    assert rc == 2 and err == f"lskd-bench: error: {tmp_path / 'ref.de'} is empty: nothing to score\n"


def test_fifos_named_like_data_never_block(tmp_path, cli, imagenet_root, cub_root):
    """A FIFO named like an image in a class folder is skipped unopened by check-data and run alike; one named like
    CUB's images.txt or a corpus file is refused unopened (opening a FIFO waits forever for a writer)."""
    import shutil

    from ..fixtures import make_plain

    inet = tmp_path / "inet"
    shutil.copytree(imagenet_root, inet)
    cls = sorted((inet / "train").iterdir())[0]
    os.mkfifo(cls / "fifo.JPEG")
    rc, out, err = cli("check-data", "--task", "imagenet", "--data-root", str(inet), "--no-progress")
    assert rc == 0, err
    assert "imagenet: data OK (train 12, val 6)" in out  # the FIFO is not listed
    cub = tmp_path / "cub"
    shutil.copytree(cub_root, cub)
    index = next(cub.rglob("images.txt"))
    index.unlink()
    os.mkfifo(index)
    for argv in (["check-data", "--no-progress"], ["run", "--dry-run", "--out", str(tmp_path / "runs")]):
        rc, _, err = cli(*argv, "--task", "cub200", "--data-root", str(cub))
        assert rc == 2 and err == f"lskd-bench: error: {index} is a FIFO, not a data file: refused unopened\n", err
    corpus = make_plain(tmp_path / "corpus", n_train=10, n_valid=3, n_test=4)
    (corpus / "test.de").unlink()
    os.mkfifo(corpus / "test.de")
    from lskd_bench.errors import UsageError
    from lskd_bench.tasks.nmt.corpus import read_corpus

    with pytest.raises(UsageError, match=r"corpus/test.de is (a FIFO|missing)"):
        read_corpus(corpus, "en", "de")


def test_cell_or_task_folder_replaced_by_a_file_is_one_line(tmp_path, cli):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    from ..fixtures import tiny_overrides

    args = ["--alphas", "0.1", "--temperatures", "1", "--seeds", "0", "--epochs", "1", "--no-progress"]
    cell = next(
        c
        for c in plan_cells(resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.1], "temperatures": [1.0]})))
        if c.role == "student"
    )
    runs = tmp_path / "runs"
    (runs / "digits").mkdir(parents=True)
    cell.dir(runs).write_text("x")
    rc, _, err = cli("run", "--out", str(runs), *args)
    assert rc == 2 and err == (
        f"lskd-bench: error: {cell.dir(runs)} is a file where lskd-bench keeps a folder: move it away and run again\n"
    ), err
    cell.dir(runs).unlink()
    (runs / "digits").rmdir()
    (runs / "digits").write_text("x")
    rc, _, err = cli("run", "--out", str(runs), *args)
    assert rc == 2 and f"{runs / 'digits'} is a file where lskd-bench keeps a folder" in err
    for argv in (["status"], ["leaderboard"], ["plot"], ["compare"]):
        rc, _, err = cli(*argv, "--runs", str(runs))
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


@pytest.mark.slow
def test_the_same_data_at_another_path_reuses_the_finished_cells(tmp_path, cli):
    """data.root is part of a cell's hash (pinned: tests/test_hashes.py); the same data at another path used to
    retrain the grid. Cells now record their data's fingerprint (data.json) and a run on the same content at
    another path links to them; other content trains anew."""
    import shutil

    from ..fixtures import make_cifar100

    make_cifar100(tmp_path / "a", per_class=(1, 1))
    args = [
        "--task",
        "cifar100",
        "--alphas",
        "0.1",
        "--temperatures",
        "1",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--no-baseline",
        "--no-progress",
        "--out",
        str(tmp_path / "runs"),
    ]
    rc, out, err = cli("run", "--data-root", str(tmp_path / "a"), *args)
    assert rc == 0 and "2 cells: trained 2" in out, err
    first = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").rglob(store.RESULT)}
    assert all((tmp_path / "runs" / "cifar100" / name / "data.json").is_file() for name in first)
    for name in first:  # as results made before data.json: found while their data is still at their path
        (tmp_path / "runs" / "cifar100" / name / "data.json").unlink()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same data, elsewhere
    rc, out, err = cli("run", "--data-root", str(tmp_path / "b"), *args)
    assert rc == 0 and "2 cells: trained 0, reused 2 finished" in out, out + err
    found = [line for line in out.splitlines() if line.startswith("found: ")]
    assert len(found) == 2 and all(f"finished at {tmp_path / 'a'}: " in line for line in found), out
    rc, out, _ = cli("leaderboard", "--runs", str(tmp_path / "runs"))
    assert rc == 0 and "(2 cells)" in _
    # other content at another path trains anew
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    edit_cifar_train(
        tmp_path / "c" / "cifar-100-python",
        lambda raw: raw.update({b"fine_labels": list(reversed(raw[b"fine_labels"]))}),
    )
    rc, out, err = cli("run", "--data-root", str(tmp_path / "c"), *args)
    assert rc == 0 and "2 cells: trained 2" in out and "found: " not in out, out + err


# ------------------------------------------------------------------------------------------ case 4: one listing
@pytest.mark.slow
def test_check_data_and_training_read_the_same_files(tmp_path, cli):
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    root = make_imagefolder(tmp_path / "inet")
    cls = root / "train" / WNIDS[0]
    (cls / "loop").symlink_to(cls, target_is_directory=True)  # a symlink loop in a class folder
    task = get_task("imagenet")
    cfg = resolve_config("imagenet", {}, {"data": {"root": str(root), "image_size": 32}})
    listed = [p for split, p in task.files(cfg) if split == "train"]
    assert len(listed) == 12 and [Path(p) for p, _ in task.load_data(cfg).train.samples] == listed
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 0 and "imagenet: data OK (train 12, val 6)" in out

    dangling = cls / "gone.JPEG"
    dangling.symlink_to(tmp_path / "nowhere.JPEG")
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 2 and f"problem: {dangling}: cannot read: No such file or directory" in out
    rc, _, err = cli(
        "run", "--task", "imagenet", "--data-root", str(root), "--out", str(tmp_path / "runs"), *IMAGE_ARGS
    )
    assert rc == 2 and err.count("\n") == 1 and f"lskd-bench: error: cannot read {dangling}" in err


# ------------------------------------------------------------------------------------------ case 5: one line, exit 2
def test_bad_inputs_are_one_line_exit_2(tmp_path, cli):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"student:\n  epochs: 2 # r\xe9sum\xe9\n")
    for flag in ("--config", "--runner-profile"):
        rc, _, err = cli("run", "--out", str(tmp_path / "runs"), flag, str(bad), *TINY_ARGS)
        assert rc == 2 and err == f"lskd-bench: error: config {bad} is not UTF-8 text (byte 24, line 2)\n"
    pickled = tmp_path / "object.pt"
    torch.save({"where": Path("x")}, pickled)  # a pickle, but not of tensors (PyTorch: "use weights_only=False")
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    for junk, error in ((pickled, "UnpicklingError"), (text, "IndexError")):
        for flag in ("--init-checkpoint", "--teacher-checkpoint"):
            rc, _, err = cli("run", "--out", str(tmp_path / "runs"), flag, str(junk), *TINY_ARGS)
            assert rc == 2 and err.count("\n") == 1, err
            assert err.startswith(f"lskd-bench: error: {junk} is not a PyTorch checkpoint of weights ({error}: ")
            assert "weights_only" not in err  # not PyTorch's advice to load it unsafely
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_truncated_features_npz_is_one_line(tmp_path, cli):
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS, "--alphas", "0,0.1")
    assert rc == 0, err
    rc, _, err = cli("visualize", "--runs", str(tmp_path), "--classes", "0,1,2", "--out", str(tmp_path / "p.png"))
    assert rc == 0, err  # computed the features and kept them
    feats = cell_dirs(tmp_path)["student_kd_cnn_tiny_a0.1_T1_s0"] / store.FEATURES
    feats.write_bytes(feats.read_bytes()[:1000])
    rc, _, err = cli("visualize", "--runs", str(tmp_path), "--classes", "0,1,2", "--out", str(tmp_path / "p.png"))
    assert rc == 2 and err.count("\n") == 1 and f"lskd-bench: error: {feats} is unreadable (BadZipFile: " in err


def test_dry_run_checks_the_data_layout(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    for p in (root / "val" / WNIDS[1]).iterdir():
        p.unlink()
    rc, out, err = cli(
        "run", "--task", "imagenet", "--data-root", str(root), "--out", str(tmp_path / "runs"), "--dry-run"
    )
    assert rc == 2 and out == "" and f"class folder {root}/val/{WNIDS[1]} has no image files" in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ case 10: SIGTERM
@pytest.mark.slow
def test_sigterm_releases_locks_records_interrupted_and_exits_143(tmp_path, cli):
    args = [
        sys.executable,
        "-m",
        "lskd_bench",
        "run",
        "--out",
        str(tmp_path),
        *TINY_ARGS,
        "--no-baseline",
        "--set",
        "teacher.epochs=50",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_GUARD_S
    while not list(tmp_path.rglob(store.STATE)):  # wait until the teacher checkpointed its first epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM): finished cells are saved" in err and "Traceback" not in err
    (teacher,) = [d for d in (tmp_path / "digits").iterdir() if d.name.startswith("teacher")]
    assert not (teacher / LOCK).exists() and (teacher / store.STATE).is_file()
    rec = json.loads((teacher / store.ERROR).read_text())
    assert rec["error"] == "Interrupted" and re.fullmatch(
        r"stopped by SIGTERM at epoch \d+, step \d+: run again to "
        r"resume from the last checkpoint",
        rec["message"],
    )
    _, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(rf"{teacher.name} +interrupted +- +stopped by SIGTERM", out)


# ------------------------------------------------------------------------------------------ JSON logs, trackers gone
@pytest.mark.slow
def test_json_logs_parse_line_by_line_with_a_tracker_gone_and_a_rerun_still_has_events(tmp_path, cli, monkeypatch):
    """--log-format json with an MLflow server that does not answer: every line on stdout and stderr is a JSON
    object (the logger's one warning too), from a start to a summary event; the results are written; a rerun
    where every cell is reused still says start and summary."""
    require("mlflow", "the mlflow logger (pip install 'lskd-bench[mlflow]')")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    argv = ["run", "--out", str(tmp_path), *TINY_ARGS, "--log-format", "json", "--loggers", "mlflow"]
    for reused in (0, 3):
        rc, out, err = cli(*argv)
        assert rc == 0, err
        events = [json.loads(line) for line in (out + err).splitlines()]  # raises on a line that is not JSON
        assert all(isinstance(e, dict) for e in events) and out == ""
        assert events[0]["event"] == "start" and events[-1]["event"] == "summary", events
        assert events[-1]["ok"] and (events[-1]["trained"], events[-1]["reused"]) == (3 - reused, reused)
        warnings = [e["text"] for e in events if e["event"] == "warning"]
        assert len(warnings) == (1 if not reused else 0) and all("logger mlflow failed" in w for w in warnings)
    assert len(list(tmp_path.rglob(store.RESULT))) == 3
