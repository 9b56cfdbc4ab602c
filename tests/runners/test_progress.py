"""Progress output for batch systems (``logging.format``): plain lines when the output is not a terminal,
one JSON object a line with ``--log-format json``, bars on a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from lskd_bench.runners import progress

from ..fixtures import ROOT

# a teacher, a KD student, the no-KD student: 3 cells in 2 units (the teacher; the students fused), 2 epochs
ARGS = ["--alphas", "0.1", "--temperatures", "4", "--seeds", "0", "--epochs", "2"]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


@pytest.mark.slow
def test_redirected_output_is_plain_lines_a_few_per_cell(tmp_path):
    """As under Slurm or nohup: stdout and stderr to a file. No carriage return; one line per settled cell and,
    with epochs shorter than logging.interval_s (60 s), one line per unit at its last epoch."""
    log = tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "lskd_bench", "run", "--out", str(tmp_path / "runs"), *ARGS],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            timeout=900,
        )
    text = log.read_bytes()
    assert proc.returncode == 0, text[-2000:]
    assert b"\r" not in text and b"\x1b[" not in text
    lines = text.decode().splitlines()
    cells = [ln for ln in lines if re.fullmatch(STAMP + r"digits grid: \d/3 cells, \S+", ln)]
    assert len(cells) == 3 and cells[-1].split(": ")[1].startswith("3/3 cells")
    epochs = [ln for ln in lines if re.fullmatch(STAMP + r".+: epoch 2/2 done, loss .+", ln)]
    assert len(epochs) == 2  # the teacher's unit, the students' unit
    assert "teacher_cnn_wide_a0.1_s0: epoch 2/2 done, loss " in epochs[0]
    assert "2 fused: kd:a0.1T4, base: epoch 2/2 done, loss kd:a0.1T4=" in epochs[1]
    progress_lines = [ln for ln in lines if re.match(STAMP, ln)]
    assert len(progress_lines) == 5 <= 3 * 3  # a few lines per cell at most
    assert any(ln.startswith("3 cells: trained 3") for ln in lines)  # the summary is unchanged


@pytest.mark.slow
def test_json_format_one_object_a_line(tmp_path, cli):
    """--log-format json: every progress line is a JSON object: a 'step' event within the epoch (here every step:
    interval_s is tiny), an 'epoch' event at each epoch end that is due (the last one always), a 'cell' event per
    settled cell."""
    rc, out, err = cli("run", "--out", str(tmp_path), *ARGS, "--log-format", "json", "--set", "logging.interval_s=1e-9")
    assert rc == 0, err
    events = [json.loads(line) for line in err.splitlines()]  # raises on any line that is not JSON
    kinds = [e["event"] for e in events]
    assert kinds.count("cell") == 3 and {e["cell"] for e in events if e["event"] == "cell"} >= {"baseline_cnn_tiny_s0"}
    assert [e["n"] for e in events if e["event"] == "cell"] == [1, 2, 3]
    ends = [e for e in events if e["event"] == "epoch"]
    assert [(e["epoch"], e["epochs"]) for e in ends] == [(1, 2), (2, 2)] * 2
    students = ends[3]["members"]
    assert set(students) == {"kd:a0.1T4", "base"} and {"loss", "loss_kd", "lr", "eval"} <= set(students["kd:a0.1T4"])
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all({"epoch", "epochs", "step", "steps", "steps_per_s", "loss"} <= set(e) for e in steps)
    assert all(0 < e["step"] <= e["steps"] for e in steps) and set(steps[0]["loss"]) == {"a0.1"}
    assert "\r" not in err and out == ""  # stdout too is JSON only: here nothing, the leaderboard is in its file
    assert kinds[0] == "start" and kinds[-1] == "summary" and "cells: trained 3" in events[-1]["text"]


def test_plain_and_json_epoch_lines_carry_the_units_eta(monkeypatch, capsys):
    """An epoch's line ends with the ETA of the unit's last epoch at the pace so far: epochs of 25 s, 4 to train,
    after the first 75 s are left; a resumed unit (2 of 4 done before) counts only the epochs it trained."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    fresh = progress.Lines("plain", "unit", total=4, unit="ep", interval=0.0)
    resumed = progress.Lines("json", "unit", total=4, unit="ep", initial=2, interval=0.0)
    now[0] += 25.0
    for bar in (fresh, resumed):
        bar.update(1)
        bar.note("x", line="epoch done", event="epoch")
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(STAMP + r"unit: epoch done, ETA (\d\d:\d\d:\d\d) \(75 s left\)", err[0])

    def seconds(hms: str) -> int:
        h, m, sec = map(int, hms.split(":"))
        return h * 3600 + m * 60 + sec

    assert (seconds(err[0].split("ETA ")[1][:8]) - seconds(err[0][11:19])) % 86400 == 75  # the line's time + 75 s
    assert json.loads(err[1])["eta_s"] == 25.0  # 1 epoch of 25 s left
    fresh.update(3)
    fresh.note("x", line="epoch 4/4 done", event="epoch")  # the last: no ETA
    assert capsys.readouterr().err.rstrip().endswith("unit: epoch 4/4 done")


def test_auto_is_bars_on_a_terminal_only(monkeypatch):
    cfg = {"logging": {"format": "auto", "interval_s": 60.0}}

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress.output_format(cfg) == "bar" and progress.line_interval(cfg) is None
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # stdout to a file (| tee, a Slurm log)
    assert progress.output_format(cfg) == "plain" and progress.line_interval(cfg) == 60.0
    assert progress.output_format({"logging": {"format": "bar", "interval_s": 60.0}}) == "bar"


def test_plain_epoch_lines_are_throttled_but_the_last_is_always_written(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = progress.Lines("plain", "unit", total=4, unit="ep", interval=60.0)
    for e in range(1, 5):
        now[0] += 25.0  # epochs of 25 s: a line when 60 s passed since the previous one, and at the last epoch
        lines.update(1)
        lines.note("x", line=f"epoch {e}/4 done", throttle=e < 4)
    written = [ln.split("unit: ")[1] for ln in capsys.readouterr().err.splitlines()]
    assert written == ["epoch 3/4 done", "epoch 4/4 done"]


def test_json_stream_makes_every_line_a_json_object(capsys):
    """While a json run is on, a plain line anyone writes (a warning, a summary, a tracker library's INFO line
    through logging, a line cut in pieces) becomes a JSON object; JSON objects pass as they are; blank lines go."""
    import logging

    log = logging.getLogger("some.tracker")
    with progress.json_stream():
        handler = logging.StreamHandler()  # made while the stream is on, as a library imported by a logger would
        log.addHandler(handler)
        try:
            log.warning("INFO tracker: connecting to http://127.0.0.1:9")
        finally:
            log.removeHandler(handler)
        print("lskd-bench: warning: logger mlflow failed", file=sys.stderr)
        print("failed: cell_a: RuntimeError: boom (see x)", file=sys.stderr)
        sys.stdout.write("3 cells: trained 0, ")
        sys.stdout.write("reused 3 finished\n\n")
        progress.event("summary", ok=True)
        sys.stderr.write("no newline at the end")
    cap = capsys.readouterr()
    err = [json.loads(line) for line in cap.err.splitlines()]  # raises on any line that is not JSON
    out = [json.loads(line) for line in cap.out.splitlines()]
    assert [(e["event"], e.get("text")) for e in err] == [
        ("message", "INFO tracker: connecting to http://127.0.0.1:9"),
        ("warning", "logger mlflow failed"),
        ("message", "failed: cell_a: RuntimeError: boom (see x)"),
        ("summary", None),
        ("message", "no newline at the end"),
    ]
    assert [(e["event"], e["stream"], e["text"]) for e in out] == [
        ("message", "stdout", "3 cells: trained 0, reused 3 finished")
    ]
    assert not isinstance(sys.stdout, progress.JsonLines) and not isinstance(sys.stderr, progress.JsonLines)


def test_json_run_that_stops_on_bad_input_is_still_start_error_summary(tmp_path, cli):
    """Bad input (a config value out of range, a file where a folder belongs) under --log-format json: a start,
    an error and a summary event, nothing else, exit 2."""
    (tmp_path / "digits").write_text("a file")
    for extra in (["--alphas", "5"], []):
        rc, out, err = cli("run", "--out", str(tmp_path), *ARGS, "--log-format", "json", *extra)
        events = [json.loads(line) for line in (out + err).splitlines()]
        assert rc == 2 and [e["event"] for e in events] == ["start", "error", "summary"], err
        assert events[-1]["ok"] is False and events[-1]["error"] == events[1]["text"]
