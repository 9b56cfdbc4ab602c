"""Plan the cells of an alpha x T grid: teachers, KD students and the no-KD baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import store
from ..components import component_identity
from ..config import config_hash, full_schema
from ..errors import UsageError
from ..methods import method_class, method_params
from ..schema import Section, grid_values
from ..tasks import get_task

GRID_AXES = ("alpha", "T")


@dataclass(frozen=True)
class Cell:
    task: str
    role: str  # "teacher" | "student" | "baseline"
    arch: str
    method: str  # registry name of the training objective ("ls" for teachers and the baseline)
    alpha: float  # label smoothing of the teacher (a student's: its teacher's; the baseline: 0)
    T: float | None
    seed: int
    hash: str
    teacher: Cell | None = None

    @property
    def name(self) -> str:
        if self.role == "teacher":
            return f"teacher_{self.arch}_a{_fmt(self.alpha)}_s{self.seed}"
        if self.role == "baseline":
            return f"baseline_{self.arch}_s{self.seed}"
        return f"student_{self.method}_{self.arch}_a{_fmt(self.alpha)}_T{_fmt(self.T)}_s{self.seed}"

    def dir(self, out: Path) -> Path:
        return Path(out) / self.task / f"{self.name}-{self.hash}"

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "role": self.role,
            "arch": self.arch,
            "method": self.method,
            "alpha": self.alpha,
            "T": self.T,
            "seed": self.seed,
            "hash": self.hash,
            "name": self.name,
            "teacher": self.teacher.name + "-" + self.teacher.hash if self.teacher else None,
            "teacher_arch": self.teacher.arch if self.teacher else (self.arch if self.role == "teacher" else None),
        }


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{float(x):g}"


def _identity(task: str, role: str, cfg: dict[str, Any], schema: Section) -> dict[str, Any]:
    """The part of the config that can change a cell's result: the schema's identity keys of the data
    section and of the role's recipe (hardware settings, checkpoint and eval intervals are left out)."""
    section = "teacher" if role == "teacher" else "student"
    return {
        "task": task,
        "role": role,
        "data": schema.fields["data"].identity(cfg["data"]),
        "train": schema.fields[section].identity(cfg[section]),
        **_batchnorm_identity(cfg),
        **component_identity(cfg),  # a component's section, when it differs from its defaults
    }


def _weights_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The teacher weights a student distils from, as part of its identity. Students distilled from the last
    weights before this choice existed: "last" stays out of the hash, so their cells keep their names."""
    return {"teacher_weights": "selected"} if cfg["teacher_weights"] == "selected" else {}


def _batchnorm_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """BatchNorm with each process's own statistics (``sync_batchnorm: false``) trains something else than one
    process does: part of the identity then; the default (the global batch's statistics) stays out of the hash,
    so cells planned before the setting existed keep their names."""
    return {} if cfg["sync_batchnorm"] else {"batchnorm": "per_rank"}


def teacher_weights(teacher: Cell, out: Path, which: str) -> tuple[Path, dict[str, Any]]:
    """The weights file of a finished ``teacher`` a student distils from (``which``: "last" or "selected"), and
    what result.json records of it: {"cell", "which", "file", "epoch"}. A teacher finished before lskd-bench kept
    the selected epoch's weights has only its last ones: asking for "selected" then is an error (retrain it)."""
    d = teacher.dir(out)
    result = store.read_result(d) or {}
    last_epoch = result.get("epochs")
    if which == "last":
        name, epoch = store.MODEL, last_epoch
    else:
        name = store.selected_weights(result)
        epoch = (store.selected_epoch(result) or {}).get("epoch", last_epoch)
        if name is None:
            if store.selected_epoch(result) and epoch != last_epoch:
                raise RuntimeError(
                    f"teacher {teacher.name} kept no weights of its selected epoch {epoch} (finished "
                    f"before lskd-bench saved them): train it again, or set teacher_weights: last"
                )
            name, epoch = store.MODEL, last_epoch
    record = {
        "cell": f"{teacher.name}-{teacher.hash}",
        "which": which,
        "file": name,
        "epoch": epoch,
        "last_epoch": last_epoch,
    }
    return d / name, record


def plan_cells(cfg: dict[str, Any]) -> list[Cell]:
    """All cells of the configured grid, teachers first (a student's teacher precedes it).

    A method without a temperature (``uses_temperature = False``) gets one student per alpha (T = None).
    """
    task = cfg["task"]
    schema = full_schema(get_task(task))  # built once: every cell's identity reads it
    alphas, temps = grid_values(cfg)
    seeds = [int(s) for s in cfg["grid"]["seeds"]]
    teacher_seed = seeds[0] if cfg["teacher"]["seed"] is None else cfg["teacher"]["seed"]
    t_arch, s_arch = cfg["teacher"]["arch"], cfg["student"]["arch"]

    cells: list[Cell] = []
    teachers: dict[float, Cell] = {}
    for a in alphas:
        ident = {**_identity(task, "teacher", cfg, schema), "method": "ls", "alpha": a, "seed": teacher_seed}
        teachers[a] = Cell(task, "teacher", t_arch, "ls", a, None, teacher_seed, config_hash(ident, 8))
        cells.append(teachers[a])
    for seed in seeds:
        if cfg["baseline"]:
            ident = {**_identity(task, "baseline", cfg, schema), "method": "ls", "alpha": 0.0, "seed": seed}
            cells.append(Cell(task, "baseline", s_arch, "ls", 0.0, None, seed, config_hash(ident, 8)))
        for method in cfg["methods"]:
            mcls = method_class(method)
            for a in alphas:
                for t in temps if mcls.uses_temperature else [None]:
                    tcell = teachers[a]
                    ident = {
                        **_identity(task, "student", cfg, schema),
                        "method": method,
                        "params": mcls.identity_params(method_params(method, cfg)),
                        "T": t,
                        "seed": seed,
                        "teacher": tcell.hash,
                        **_weights_identity(cfg),
                    }
                    cells.append(Cell(task, "student", s_arch, method, a, t, seed, config_hash(ident, 8), tcell))
    return cells


def validate_grid(cfg: dict[str, Any]) -> None:
    """Cross-key rules the per-key schema cannot express."""
    grid = cfg["grid"]
    if len(set(grid["axes"])) != len(grid["axes"]):
        raise UsageError(f"grid.axes lists an axis twice: {', '.join(grid['axes'])}")
    for name, values in (
        ("grid.alphas", grid["alphas"]),
        ("grid.temperatures", grid["temperatures"]),
        ("grid.seeds", grid["seeds"]),
    ):
        if len(set(values)) != len(values):
            raise UsageError(f"{name} lists a value twice: {values}")
    if len(set(cfg["methods"])) != len(cfg["methods"]):  # kd,kd planned one cell twice
        twice = next(m for m in cfg["methods"] if cfg["methods"].count(m) > 1)
        raise UsageError(f"methods lists {twice} twice: {', '.join(cfg['methods'])}")
