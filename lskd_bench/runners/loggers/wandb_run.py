"""``wandb``: one Weights & Biases run per cell. W&B's own settings apply: ``WANDB_MODE=offline`` works with
no account (run files under ``WANDB_DIR``/wandb/, uploaded later with ``wandb sync``), ``WANDB_PROJECT`` (else
``logging.project``), ``WANDB_ENTITY``. Config: the cell's grid values, typed (``alpha``, ``T``, ``seed``:
numbers, for parallel coordinates and scatter plots; ``method``, ``arch``, ``pair``, ``cell_hash``...) and the
config sections the cell uses; tags: task, role, method, alpha, T, seed; group: the task; metrics against
``update`` (optimizer updates); the selected and last epochs' metrics in the run summary. A resumed cell
reopens its run (id in CELL/loggers.json). ``logging.artifacts: true``: the final weights as a ``model`` artifact
(``weights-<cell>``).

Online, a server that does not answer is found before the run is opened (one TCP connection to ``WANDB_BASE_URL``
when set, ``loggers.check_server``, 5 s at most; not through a proxy) or by W&B's own time-out of the run's start
(``INIT_TIMEOUT_S`` unless ``WANDB_INIT_TIMEOUT`` is set): either fails the logger once, for the rest of the run.
W&B's own console lines are off (``WANDB_SILENT`` unless set; no git probing): lskd-bench's one warning says it.
"""

from __future__ import annotations

import os
from typing import Any

from . import LOGGERS, CellRun, Logger, epoch_scalars, final_scalars
from . import check_server as _check_server

INIT_TIMEOUT_S = 30.0


def check_server() -> None:
    """ConnectionError unless the W&B server that ``WANDB_BASE_URL`` names takes a TCP connection; nothing to check
    without it (W&B's own host, which its settings files may change), offline, disabled or through a proxy."""
    url = os.environ.get("WANDB_BASE_URL", "")
    offline = os.environ.get("WANDB_MODE", "online") in ("offline", "disabled", "dryrun")
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
    if not url or offline or proxied or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return
    _check_server(url, "the W&B server")


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    requires = ("wandb", "wandb")

    @staticmethod
    def preflight(cfg: dict[str, Any]) -> None:
        """The server of ``WANDB_BASE_URL`` takes a connection (checked once, before the grid trains)."""
        check_server()

    def __init__(self, run: CellRun):
        super().__init__(run)
        os.environ.setdefault("WANDB_SILENT", "true")  # before the import: W&B reads it when it logs in
        import wandb  # optional [wandb] extra: only when this logger is on

        tags = run.tags()
        prior = run.recall("wandb")
        kw: dict[str, Any] = {
            "project": os.environ.get("WANDB_PROJECT") or run.cfg.get("logging", {}).get("project"),
            "name": run.name,
            "group": tags.get("task"),
            "job_type": tags.get("role"),
            "tags": [
                f"{k}={tags[k]}" if k not in ("task", "role") else tags[k]
                for k in ("task", "role", "method", "alpha", "T", "seed")
                if tags.get(k)
            ],
            "reinit": "create_new",  # several cells (a fused group) log at once
            "settings": wandb.Settings(
                console="off",
                silent=True,
                disable_git=True,
                **({} if os.environ.get("WANDB_INIT_TIMEOUT") else {"init_timeout": INIT_TIMEOUT_S}),
            ),
        }
        if prior and prior.get("id"):
            kw.update(id=prior["id"], resume="allow")
        else:
            kw["config"] = {**run.config(), **run.grid()}
        check_server()
        try:
            self.wb = wandb.init(**kw)
        except wandb.errors.CommError as exc:  # the server, not this cell: no later cell tries again
            raise ConnectionError(f"the W&B server does not answer ({exc})") from None
        self.wb.define_metric("update")
        self.wb.define_metric("*", step_metric="update")
        run.remember("wandb", {"id": self.wb.id})
        self.finished = False

    def step(self, update: int, loss: float, lr: float) -> None:
        self.wb.log({"update": update, "train/loss_step": loss, "train/lr": lr})

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        self.wb.log({"update": update, **epoch_scalars(entry, self.run.selection)})

    def finish(self, result: dict[str, Any]) -> None:
        self.wb.summary.update(final_scalars(result))
        files = self.run.weight_files(result)
        if files:  # logging.artifacts: the final weights as one model artifact of the run
            import wandb

            artifact = wandb.Artifact(f"weights-{self.run.name}", type="model")
            for path in files:
                artifact.add_file(str(path))
            self.wb.log_artifact(artifact)
        self.wb.finish()
        self.finished = True

    def close(self) -> None:
        if not self.finished:
            self.wb.finish(exit_code=1)  # failed or interrupted: a resume reopens it
