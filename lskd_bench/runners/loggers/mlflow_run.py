"""``mlflow``: one MLflow run per cell, where ``MLFLOW_TRACKING_URI`` points (a ``file:`` store, SQLite, a
server); unset, MLflow's own default (``sqlite:///mlflow.db`` in the working directory since MLflow 3.7,
``./mlruns`` before). The experiment is ``MLFLOW_EXPERIMENT_NAME`` or ``logging.project``.

Params: the cell's grid values (``alpha``, ``T``, ``seed``, ``method``, ``arch``, ``pair``...; floats in their
canonical form: ``search_runs(filter_string="params.T = '3.0'")`` finds the T = 3 cells) and the config sections
the cell uses, flattened (``student.lr``, ``kd.lambda``). Tags: the cell (``cell``, ``cell_hash``, ``task``,
``role``, ``method``, ``alpha``, ``T``, ``seed``, ``teacher``). Metrics: step = optimizer updates; the step
values are sent in one batch at each epoch end. A resumed cell reopens its run (id in CELL/loggers.json); the
values logged after its last checkpoint are logged again at the same steps. ``logging.artifacts: true``: the final
weights (``model.pt``, ``model_selected.pt``) as the run's artifacts under ``weights/``.

A server that does not answer is found before the run is opened: one TCP connection to an ``http(s)`` tracking
URI (``loggers.check_server``, 5 s at most); it fails the logger once (one warning) and the next cells do not try
again.
Unless set, MLflow's HTTP requests get ``MLFLOW_HTTP_REQUEST_TIMEOUT=20`` s and 2 retries (MLflow's own defaults,
120 s and 7 retries with backoff, held each cell for minutes when a server went away).
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import LOGGERS, CellRun, Logger, epoch_scalars, final_scalars
from . import check_server as _check_server

MAX_PARAMS, MAX_METRICS, MAX_VALUE = 100, 1000, 6000  # MLflow's log_batch limits
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}


def check_server(uri: str) -> None:
    """ConnectionError unless the tracking server of an ``http(s)`` URI takes a TCP connection (other URIs:
    nothing to check here; MLflow says what is wrong with them)."""
    _check_server(uri, "the MLflow tracking server")


@LOGGERS.register("mlflow")
class MLflowLogger(Logger):
    requires = ("mlflow", "mlflow")

    @staticmethod
    def preflight(cfg: dict[str, Any]) -> None:
        """The server of ``MLFLOW_TRACKING_URI`` takes a connection (checked once, before the grid trains)."""
        check_server(os.environ.get("MLFLOW_TRACKING_URI", ""))

    def __init__(self, run: CellRun):
        super().__init__(run)
        from mlflow.entities import Metric, Param  # optional [mlflow] extra: only when this logger is on
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.Metric = Metric
        self.client = MlflowClient()
        check_server(str(self.client.tracking_uri))
        self.pending: list = []
        self.finished = False
        prior = run.recall("mlflow")
        self.run_id = None
        if prior and prior.get("run_id"):
            try:
                info = self.client.get_run(prior["run_id"]).info
                if info.lifecycle_stage == "active":
                    self.run_id = info.run_id
                    self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException:  # another tracking URI, or the run was deleted: start a new one
                self.run_id = None
        if self.run_id is None:
            tags = run.tags()
            created = self.client.create_run(self._experiment(MlflowException), run_name=run.name, tags=tags)
            self.run_id = created.info.run_id
            run.remember("mlflow", {"run_id": self.run_id, "tracking_uri": str(self.client.tracking_uri)})
            params = [Param(k, v[:MAX_VALUE]) for k, v in run.params().items()]
            for i in range(0, len(params), MAX_PARAMS):
                self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS])

    def _experiment(self, MlflowException) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.run.cfg.get("logging", {}).get("project") or "Default"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # created by another process meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def _add(self, values: dict[str, float], update: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [self.Metric(k, v, now, update) for k, v in values.items()]

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=pending[i : i + MAX_METRICS])

    def step(self, update: int, loss: float, lr: float) -> None:
        self._add({"train/loss_step": loss, "train/lr": lr}, update)

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        self._add(epoch_scalars(entry, self.run.selection), update)
        self._flush()

    def finish(self, result: dict[str, Any]) -> None:
        self._add(final_scalars(result), int(result.get("updates") or 0))
        self._flush()
        for path in self.run.weight_files(result):  # logging.artifacts: the final weights, under weights/
            self.client.log_artifact(self.run_id, str(path), artifact_path="weights")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        if not self.finished:
            self._flush()
            self.client.set_terminated(self.run_id, "KILLED")  # failed or interrupted: a resume reopens it
