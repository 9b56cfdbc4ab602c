"""Security (SECURITY.md): a run directory, a data file and a result file are untrusted input. Nothing read from
them runs code, and no name read from them becomes a path outside the folder a command writes to."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lskd_bench import results, store

from ..fixtures import ROOT, fake_results, make_cifar100


class _Planted:
    """Pickles to a call of ``os.system`` (what an attacker plants): unpickling it runs the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": _Planted(marker)}, path)


def test_planted_pickle_runs_when_loaded_unrestricted(tmp_path):
    """The attack works (so the tests below can fail): an unrestricted load runs the planted command."""
    marker = tmp_path / "MARKER"
    _plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("planted", [store.STATE, store.STATE_PREV])
def test_planted_checkpoint_runs_no_code_when_its_cell_resumes(tmp_path, tiny_cfg, planted):
    """A planted state.pt (or state.prev.pt beside a truncated state.pt) is refused unloaded: moved aside as corrupt,
    the cell trains from scratch to the result of a clean run, and the planted command never runs."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.train import train_group
    from lskd_bench.tasks import get_task

    task = get_task("digits")
    data = task.load_data(tiny_cfg)
    teacher = next(c for c in plan_cells(tiny_cfg) if c.role == "teacher")
    (ref,) = train_group(task, [teacher], tiny_cfg, data, [tmp_path / "clean"], progress=False)
    d, marker = tmp_path / "cell", tmp_path / "MARKER"
    d.mkdir()
    _plant(d / planted, marker)
    if planted == store.STATE_PREV:
        (d / store.STATE).write_bytes(b"PK\x03\x04 truncated")
    (out,) = train_group(task, [teacher], tiny_cfg, data, [d], progress=False)
    assert not marker.exists()
    assert out.error is None and out.result["metrics"] == ref.result["metrics"]
    assert len(list(d.glob(f"{planted}.corrupt-*"))) == 1
    assert "the cell restarts from scratch" in out.notes[0]


@pytest.mark.slow
def test_no_unrestricted_unpickling_in_the_package():
    """Every torch.load is weights-only; the only pickle reader is the restricted CIFAR unpickler."""
    hits = subprocess.run(
        ["grep", "-rn", "--include=*.py", r"weights_only=False\|pickle.load(\|pickle.loads(\|Unpickler(", "lskd_bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert {h.split(":")[0] for h in hits} == {"lskd_bench/tasks/cifar.py"}, hits
    assert all("_ReleaseUnpickler" in h or "RestrictedUnpickler" in h for h in hits), hits


# ------------------------------------------------------------------------------------------ CIFAR pickles
@pytest.mark.slow
def test_planted_cifar_pickle_runs_no_code_in_check_data_or_dry_run(tmp_path, cli):
    d = make_cifar100(tmp_path / "data", per_class=(1, 1))
    marker = tmp_path / "MARKER"
    with open(d / "train", "wb") as f:
        pickle.dump({b"data": _Planted(marker), b"fine_labels": [0]}, f, protocol=2)
    for argv in (["check-data", "--no-progress"], ["run", "--dry-run", "--out", str(tmp_path / "runs")]):
        rc, _, err = cli(*argv, "--task", "cifar100", "--data-root", str(tmp_path / "data"))
        assert rc == 2 and err.count("\n") == 1, err
        assert f"cifar100: {d / 'train'} is not a CIFAR python pickle" in err and "posix.system" in err, err
        assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("n", [2, 0])
def test_restricted_unpickler_reads_the_release_format(tmp_path, protocol, n):
    """dicts of bytes keys, lists of ints and bytes, uint8 arrays: as the release (protocol 2, Python 2 cPickle) and
    as re-saved by Python 3 (protocols 4 and 5)."""
    from lskd_bench.tasks.cifar import _unpickle

    img = (np.arange(n * 3072) % 256).astype(np.uint8).reshape(n, 3072)  # n = 0: b"" pickles as a call of bytes()
    blob = {b"data": img, b"fine_labels": [3, 7][:n], b"filenames": [b"a.png", b"b.png"][:n], b"batch_label": b""}
    (tmp_path / "train").write_bytes(pickle.dumps(blob, protocol=protocol))
    raw = _unpickle(tmp_path / "train")
    assert raw["fine_labels"] == [3, 7][:n] and raw["filenames"] == [b"a.png", b"b.png"][:n]
    assert raw["data"].dtype == np.uint8 and (raw["data"] == img).all()


def test_restricted_unpickler_reads_a_python2_release_pickle(tmp_path):
    """The bytes of a Python 2 cPickle (protocol 2) of the release's layout: str keys, a uint8 numpy array."""
    from lskd_bench.tasks.cifar import _unpickle

    # what Python 2.7 + numpy 1.x write for {'fine_labels': [1], 'data': numpy.zeros((1, 2), numpy.uint8)}
    py2 = (
        b"\x80\x02}q\x01(U\x0bfine_labelsq\x02]q\x03K\x01aU\x04dataq\x04cnumpy.core.multiarray\n_reconstruct\n"
        b"q\x05cnumpy\nndarray\nq\x06K\x00\x85U\x01b\x87Rq\x07(K\x01K\x01K\x02\x86cnumpy\ndtype\nq\x08U\x02u1K\x00"
        b"K\x01\x87Rq\t(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x02\x05\x06tbu."
    )
    (tmp_path / "train").write_bytes(py2)
    raw = _unpickle(tmp_path / "train")
    assert raw["fine_labels"] == [1] and raw["data"].dtype == np.uint8 and raw["data"].tolist() == [[5, 6]]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("field", ["task", "arch", "teacher_arch", "method", "name"])
def test_names_from_result_json_never_become_paths_outside_the_output(tmp_path, cli, field):
    runs = tmp_path / "a" / "b" / "runs"
    fake_results(runs, bad_field=field)
    before = _files(tmp_path)
    for argv in (["plot", "--runs", str(runs)], ["compare", "--runs", str(runs)], ["leaderboard", "--runs", str(runs)]):
        rc, _, err = cli(*argv)
        assert rc == 0, (argv, err)
        assert re.search(
            rf"warning: skipped: {re.escape(str(runs))}/digits/student_dkd_\d-\w+/result.json .*{field}", err
        ), err
    written = _files(tmp_path) - before
    assert written and all(p.is_relative_to(runs) for p in written), sorted(written)
    assert not any("ESCAPE" in str(p) for p in written)


# ------------------------------------------------------------------------------------------ CSV injection
FORMULAS = {
    "task": '=HYPERLINK("http:x","y")',
    "method": "-2+3+cmd|' C calc'!A0",
    "env_cpu": "=cmd|' /C calc'!A0",
    "env_torch": "+SUM(1,2)",
    "env_device": "@SUM(1+1)*cmd|' /C calc'!A0",
    "env_python": "\t=1+1",  # (threads and processes must be integers: the result.json gate)
    "env_commit": "\r=1+1",
    "env_lskd_bench": " =1+1",  # a leading blank: some spreadsheets trim it
}


def _formula_runs(runs: Path) -> Path:
    fake_results(runs, task=FORMULAS["task"], bad_field="method", bad_value=FORMULAS["method"])
    for path in runs.rglob("result.json"):
        res = json.loads(path.read_text())
        res["env"] = {k.removeprefix("env_"): v for k, v in FORMULAS.items() if k.startswith("env_")}
        path.write_text(json.dumps(res))
    return runs


def _csv_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _runs_formula(cell: str) -> bool:
    """Would a spreadsheet take this cell for a formula? (It starts, after blanks, with = + - @, a tab or CR, and
    is not a plain number.)"""
    return bool(cell) and cell.lstrip(" ").startswith(store.FORMULA_START) and not re.fullmatch(NUMBER, cell)


NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"


def test_csv_files_from_data_never_start_a_formula(tmp_path, cli):
    runs = _formula_runs(tmp_path / "runs")
    for argv in (
        ["export", "--runs", str(runs), "--format", "csv", "--out", str(tmp_path / "e.csv")],
        ["leaderboard", "--runs", str(runs), "--out", str(tmp_path / "lb")],
        ["compare", "--runs", str(runs), "--out", str(tmp_path / "cmp")],
    ):
        rc, _, err = cli(*argv)
        assert rc == 0, (argv, err)
    written = sorted(tmp_path.glob("*.csv"))
    assert {p.name for p in written} >= {"e.csv", "lb.csv", "lb_claims.csv", "cmp.csv"}
    for path in written:
        cells = [c for row in _csv_cells(path) for c in row]
        assert not [c for c in cells if _runs_formula(c)], path.name
    exported = _csv_cells(tmp_path / "e.csv")
    head, rows = exported[0], [dict(zip(exported[0], r)) for r in exported[1:]]
    for key, value in FORMULAS.items():  # each neutralised as OWASP says: a leading ', the text otherwise intact
        assert {r[key] for r in rows if key != "method" or r["method"] not in ("kd", "ce")} == {"'" + value}, key
    lb = _csv_cells(tmp_path / "lb.csv")
    assert "'" + FORMULAS["task"] in lb[1] and "'" + FORMULAS["method"] in {c for r in lb for c in r}
    # numbers stay numbers
    frame = results.load(runs)
    assert [float(r["top1"]) for r in rows] == frame["top1"].tolist() and "top1" in head


def test_csv_cell_neutralises_strings_and_keeps_numbers():
    import pandas as pd

    assert [store.csv_cell(v) for v in ("=1", "+1+1", "-1+1", "@A1", "\tx", "\rx", "\nx", " =1", "\uff1d1")] == [
        "'=1",
        "'+1+1",
        "'-1+1",
        "'@A1",
        "'\tx",
        "'\rx",
        "'\nx",
        "' =1",
        "'\uff1d1",
    ]
    assert [store.csv_cell(v) for v in (-1.5, -2, "-1.500", "+3", "-1e-05", "-inf", "plain", "", None)] == [
        -1.5,
        -2,
        "-1.500",
        "+3",
        "-1e-05",
        "-inf",
        "plain",
        "",
        None,
    ]
    df = pd.DataFrame({"name": ["=1+1", "ok"], "=col": [-1.5, -2.0], "n": pd.array([-3, None], dtype="Int64")})
    text = results.csv_safe(df).to_csv(index=False, lineterminator="\n")
    assert text == "name,'=col,n\n'=1+1,-1.5,-3\nok,-2.0,\n"
    assert df["name"].tolist() == ["=1+1", "ok"]  # the caller's frame is left as it was


def test_csv_cell_with_a_carriage_return_stays_one_quoted_cell():
    """A bare CR ends a row for a spreadsheet: a cell holding one is quoted, so what follows cannot start a row
    (and a formula); rows still end in '\\n'."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=store.CSV_LINETERMINATOR)
    w.writerow(store.csv_row(["a\r=1+1", -1.5, 'q"\r\n']))
    w.writerow(["b", 2])
    text = store.csv_newlines(buf.getvalue())
    assert text == '"a\r=1+1",-1.5,"q""\r\n"\nb,2\n'
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["a\r=1+1", "-1.5", 'q"\r\n'], ["b", "2"]]


# ------------------------------------------------------------------------------------------ output files (--out)
def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def runs(tmp_path):
    fake_results(tmp_path / "runs")
    return tmp_path / "runs"


def test_out_dash_writes_to_stdout(runs, cli):
    rc, out, err = cli("export", "--runs", str(runs), "--out", "-")
    assert rc == 0 and out.startswith("task,role,cell,") and out.count("\n") == 7, err
    assert err == "wrote stdout (6 cells, 26 columns)\n"
    rc, out, err = cli("report", "--runs", str(runs), "--out", "-")
    assert rc == 0 and out.startswith("<!DOCTYPE html>") and out.endswith("</html>\n"), err
    assert "wrote the report to stdout" in err
    rc, out, err = cli("leaderboard", "--runs", str(runs), "--out", "-")  # several files: stdout cannot be one
    assert rc == 2 and err.startswith("lskd-bench: error: --out -: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["export"], ["export", "--format", "parquet"], ["report"], ["leaderboard"]])
def test_out_a_link_to_dev_null_is_written_through_never_replaced(runs, cli, tmp_path, argv):
    link = tmp_path / ("null.csv" if argv == ["leaderboard"] else "null")  # leaderboard writes OUT.csv, .md...
    link.symlink_to(os.devnull)
    rc, _, err = cli(*argv, "--runs", str(runs), "--out", str(tmp_path / "null"))
    assert rc == 0, err
    assert link.is_symlink() and os.readlink(link) == os.devnull  # the link is still a link...
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # ...to the device, which is still a device
    assert _no_temp_files(tmp_path)


def test_out_a_fifo_is_written_through(runs, cli, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    rc, _, err = cli("export", "--runs", str(runs), "--out", str(fifo))
    reader.join(timeout=60)  # a hang guard
    assert rc == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _no_temp_files(tmp_path)
    assert cli("export", "--runs", str(runs), "--out", str(tmp_path / "e.csv"))[0] == 0
    assert got == [(tmp_path / "e.csv").read_bytes()]


@pytest.mark.parametrize("command", ["export", "report"])
def test_out_dev_full_is_one_line_and_a_failure(runs, cli, tmp_path, command):
    link = tmp_path / "full"  # a link, not /dev/full itself: were the fix undone, only the link would be replaced
    link.symlink_to("/dev/full")
    rc, _, err = cli(command, "--runs", str(runs), "--out", str(link))
    assert rc == 1 and err == f"lskd-bench: error: no space left on device while writing {link}\n", err
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/full").st_mode) and _no_temp_files(tmp_path)


@pytest.mark.parametrize("command", ["export", "report", "leaderboard", "compare"])
def test_out_a_directory_is_refused_naming_the_option(runs, cli, tmp_path, command):
    """Issue 34 item 9a: the error named a temp file (.adir.xxxx.tmp: Is a directory), not the option."""
    adir = tmp_path / "adir"
    adir.mkdir()
    target = adir if command in ("export", "report") else tmp_path / "adir.csv"
    if target != adir:
        target.mkdir()
    rc, _, err = cli(command, "--runs", str(runs), "--out", str(adir))
    assert rc == 2 and err == f"lskd-bench: error: --out {target}: is a directory\n", err
    assert ".tmp" not in err and _no_temp_files(tmp_path)


def test_out_a_socket_is_refused(runs, cli, tmp_path):
    import socket

    short = Path(tempfile.mkdtemp(dir="/tmp"))  # a socket's path must be short
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(short / "s"))
            rc, _, err = cli("report", "--runs", str(runs), "--out", str(short / "s"))
        assert rc == 2 and err == f"lskd-bench: error: --out {short / 's'}: is a socket\n", err
    finally:
        shutil.rmtree(short)


def test_out_dev_stdout_is_the_process_stdout_never_replaced(runs, tmp_path):
    """A link to /proc/self/fd/1, as /dev/stdout is (a copy, so that the real one is never at stake): a pipe, or a
    regular file the shell opened; either way written to, and neither the link nor the file is replaced."""
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [
        sys.executable,
        "-m",
        "lskd_bench",
        "export",
        "--runs",
        str(runs),
        "--format",
        "jsonl",
        "--out",
        str(stdout),
    ]
    piped = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    assert piped.returncode == 0 and piped.stdout.count(b"\n") == 6, piped.stderr
    with open(tmp_path / "redirected", "wb") as f:
        inode = os.fstat(f.fileno()).st_ino
        done = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "redirected").read_bytes() == piped.stdout and (tmp_path / "redirected").stat().st_ino == inode
    assert os.readlink(stdout) == "/proc/self/fd/1" and _no_temp_files(tmp_path)


def test_default_outputs_inside_runs_are_never_followed(runs, cli, tmp_path):
    """RUNS may be shared: a link planted where a default output goes is replaced, not written through, and a
    FIFO planted there is refused (it would hang the command)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (runs / "report.html").symlink_to(victim)
    (runs / "results.csv").symlink_to(os.devnull)
    assert cli("report", "--runs", str(runs))[0] == 0
    assert cli("export", "--runs", str(runs))[0] == 0
    assert victim.read_text() == "mine" and not (runs / "report.html").is_symlink()
    assert not (runs / "results.csv").is_symlink() and (runs / "results.csv").read_text().startswith("task,")
    os.mkfifo(runs / "leaderboard.md")
    rc, _, err = cli("leaderboard", "--runs", str(runs))
    assert rc == 2 and err == f"lskd-bench: error: {runs / 'leaderboard.md'}: is a FIFO\n", err


def test_figures_named_from_data_never_follow_a_planted_link(runs, cli, tmp_path):
    assert cli("plot", "--runs", str(runs))[0] == 0
    figures = sorted((runs / "digits" / "curves").glob("*.png"))
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    figures[0].unlink()
    figures[0].symlink_to(victim)
    assert cli("plot", "--runs", str(runs))[0] == 0
    assert victim.read_text() == "mine" and not figures[0].is_symlink() and figures[0].read_bytes()[:4] == b"\x89PNG"
