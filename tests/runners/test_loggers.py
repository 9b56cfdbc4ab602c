"""Experiment trackers (``logging.loggers``): MLflow and W&B runs read back through their own formats, one run
per cell, a resumed cell continuing its run, and a logger that fails or hangs never failing or holding up
training."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

from lskd_bench.runners import loggers, store
from lskd_bench.runners.loggers import LOGGERS, STATE, Logger

from ..fixtures import require, tiny_overrides

# one teacher (alpha 0.1), one KD student (T 4), the no-KD student: 3 cells, 2 epochs of ~23 updates
ARGS = [
    "--alphas",
    "0.1",
    "--temperatures",
    "4",
    "--seeds",
    "0",
    "--epochs",
    "2",
    "--no-progress",
    "--set",
    "logging.every_updates=5",
]


def _cells(out: Path) -> dict[str, dict]:
    """cell hash -> result.json of every finished cell."""
    results = [json.loads(p.read_text()) for p in (out / "digits").glob("*/" + store.RESULT)]
    return {r["cell"]["hash"]: r for r in results}


@pytest.mark.slow
def test_mlflow_one_run_per_cell_with_params_tags_and_metrics(tmp_path, cli, monkeypatch):
    require("mlflow", "the mlflow logger (pip install 'lskd-bench[mlflow]')")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    rc, _, err = cli(
        "run", "--out", str(tmp_path / "runs"), *ARGS, "--loggers", "mlflow", "--set", "logging.project=t1"
    )
    assert rc == 0, err
    cells = _cells(tmp_path / "runs")
    assert len(cells) == 3
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t1")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["cell_hash"] for r in runs) == sorted(cells)  # one run per cell
    for run in runs:
        result = cells[run.data.tags["cell_hash"]]
        cell = result["cell"]
        cell_dir = tmp_path / "runs" / "digits" / f"{cell['name']}-{cell['hash']}"
        assert json.loads((cell_dir / STATE).read_text())["mlflow"]["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED" and run.info.run_name == cell["name"]
        tags = run.data.tags
        assert (tags["task"], tags["role"], tags["method"]) == ("digits", cell["role"], cell["method"])
        assert tags["seed"] == "0"
        assert tags["alpha"] == str(cell["alpha"]) and tags["T"] == ("" if cell["T"] is None else str(cell["T"]))
        params = run.data.params
        section = "teacher" if cell["role"] == "teacher" else "student"
        assert params[f"{section}.epochs"] == "2" and params["logging.loggers"] == '["mlflow"]'
        assert params["grid.temperatures"] == "[4.0]" and params["task"] == "digits"

        def history(key, run=run):
            return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

        hist = result["history"]
        assert history("epoch/loss") == [(h["updates"], pytest.approx(h["loss"])) for h in hist]
        assert history("val/top1") == [(h["updates"], pytest.approx(h["eval"]["top1"])) for h in hist]
        assert [s for s, _ in history("train/loss_step")] == list(range(5, result["updates"] + 1, 5))
        assert run.data.metrics["selected/top1"] == pytest.approx(result["best"]["metrics"]["top1"])
        assert run.data.metrics["selected/epoch"] == result["best"]["epoch"]
        assert run.data.metrics["last/top1"] == pytest.approx(result["metrics"]["top1"])


@pytest.mark.slow
def test_mlflow_resumed_cell_continues_its_run(tmp_path, monkeypatch):
    require("mlflow", "the mlflow logger (pip install 'lskd-bench[mlflow]')")
    from mlflow.tracking import MlflowClient

    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = resolve_config("digits", {}, tiny_overrides(epochs=2, logging={"loggers": ["mlflow"], "project": "t2"}))
    task = get_task("digits")
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")

    def stop_in_epoch_two(epoch, i):
        if epoch == 1 and i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cell(task, teacher, cfg, data, tmp_path / "cell", progress=False, on_step=stop_in_epoch_two)
    client = MlflowClient(uri)
    first = json.loads((tmp_path / "cell" / STATE).read_text())["mlflow"]["run_id"]
    assert client.get_run(first).info.status == "KILLED"
    result = train_cell(task, teacher, cfg, data, tmp_path / "cell", progress=False)
    assert json.loads((tmp_path / "cell" / STATE).read_text())["mlflow"]["run_id"] == first
    (run,) = client.search_runs([client.get_experiment_by_name("t2").experiment_id])
    assert run.info.run_id == first and run.info.status == "FINISHED"
    losses = [(m.step, m.value) for m in client.get_metric_history(first, "epoch/loss")]
    assert losses == [(h["updates"], pytest.approx(h["loss"])) for h in result["history"]]  # both epochs, one run


# ------------------------------------------------------------------------------------------ W&B
def _wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB-log framed records in
    32 KiB blocks (checksum, length, type), each a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_files_hold_the_metrics(tmp_path, cli, monkeypatch):
    require("wandb", "the wandb logger (pip install 'lskd-bench[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    rc, _, err = cli("run", "--out", str(tmp_path / "runs"), *ARGS, "--loggers", "wandb")
    assert rc == 0, err
    cells = _cells(tmp_path / "runs")
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 3  # one run per cell
    seen = set()
    for f in files:
        records = list(_wandb_records(f))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        result = cells[config["cell_hash"]]
        seen.add(result["cell"]["hash"])
        cell_dir = tmp_path / "runs" / "digits" / f"{result['cell']['name']}-{result['cell']['hash']}"
        assert json.loads((cell_dir / STATE).read_text())["wandb"]["id"] == run.run_id
        assert run.display_name == result["cell"]["name"] and run.project == "lskd-bench"
        section = "teacher" if result["cell"]["role"] == "teacher" else "student"
        assert config[section]["epochs"] == 2 and "role=" not in " ".join(run.tags) and "seed=0" in run.tags
        rows = [
            {_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        epochs = [(r["update"], r["epoch/loss"]) for r in rows if "epoch/loss" in r]
        assert epochs == [(h["updates"], pytest.approx(h["loss"])) for h in result["history"]]
        assert [r["update"] for r in rows if "train/loss_step" in r] == list(range(5, result["updates"] + 1, 5))
        summary = {
            _key(i): json.loads(i.value_json)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for i in r.summary.update
        }
        assert summary["selected/top1"] == pytest.approx(result["best"]["metrics"]["top1"])
    assert seen == set(cells)


# ------------------------------------------------------------------------------------------ the grid, typed
def test_cell_params_are_the_typed_grid_values_and_only_the_sections_the_cell_uses():
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    cfg = resolve_config("digits", {}, {"methods": ["kd", "fitnet"], "grid": {"temperatures": [1, 3]}})
    cells = {(c.role, c.method, c.alpha, c.T, c.seed): c for c in plan_cells(cfg)}
    kd = loggers.CellRun(Path("x"), cells[("student", "kd", 0.0, 3.0, 0)], cfg)
    grid = kd.grid()
    assert (grid["alpha"], grid["T"], grid["seed"], grid["method"]) == (0.0, 3.0, 0, "kd")
    assert type(grid["T"]) is float and type(grid["alpha"]) is float and type(grid["seed"]) is int
    assert grid["pair"] == "cnn_wide-cnn_tiny" and grid["teacher_cell"].startswith("teacher_cnn_wide_a0_s0-")
    params = kd.params()
    assert (params["T"], params["alpha"], params["seed"]) == ("3.0", "0.0", "0")  # canonical: params.T = '3.0'
    assert params["kd.lambda"] == "1.0" and "student.lr" in params
    assert not any(k.split(".")[0] in ("crd", "fitnet", "dkd", "teacher", "slurm") for k in params), params
    fitnet = loggers.CellRun(Path("x"), cells[("student", "fitnet", 0.0, None, 0)], cfg).params()
    assert "T" not in fitnet and "fitnet.beta" in fitnet and not any(k.startswith("kd.") for k in fitnet)
    teacher = loggers.CellRun(Path("x"), cells[("teacher", "ls", 0.0, None, 0)], cfg).params()
    assert "teacher.lr" in teacher and not any(k.startswith(("student.", "kd.")) for k in teacher)
    baseline = loggers.CellRun(Path("x"), cells[("baseline", "ls", 0.0, None, 0)], cfg).grid()
    assert "alpha" not in baseline and "T" not in baseline


def test_epoch_scalars_name_the_training_top1_and_losses():
    entry = {"epoch": 1, "loss": 0.5, "train_top1": 80.0, "updates": 3, "eval": {"top1": 70.0}, "eval_loss": 0.9}
    assert loggers.epoch_scalars(entry) == {
        "epoch/epoch": 1.0,
        "epoch/loss": 0.5,
        "train/loss": 0.5,
        "train/top1": 80.0,
        "val/top1": 70.0,
        "val/loss": 0.9,
    }


TRACKED = ["--alphas", "0.1", "--temperatures", "1,3", "--seeds", "0", "--epochs", "1", "--methods", "kd"]


@pytest.fixture(scope="module")
def tracked_grid(tmp_path_factory):
    """One grid (teacher, baseline, kd at T 1 and 3) logged to MLflow (SQLite), W&B (offline) and TensorBoard."""
    require("mlflow", "the mlflow logger (pip install 'lskd-bench[mlflow]')")
    require("wandb", "the wandb logger (pip install 'lskd-bench[wandb]')")
    require("tensorboard", "the tensorboard logger (pip install 'lskd-bench[tensorboard]')")
    from lskd_bench.cli import main

    tmp = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp))
        for var in ("MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
            mp.delenv(var, raising=False)
        args = ["run", "--out", str(tmp / "runs"), *TRACKED, "--no-progress", "--set", "logging.project=typed"]
        args += ["--set", "logging.artifacts=true"]
        from mlflow.tracking import MlflowClient

        # the artifacts under tmp: a new experiment's default root is relative to the working directory
        MlflowClient().create_experiment("typed", artifact_location=(tmp / "artifacts").as_uri())
        import wandb

        wandb.teardown()  # W&B keeps the settings (WANDB_DIR) of its first run in this process: read them anew
        try:
            assert main([*args, "--loggers", "mlflow,wandb,tensorboard"]) == 0
        finally:
            wandb.teardown()
    return tmp


@pytest.mark.slow
def test_mlflow_params_find_the_t3_cells_and_hold_no_other_methods_sections(tracked_grid):
    from mlflow.tracking import MlflowClient

    cells = _cells(tracked_grid / "runs")
    assert len(cells) == 4
    client = MlflowClient(f"sqlite:///{tracked_grid / 'mlflow.db'}")
    exp = client.get_experiment_by_name("typed").experiment_id
    t3 = client.search_runs([exp], filter_string="params.T = '3.0'")
    assert [r.data.tags["cell_hash"] for r in t3] == [h for h, r in cells.items() if r["cell"]["T"] == 3.0]
    kd = client.search_runs([exp], filter_string="params.method = 'kd' and params.alpha = '0.1'")
    assert len(kd) == 2
    for run in client.search_runs([exp]):
        result, params = cells[run.data.tags["cell_hash"]], run.data.params
        assert not any(k.startswith(("crd.", "dkd.", "fitnet.", "slurm.")) for k in params), sorted(params)
        if result["cell"]["role"] == "student":
            assert params["kd.lambda"] == "1.0" and not any(k.startswith("teacher.") for k in params)
        hist = result["history"]
        metrics = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in
                   ("train/top1", "train/loss", "val/loss")}  # fmt: skip
        assert metrics["train/top1"] == [(h["updates"], pytest.approx(h["train_top1"])) for h in hist]
        assert metrics["train/loss"] == [(h["updates"], pytest.approx(h["loss"])) for h in hist]
        assert metrics["val/loss"] == [(h["updates"], pytest.approx(h["eval_loss"])) for h in hist]
        assert all(0.0 <= h["train_top1"] <= 100.0 and h["eval_loss"] > 0 for h in hist)
        assert run.data.metrics["selected/top1"] == pytest.approx(result["best"]["metrics"]["top1"])
        stored = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "weights")}
        assert stored == set(result["weights"].values()) and "model.pt" in stored  # logging.artifacts


def _require_mlflow_ui() -> None:
    """The full mlflow package (server and web app) of the client's version, or skip (under LSKD_REQUIRE_ALL=1, as
    ``require``: fail)."""
    from importlib import metadata

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    full, client = version("mlflow"), version("mlflow-skinny")
    if full is None or client not in (None, full):
        why = f"the MLflow UI needs the full mlflow package of the client's version (mlflow {full}, mlflow-skinny "
        why += f"{client}): pip install 'lskd-bench[mlflow]'"
        (pytest.fail if os.environ.get("LSKD_REQUIRE_ALL") == "1" else pytest.skip)(why)
    require("flask", "the MLflow UI (pip install 'lskd-bench[mlflow]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None) -> str:
    """The text a GET (``body`` None) or a JSON POST of ``url`` answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


@pytest.mark.slow
def test_mlflow_ui_serves_the_store_the_logger_wrote(tracked_grid):
    """The README's way to look at a grid: ``mlflow ui --backend-store-uri sqlite:///...`` on the SQLite store the
    mlflow logger wrote (the [mlflow] extra pins client and server to one version: of two versions, the server
    refused the client's store). Read through the server's REST API: the T = 3 cell, its alpha and T, a metric."""
    _require_mlflow_ui()
    cells = _cells(tracked_grid / "runs")
    (t3,) = [r for r in cells.values() if r["cell"]["T"] == 3.0]
    port = _free_port()
    log = tracked_grid / "mlflow_ui.log"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{tracked_grid / 'mlflow.db'}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=tracked_grid, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a guard, not a measure: the server starts in ~20 s on a busy machine
        while True:
            assert proc.poll() is None, f"mlflow ui exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow ui did not answer:\n{log.read_text()[-3000:]}"
            try:
                _http(base + "/health")  # an HTTP error or no server yet: OSError
                break
            except OSError:
                time.sleep(1)
        assert "<!doctype html>" in _http(base + "/").lower()  # the web app, not only the REST API
        exp = json.loads(_http(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=typed"))["experiment"]
        search = {"experiment_ids": [exp["experiment_id"]], "filter": "params.T = '3.0'"}
        found = json.loads(_http(base + "/api/2.0/mlflow/runs/search", search))
        (run,) = found["runs"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert tags["cell_hash"] == t3["cell"]["hash"]
        assert (float(params["alpha"]), float(params["T"])) == (0.1, 3.0) == (t3["cell"]["alpha"], t3["cell"]["T"])
        assert params["method"] == "kd" and params["kd.lambda"] == "1.0"
        assert metrics["selected/top1"] == pytest.approx(t3["best"]["metrics"]["top1"])
    finally:  # the server in its own session: its process group holds it and the processes it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_wandb_config_holds_numeric_alpha_and_t(tracked_grid):
    cells = _cells(tracked_grid / "runs")
    files = sorted((tracked_grid / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 4
    for f in files:
        records = list(_wandb_records(f))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        cell = cells[config["cell_hash"]]["cell"]
        (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
        assert artifact.type == "model" and artifact.name == f"weights-{cell['name']}"  # logging.artifacts
        assert config["seed"] == 0 and config["method"] == cell["method"]
        if cell["role"] != "baseline":
            assert isinstance(config["alpha"], float) and config["alpha"] == 0.1
        if cell["T"] is not None:
            assert isinstance(config["T"], float) and config["T"] == cell["T"]
            assert config["kd"]["lambda"] == 1.0 and "crd" not in config and "teacher" not in config
        else:
            assert "T" not in config


@pytest.mark.slow
def test_tensorboard_hparams_list_every_cell(tracked_grid):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cells = _cells(tracked_grid / "runs")
    seen = {}
    for h, result in cells.items():
        d = tracked_grid / "runs" / "digits" / f"{result['cell']['name']}-{h}" / "tensorboard"
        acc = EventAccumulator(str(d))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in
              start.session_start_info.hparams.items()}  # fmt: skip
        exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert "selected/top1" in {m.name.tag for m in exp.metric_infos}
        assert hp["cell_hash"] == h and hp["seed"] == 0 and hp["method"] == result["cell"]["method"]
        if result["cell"]["T"] is not None:
            assert hp["T"] == result["cell"]["T"]
        seen[h] = hp
        assert acc.Scalars("selected/top1")[-1].value == pytest.approx(result["best"]["metrics"]["top1"])
    assert set(seen) == set(cells) and sorted(hp.get("T", 0) for hp in seen.values()) == [0, 0, 1.0, 3.0]


# ------------------------------------------------------------------------------------------ failures
class Broken(Logger):
    calls = 0

    def epoch(self, update, entry):
        Broken.calls += 1
        raise OSError(28, "No space left on device")


class Stuck(Logger):
    release = threading.Event()
    opened = threading.Event()

    def __init__(self, run):
        super().__init__(run)
        Stuck.opened.set()
        Stuck.release.wait(600)  # a server that does not answer


@pytest.fixture
def fake_loggers():
    LOGGERS.names()  # built-ins first
    LOGGERS.add("broken", Broken)
    LOGGERS.add("stuck", Stuck)
    yield
    drained = threading.Event()  # what the logger thread still holds runs before they are unregistered
    loggers._get_worker().submit(drained.set)
    assert drained.wait(300)
    for name in ("broken", "stuck"):
        LOGGERS._items.pop(name, None)


@pytest.mark.slow
def test_a_failing_logger_warns_once_and_training_goes_on(tmp_path, cli, fake_loggers):
    rc, _, err = cli("run", "--out", str(tmp_path), *ARGS, "--loggers", "broken")
    assert rc == 0, err
    assert len(_cells(tmp_path)) == 3
    warnings = [line for line in err.splitlines() if "logger broken failed" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "training goes on" in warnings[0]
    assert Broken.calls == 3  # switched off after its first failure in each cell (3 cells, 2 epochs each)


@pytest.mark.slow
def test_a_hanging_logger_does_not_hold_up_training(tmp_path, cli, fake_loggers):
    """The logger never returns from opening its run: every cell still trains and finishes; closing a cell waits
    at most logging.close_timeout_s for it and says so."""
    try:
        rc, _, err = cli(
            "run", "--out", str(tmp_path), *ARGS, "--loggers", "stuck", "--set", "logging.close_timeout_s=0.2"
        )
        assert rc == 0, err
        assert Stuck.opened.is_set() and not Stuck.release.is_set()
        assert len(_cells(tmp_path)) == 3
        assert "still busy after" in err
    finally:
        Stuck.release.set()


def test_unknown_or_missing_logger_is_one_error_line(tmp_path, cli, monkeypatch):
    # the unknown name first: the error does not depend on which trackers are installed (an installed tracker
    # named before it would be checked first, and one not installed would be the error then)
    rc, _, err = cli("run", "--out", str(tmp_path), *ARGS, "--loggers", "wandbb,tensorboard")
    assert rc == 2 and err.strip().splitlines() == [
        f"lskd-bench: error: unknown logger 'wandbb' (known: {', '.join(LOGGERS.names())})"
    ]
    assert {"mlflow", "tensorboard", "wandb"} <= set(LOGGERS.names())  # the built-in loggers, plugins or not
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    rc, _, err = cli("run", "--out", str(tmp_path), *ARGS, "--loggers", "mlflow")
    assert rc == 2 and "logger mlflow needs the mlflow package: pip install 'lskd-bench[mlflow]'" in err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ trackers gone or hostile
HANG_GUARD_S = 300  # only keeps a hung test from hanging the suite; no assertion depends on speed


@pytest.fixture
def fresh_process_state(monkeypatch):
    """The loggers' per-process memory (switched-off loggers, warnings given), as in a new process."""
    monkeypatch.setattr(loggers, "_off", {})
    monkeypatch.setattr(loggers, "_warned", set())
    monkeypatch.delenv(loggers.OFF_ENV, raising=False)


def _cell(tmp_path, name, close_timeout_s=HANG_GUARD_S, names=("mlflow",)):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    run = loggers.CellRun(d, None, {"logging": {"project": "lskd-test"}})
    cell = loggers.CellLoggers(list(names), run, every=1, close_timeout_s=close_timeout_s)
    cell.step(1, 0.5, 0.1)
    cell.epoch(1, {"epoch": 1, "loss": 0.5, "eval": {"top1": 10.0}})
    cell.finish({"metrics": {"top1": 10.0}, "updates": 1})
    cell.close()
    return cell


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def test_an_mlflow_server_that_does_not_answer_is_tried_once_and_warned_once(
    tmp_path, monkeypatch, capsys, fresh_process_state
):
    """MLFLOW_TRACKING_URI=http://127.0.0.1:9 held every cell for the whole close timeout (MLflow's retries), with
    no warning: now the first cell finds it (one TCP connection), warns once, and the next cells do not try."""
    require("mlflow", "the mlflow logger")
    import socket

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    attempts = []
    real = socket.create_connection

    def counted(address, *args, **kw):
        attempts.append(address)
        return real(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", counted)
    first = _cell(tmp_path, "c1")
    second = _cell(tmp_path, "c2")
    assert attempts == [("127.0.0.1", 9)]
    assert first.names == ["mlflow"] and second.names == []  # the second cell does not try again
    (warning,) = _warnings(capsys.readouterr().err)
    assert "logger mlflow failed (c1: ConnectionError: the MLflow tracking server http://127.0.0.1:9 does not" in (
        warning
    ) and warning.endswith("it logs nothing more in this run (training goes on)")


class Counting(Logger):
    calls: ClassVar[list] = []

    def __init__(self, run):
        super().__init__(run)
        Counting.calls.append(("open", run.name))

    def close(self):
        Counting.calls.append(("close", self.run.name))


def test_a_logger_that_does_not_answer_is_switched_off_and_the_others_go_on(tmp_path, capsys, fresh_process_state):
    """A logger that hangs (a server that takes the connection and never answers) costs one close timeout: it
    is switched off for the next cells, with one warning, and the other loggers, on threads of their own, log."""

    class Hangs(Logger):
        release, opened = threading.Event(), threading.Event()

        def __init__(self, run):
            super().__init__(run)
            Hangs.opened.set()
            Hangs.release.wait(HANG_GUARD_S)

    LOGGERS.names()
    LOGGERS.add("stuck", Hangs)
    LOGGERS.add("counting", Counting)
    Counting.calls = []
    try:
        first = _cell(tmp_path, "c1", close_timeout_s=0.2, names=("stuck", "counting"))
        assert Hangs.opened.wait(HANG_GUARD_S)
        second = _cell(tmp_path, "c2", close_timeout_s=HANG_GUARD_S, names=("stuck", "counting"))
        assert first.names == ["stuck", "counting"] and second.names == ["counting"]
        assert Counting.calls == [("open", "c1"), ("close", "c1"), ("open", "c2"), ("close", "c2")]
        (warning,) = _warnings(capsys.readouterr().err)
        assert "logger stuck does not answer (c1: still busy after 0.2 s, logging.close_timeout_s)" in warning
        assert loggers.switched_off() == {"stuck": "does not answer"}
    finally:
        Hangs.release.set()
        for name in ("stuck", "counting"):
            LOGGERS._items.pop(name, None)


def test_hostile_tracker_settings_are_one_warning_each_and_nothing_raises(
    tmp_path, monkeypatch, capsys, fresh_process_state
):
    """A tensorboard folder blocked by a file and a garbage MLflow tracking URI: one warning line each, however
    many cells; a loggers.json that is no small JSON object of strings (a list, a FIFO, ids of other types) is
    nothing remembered, never an error or a block."""
    require("tensorboard", "the tensorboard logger")
    require("mlflow", "the mlflow logger")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "garbage://no/where")
    for i in range(2):
        (tmp_path / f"c{i}").mkdir()
        (tmp_path / f"c{i}" / "tensorboard").write_text("a file where the folder belongs")
        _cell(tmp_path, f"c{i}", names=("tensorboard", "mlflow"))
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 2 and all("it logs nothing more for that cell" in w for w in warnings), warnings
    assert {w.split("logger ")[1].split(" ")[0] for w in warnings} == {"tensorboard", "mlflow"}
    state = tmp_path / "state"
    state.mkdir()
    import os

    for content in ("[1, 2]", '{"mlflow": "run-1"}', '{"mlflow": {"run_id": ["x"]}}', '{"mlflow": {"run_id": 5}}'):
        (state / STATE).write_text(content)
        assert loggers.CellRun(state).recall("mlflow") is None, content
    (state / STATE).unlink()
    os.mkfifo(state / STATE)
    assert loggers.CellRun(state).recall("mlflow") is None
    loggers.CellRun(state).remember("mlflow", {"run_id": "r"})  # replaces the FIFO, does not open it
    assert loggers.CellRun(state).recall("mlflow") == {"run_id": "r"}


def test_wandb_without_network_or_key_is_one_warning(tmp_path, monkeypatch, capsys, fresh_process_state):
    """W&B online with no API key and a server that does not answer: one warning line (it fails, or it does not
    answer within the close timeout and is switched off), training code never waits past that."""
    require("wandb", "the wandb logger")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for i in range(2):
        _cell(tmp_path, f"c{i}", close_timeout_s=5, names=("wandb",))
    (warning,) = _warnings(capsys.readouterr().err)
    assert "logger wandb " in warning and "(training goes on)" in warning


def test_a_tracker_gone_before_the_grid_is_warned_once_for_every_worker_process(
    tmp_path, monkeypatch, capsys, fresh_process_state
):
    """The grid's process checks each tracker once before any unit trains (``preflight``); one that does not
    answer is switched off there and, through the environment, in the worker processes the executors start:
    one warning and one connection attempt for the whole grid."""
    require("mlflow", "the mlflow logger")
    import socket

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    attempts = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda a, *r, **k: attempts.append(a) or real(a, *r, **k))
    cfg = {"logging": {"loggers": ["mlflow"], "tensorboard": False, "project": "p"}}
    loggers.preflight(cfg)
    assert loggers.switched_off().keys() == {"mlflow"} and loggers.os.environ[loggers.OFF_ENV] == "mlflow"
    monkeypatch.setattr(loggers, "_off", {})  # a worker process: it inherits the environment only
    assert _cell(tmp_path, "c1").names == []
    assert attempts == [("127.0.0.1", 9)]
    (warning,) = _warnings(capsys.readouterr().err)
    assert "logger mlflow failed (ConnectionError: the MLflow tracking server http://127.0.0.1:9 does not" in warning
