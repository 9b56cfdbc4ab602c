"""The distributed-equivalence matrix (tests/runners/test_distributed.py, benchmarks/bench_distributed_equivalence.py).

``python -m tests.distributed_worker OUT WORLD RANK`` trains the baseline and the students of ``METHODS`` as
one fused group on a small digits split, as rank RANK of WORLD gloo processes (WORLD 1: one process, no process
group), stopped by a KeyboardInterrupt at the end of epoch 1 and resumed to the end of epoch 2. At every
checkpoint each rank saves what it holds (model, method state, optimizer, history) as
``OUT/world<W>/<cell>/rank<R>-u<updates>.pt``; the group's teacher is ``OUT/teacher.pt`` (``train_teacher``).
Fused training equals training each cell alone bit for bit (tests/runners/test_train.py), so one fused group
stands for every method trained alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lskd_bench.runners.cells import Cell, plan_cells
from lskd_bench.runners.grid import fuse_units, resolve_config
from lskd_bench.runners.train import Member, train_group
from lskd_bench.runners.units import UnitContext, unit_inputs
from lskd_bench.tasks import get_task

# every classification method and a composite (a feature method + Hinton KD); the baseline trains with "ls"
METHODS = [
    *("kd", "kd_std", "dkd", "nkd", "ctkd", "dist", "ttm", "wttm", "skd", "mlkd"),
    *("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "ofd", "reviewkd", "kdsvd"),
    *("cckd", "dist_plus", "srd", "pad", "catkd", "simkd"),
    "crd+kd",
    # its own fused group (rotated views); measured alone 2026-12-07: state 1.3e-6 / 1.2e-6, loss 4.1e-7 / 1.6e-7
    # at 2 / 4 processes, the same top-1, ranks equal
    "sskd",
]
# registered methods the matrix leaves out, and why
NOT_IN_MATRIX = {
    "dot": "needs SGD without Nesterov (the matrix's recipe, shared by every student, uses it): tested apart "
    "(test_distributed.py::test_a_method_with_its_own_recipe_trains_with_n_processes_what_one_process_trains)",
    # measured 2026-12-07: it amplifies float rounding (its regressors' BatchNorm on the tiny model's small maps):
    # one process at 2 threads differs from 1 thread by 1.8e-2, more than 2 processes do (1.2e-2)
    "semckd": "amplifies rounding beyond the matrix's bound; tested apart against its own 2-thread difference "
    "(test_distributed.py::test_a_method_that_amplifies_rounding_differs_across_processes_as_across_threads)",
}
# the student recipe a method tested apart needs (its own group: ``run(..., methods=[name])``)
OWN_RECIPE = {"dot": {"nesterov": False}}
# translation (a tiny corpus, dropout off: each rank draws its own samples' dropout masks): token-level KD, a
# learnt temperature, relations across the target tokens of the batch, and sequence-level KD on the teacher's beams
TRANSLATION_METHODS = ["kd", "ctkd", "dist", "seqkd"]
BATCH = 32  # the global batch: 32 / WORLD per rank
# a tensor's difference is taken relative to its largest magnitude, but at least this: a momentum whose gradient
# is zero but for rounding (a bias just before a BatchNorm: ~1e-6, SRD's projector) has no meaningful relative
# difference
SCALE_FLOOR = 1e-2
# parameters whose gradient is zero but for rounding, which Adam turns into full-size steps of noise: an attention
# key's bias adds the same q.b to each of a query's scores, and softmax ignores it (the translation matrix)
NO_GRADIENT = (".k_proj.bias",)


def config(out: Path, kind: str = "images", methods: list[str] | None = None) -> dict[str, Any]:
    """``images``: digits with 10 % of each class for training (about 180 samples: 5 steps an epoch), 2 epochs
    (the initialisation stages of AB, FT, FSP and SSKD's teacher head one epoch of them), CRD with 64 negatives.
    ``translation``: a 96-pair corpus (``out/corpus``), a micro Transformer, 192 tokens a batch (each shared by up
    to 4 ranks), no dropout."""
    common = {"baseline": True, "device": "cpu", "threads": 1, "analysis": {"export": False}}
    if kind == "translation":
        role = {"arch": "transformer_micro", "max_tokens": 192, "lr": 3e-3, "warmup_updates": 2, "dropout": 0.0}
        return resolve_config(
            "iwslt_ende",
            {},
            {
                **common,
                "methods": TRANSLATION_METHODS,
                "data": {"root": str(out / "corpus"), "vocab_size": 60},
                "generation": {"beam": 2, "max_len_a": 1.0, "max_len_b": 5},
                "grid": {"alphas": [0.1], "temperatures": [2.0], "seeds": [0]},
                "teacher": {**role, "epochs": 1},
                "student": {**role, "epochs": 2},
            },
        )
    return resolve_config(
        "digits",
        {},
        {
            **common,
            "methods": methods or METHODS,
            "grid": {"alphas": [0.1], "temperatures": [4.0], "seeds": [0]},
            "data": {"val_fraction": 0.9},
            "teacher": {"epochs": 1, "batch_size": BATCH},
            "student": {
                "epochs": 2,
                "batch_size": BATCH,
                **{k: v for m in methods or [] for k, v in OWN_RECIPE.get(m, {}).items()},
            },
            "ab": {"init_epochs": 1},
            "ft": {"init_epochs": 1},
            "fsp": {"init_epochs": 1},
            "crd": {"nce_k": 64},
            "sskd": {"t_epochs": 1},
        },
    )


def _units(cfg: dict[str, Any]) -> list[list[Cell]]:
    """The students and the baseline in the runner's fused groups (``fuse_units``: teachers run in train and in
    eval mode apart, students on the teacher's beam outputs apart), with no size limit."""
    cells = [c for c in plan_cells(cfg) if c.role != "teacher"]
    return fuse_units(cells, cfg, fuse=True, max_fused=len(cells))


def train_teacher(out: Path, kind: str = "images", methods: list[str] | None = None) -> None:
    """The teacher (alpha 0.1, one epoch, one process) in its cell under ``out``, and (translation) the corpus
    and the teacher's beam outputs, so that the ranks only read them."""
    if kind == "translation":
        from .fixtures import make_plain

        make_plain(out / "corpus", n_train=96)
    cfg = config(out, kind, methods)
    ctx = UnitContext(get_task(cfg["task"]), cfg, out, progress=False)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    (o,) = train_group(ctx.task, [teacher], cfg, ctx.data(), [teacher.dir(out)], progress=False)
    assert o.error is None, o.error
    for unit in _units(cfg):
        unit_inputs(ctx, unit, torch.device("cpu"))


def _dump_every_checkpoint(rank: int) -> None:
    """Each rank saves what it holds whenever a member checkpoints (rank 0 alone writes the real state.pt)."""
    real = Member.checkpoint

    def checkpoint(self: Member) -> None:
        real(self)
        method = self.method.state_dict() if isinstance(self.method, nn.Module) else {}
        held = {"model": self.model.state_dict(), "method": method, "optimizer": self.opt.state_dict()}
        torch.save(
            {**held, "history": self.record.history, "update": self.update}, self.dir / f"rank{rank}-u{self.update}.pt"
        )

    Member.checkpoint = checkpoint  # type: ignore[method-assign]


def run(
    out: Path, world: int, rank: int, kind: str = "images", methods: list[str] | None = None, threads: int = 1
) -> None:
    """Train the group (``methods``: the matrix's) as rank RANK of WORLD into ``out/world<W>`` (at ``threads``
    intra-op threads other than 1: ``out/world<W>-threads<T>``)."""
    torch.set_num_threads(threads)
    if world > 1:
        init = f"file://{out / f'rendezvous{world}'}"
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    _dump_every_checkpoint(rank)
    cfg = config(out, kind, methods)
    where = f"world{world}" + (f"-threads{threads}" if threads != 1 else "")
    ctx = UnitContext(get_task(cfg["task"]), cfg, out, progress=False)

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    failed = []
    for unit in _units(cfg):
        data, teacher = unit_inputs(ctx, unit, torch.device("cpu"))
        dirs = [out / where / c.name for c in unit]
        try:
            train_group(ctx.task, unit, cfg, data, dirs, teacher=teacher, progress=False, on_epoch_end=stop)
        except KeyboardInterrupt:
            pass
        if world > 1:
            dist.barrier()  # rank 0 wrote every state.pt
        outcomes = train_group(ctx.task, unit, cfg, data, dirs, teacher=teacher, progress=False)
        failed += [f"{o.cell.name}: {o.error}" for o in outcomes if o.error is not None]
    if world > 1:
        dist.destroy_process_group()
    if failed:
        raise SystemExit("\n".join(failed))


def launch(
    out: Path, world: int, kind: str = "images", hang_guard_s: float = 15 * 60, methods: list[str] | None = None
) -> None:
    """Train the group (``methods``: the matrix's) as WORLD processes (``run`` in each; the repository on their
    path); raise with their stderr if one fails."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "tests.distributed_worker", str(out), str(world)]
    names = ",".join(methods or [])
    procs = [
        subprocess.Popen([*cmd, str(r), kind, names], cwd=root, env=env, stderr=subprocess.PIPE) for r in range(world)
    ]
    errors = [p.communicate(timeout=hang_guard_s)[1].decode() for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError("\n".join(errors))


if __name__ == "__main__":
    out_dir, n, r = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    names = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else None
    run(out_dir, n, r, sys.argv[4] if len(sys.argv) > 4 else "images", names)


def _tensors(held: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The floating-point tensors of what a rank held (model, method state, optimizer state), by name."""
    out = {f"model.{k}": v for k, v in held["model"].items() if not k.endswith(NO_GRADIENT)}
    out.update({f"method.{k}": v for k, v in held["method"].items() if isinstance(v, torch.Tensor)})
    for i, st in held["optimizer"]["state"].items():
        out.update({f"optimizer.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return {k: v for k, v in out.items() if v.is_floating_point()}


def differences(out: Path, world: int, where: str | None = None) -> dict[str, dict[str, float]]:
    """Per cell, after the last checkpoint: the largest difference of WORLD processes' rank 0 from one process
    (``state``: weights, method state, optimizer momenta, relative to each tensor's largest magnitude or
    ``SCALE_FLOOR``; ``loss``: the epochs' mean losses, relative; ``metric``: the task's primary metric, top-1 or
    BLEU, in points), and whether every rank held bit for bit what rank 0 held at every checkpoint
    (``ranks_equal``). ``where``: the folder of the run compared with one process (default ``world<WORLD>``)."""
    import json

    rows: dict[str, dict[str, float]] = {}
    for one in sorted((out / "world1").iterdir()):
        many = out / (where or f"world{world}") / one.name
        last = max(int(p.stem.split("-u")[1]) for p in one.glob("rank0-u*.pt"))
        a = torch.load(one / f"rank0-u{last}.pt", weights_only=True)
        b = torch.load(many / f"rank0-u{last}.pt", weights_only=True)
        ta, tb = _tensors(a), _tensors(b)
        assert ta.keys() == tb.keys(), one.name
        state = max(float((ta[k] - tb[k]).abs().max() / ta[k].abs().max().clamp_min(SCALE_FLOOR)) for k in ta)
        loss = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a["history"], b["history"]))
        ra, rb = (json.loads((d / "result.json").read_text()) for d in (one, many))
        metric = ra["primary_metric"]
        equal = True
        for p in many.glob("rank0-u*.pt"):
            r0 = _tensors(torch.load(p, weights_only=True))
            for r in range(1, world):
                rr = _tensors(torch.load(many / p.name.replace("rank0", f"rank{r}"), weights_only=True))
                equal &= all(torch.equal(r0[k], rr[k]) for k in r0)
        top = abs(ra["metrics"][metric] - rb["metrics"][metric])
        rows[one.name] = {"state": state, "loss": loss, "metric": top, "ranks_equal": equal}
    return rows
