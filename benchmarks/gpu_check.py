"""One GPU check of every GPU-relevant workload of the suite: one table of achieved figure, its bound, ratio.

    python benchmarks/gpu_check.py [--out gpu_check.md] [--small] [--skip digits,ddp,nmt,...]

Rows (a bound is what the same work reaches on synthetic tensors already on the device, bf16 autocast and
channels_last on CUDA, as the runner trains):

- synthetic steps (the bounds): ResNet-50 teacher step (LS cross-entropy), ResNet-50 teacher forward, the student
  steps of every student architecture of the paper's tables, and the KD step ResNet-50 -> ResNet-18;
- the runner's fused ResNet-50 -> ResNet-18 group (4 KD temperatures + the baseline: 5 students) on generated
  JPEGs at 224 px, ``data.decode=cpu`` (PIL in loader workers) and ``data.decode=gpu`` (nvJPEG + tensor
  augmentation), against the bound teacher forward + 5 student steps; and the data pipelines alone;
- teacher training through the runner (gpu decode) against the synthetic teacher step;
- the digits default grid for one seed (wall seconds) and one digits group through torchrun DDP with one process against
  the same group in-process;
- translation (needs fairseq): teacher step, KD step and beam decoding on a synthetic batch (the bounds), then
  through the runner (bench_nmt.gpu_rows): teacher step, KD step, a fused group of 5 KD students, beam-5
  decoding batched by generation.max_tokens, lskd-bench / fairseq-train, and the demo's teacher GPU / CPU;
- then an estimate of the wall time of every table of the paper on one 8-GPU node (training and evaluation, the
  runner's own fusion of students), from the figures above.

It prints a first line at once and a line per step, then the table, which it also writes to ``--out`` (and
rewrites there, with the estimate so far, after each section: a call cut off at its time limit keeps what it
measured). Work that fails is a row with its error (the traceback in the log) and the check goes on.
``--small`` runs the same code on the CPU in seconds (tiny images, batches and models;
tests/benchmarks/test_gpu_check.py).

One call on the lent GPU machine (/work/shared/gpu/README.md; ../shared/gpu from the main checkout): from the
checkout, here,
    bash /work/shared/gpu/prepare.sh
then one device call with carry [".device-wheels"] and timeout 600:
    source .device-wheels/prelude.sh && python3 benchmarks/gpu_check.py --wait-fairseq 300 \\
        --out $OUT/gpu_check.md 2>&1 | tee $OUT/gpu_check.log
(the prelude builds fairseq in the background; the translation rows come last and wait for it). Give the
machine back afterwards. The whole script is meant to stay under 8 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


ROWS: list[dict[str, Any]] = []


def row(
    workload: str,
    achieved: float | None,
    unit: str,
    bound: float | None = None,
    note: str = "",
    higher_is_better: bool = True,
) -> None:
    note = " ".join(str(note).split()).replace("|", "/")  # one table cell: an error's text has newlines and pipes
    ratio = None
    if achieved and bound:
        ratio = achieved / bound if higher_is_better else bound / achieved
    ROWS.append(
        {"workload": workload, "achieved": achieved, "unit": unit, "bound": bound, "ratio": ratio, "note": note}
    )
    a = "-" if achieved is None else f"{achieved:,.1f} {unit}"
    say(
        f"  = {workload}: {a}"
        + (f" (bound {bound:,.1f}, ratio {ratio:.0%})" if ratio is not None else "")
        + (f"; {note}" if note else "")
    )


def failed(workload: str, unit: str, exc: BaseException) -> None:
    """A row for work that raised: the error in the table (its first and last lines), the whole traceback in the
    log, and the check goes on (one GPU call: a crash would lose every row measured so far)."""
    import traceback

    say(f"  ! {workload} failed:\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    lines = [ln for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()] or [type(exc).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    row(workload, None, unit, note=f"failed: {text[:400]}")


def table() -> str:
    lines = ["| workload | achieved | bound | ratio | note |", "|---|---:|---:|---:|---|"]
    for r in ROWS:
        a = "-" if r["achieved"] is None else f"{r['achieved']:,.1f} {r['unit']}"
        b = "-" if r["bound"] is None else f"{r['bound']:,.1f} {r['unit']}"
        q = "-" if r["ratio"] is None else f"{r['ratio']:.0%}"
        lines.append(f"| {r['workload']} | {a} | {b} | {q} | {r['note']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ settings
class Setup:
    def __init__(self, args):
        import torch

        self.small = args.small
        self.device = torch.device("cpu" if args.small else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        cpus = os.cpu_count() or 2
        if args.small:  # resnet18 stands in for the teacher: the same code, a CPU-sized model
            self.size, self.batch, self.steps, self.warmup = 16, 4, 3, 2
            self.classes, self.per_class, self.workers, self.measure_from = 2, 8, 2, 1
        else:
            self.size, self.batch, self.steps, self.warmup = 224, 256, 10, 3
            # enough steps that the loader's read-ahead (2 batches per worker) is used up before measuring
            self.workers = max(1, min(14, cpus - 2))
            self.measure_from = 2 * self.workers + 2
            self.classes, self.per_class = 16, (self.measure_from + 30) * self.batch // 16
        self.teacher = "resnet18" if args.small else "resnet50"
        self.students = ["resnet18"] if args.small else ["resnet18", "resnet50", "efficientnet_b0", "mobilenetv2_100"]
        self.cfg = {"amp": "bf16"}

    def describe(self) -> str:
        import torch

        dev = torch.cuda.get_device_name(self.device) if self.cuda else f"cpu ({torch.get_num_threads()} threads)"
        return (
            f"device {dev}; torch {torch.__version__}; {self.size}px, batch {self.batch}; "
            f"{'bf16 autocast, channels_last' if self.cuda else 'fp32'}{'; --small' if self.small else ''}"
        )


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rate(name: str, fn: Callable[[], None], items: int, s: Setup) -> float:
    for _ in range(s.warmup):
        fn()
    sync(s.device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        fn()
    sync(s.device)
    return s.steps * items / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ synthetic bounds
def synthetic(s: Setup, out: dict[str, float] | None = None) -> dict[str, float]:
    """Images/s of each step on synthetic tensors: the bounds (added to ``out`` as they are measured)."""
    import torch

    from lskd_bench.methods import ls_cross_entropy
    from lskd_bench.models import build_image_model
    from lskd_bench.tasks.base import autocast

    dev, fmt = s.device, (torch.channels_last if s.cuda else torch.contiguous_format)
    x = torch.randn(s.batch, 3, s.size, s.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (s.batch,), device=dev)
    out = {} if out is None else out

    def model(arch):
        return build_image_model(arch, 1000).to(dev).to(memory_format=fmt)

    teacher = model(s.teacher)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)

    def teacher_step():
        with autocast(dev, s.cfg):
            logits = teacher(x)
        loss = ls_cross_entropy(logits.float(), y, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    say(f"synthetic: {s.teacher} teacher step...")
    teacher.train()
    out["teacher_step"] = rate("teacher", teacher_step, s.batch, s)
    row(f"synthetic: {s.teacher} teacher step (LS CE)", out["teacher_step"], "img/s", note="bound of teacher training")
    teacher.eval()

    def teacher_fwd():
        with torch.inference_mode(), autocast(dev, s.cfg):
            teacher(x)

    say(f"synthetic: {s.teacher} teacher forward...")
    out["teacher_fwd"] = rate("teacher forward", teacher_fwd, s.batch, s)
    row(f"synthetic: {s.teacher} teacher forward (inference)", out["teacher_fwd"], "img/s")
    with torch.inference_mode(), autocast(dev, s.cfg):
        t_logits = teacher(x).float()
    t_logits = t_logits.clone()
    for arch in s.students:
        try:
            student_rows(s, arch, model, teacher, x, y, t_logits, out)
        except Exception as exc:
            failed(f"synthetic: {arch} student step", "img/s", exc)
        if s.cuda:
            torch.cuda.empty_cache()
    if "teacher_fwd" in out and "student_resnet18" in out:
        out["group5"] = 1.0 / (1.0 / out["teacher_fwd"] + 5.0 / out["student_resnet18"])
    teacher = opt = None  # the closures hold them: freed before empty_cache
    if s.cuda:
        torch.cuda.empty_cache()
    return out


def student_rows(s: Setup, arch: str, model, teacher, x, y, t_logits, out: dict[str, float]) -> None:
    """The synthetic student step of ``arch`` (and, for resnet18, the KD step with the teacher's forward)."""
    import torch

    from lskd_bench.methods import kd_loss
    from lskd_bench.tasks.base import autocast

    dev = s.device
    student = model(arch).train()
    sopt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def student_update(teacher_logits):
        with autocast(dev, s.cfg):
            logits = student(x)
        loss = kd_loss(logits.float(), teacher_logits, y, T=4.0, lam=1.0)
        sopt.zero_grad(set_to_none=True)
        loss.backward()
        sopt.step()

    def student_step():
        student_update(t_logits)

    say(f"synthetic: {arch} student step...")
    out[f"student_{arch}"] = rate(arch, student_step, s.batch, s)
    row(f"synthetic: {arch} student step (KD loss, teacher logits given)", out[f"student_{arch}"], "img/s")

    if arch == "resnet18":

        def kd_step():
            with torch.inference_mode(), autocast(dev, s.cfg):
                t = teacher(x).float()
            student_update(t.clone())

        say(f"synthetic: KD step {s.teacher} -> resnet18...")
        out["kd_step"] = rate("kd", kd_step, s.batch, s)
        row(f"synthetic: KD step {s.teacher} -> resnet18 (teacher forward + student step)", out["kd_step"], "img/s")


# ------------------------------------------------------------------------------------------ the runner
def make_jpegs(root: Path, s: Setup) -> Path:
    """An ImageFolder of smooth, natural-looking JPEGs (ImageNet-like sizes and file sizes at 224 px)."""
    from concurrent.futures import ProcessPoolExecutor

    h, w = (max(s.size + 8, int(s.size * 1.6)), max(s.size + 16, int(s.size * 1.8)))
    jobs = [
        (root / split / f"n{c:08d}" / f"{i}.JPEG", c * 100_000 + i + (50_000 if split == "val" else 0), h, w)
        for split, n in (("train", s.per_class), ("val", max(2, s.per_class // 8)))
        for c in range(s.classes)
        for i in range(n)
    ]
    for p, *_ in jobs:
        p.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
        list(pool.map(_jpeg, jobs, chunksize=64))
    return root


def _jpeg(job) -> None:
    import numpy as np
    from PIL import Image

    path, seed, h, w = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(h, w, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def runner_cfg(root: Path, s: Setup, decode: str) -> dict:
    from lskd_bench.runners.grid import resolve_config

    role = {"epochs": 1, "batch_size": s.batch, "lr": 0.01, "warmup_epochs": 0}
    return resolve_config("imagenet", {}, {
        "data": {"root": str(root), "image_size": s.size, "decode": decode},
        "grid": {"alphas": [0.1], "temperatures": [1.0, 2.0, 3.0, 64.0], "seeds": [0]},
        "teacher": {**role, "arch": s.teacher}, "student": {**role, "arch": "resnet18"},
        "num_workers": s.workers, "eval_batch_size": s.batch,
        "device": str(s.device), "channels_last": s.cuda, "analysis": {"export": False},
    })  # fmt: skip


def timed_group(task, cells, cfg, data, out: Path, s: Setup, teacher=None) -> tuple[float, dict]:
    """Images/s of the step loop of one epoch, from step ``measure_from`` on (the loader's read-ahead used
    up), and the profile's shares."""
    from lskd_bench.runners.train import train_group

    stamps: list[float] = []
    prof: dict[str, float] = {}
    res = train_group(
        task,
        cells,
        cfg,
        data,
        [out / c.name for c in cells],
        teacher=teacher,
        progress=False,
        on_step=lambda e, i: stamps.append(time.perf_counter()),
        profile=prof,
    )
    for r in res:
        if r.error:
            raise RuntimeError(r.error)
    k = min(s.measure_from, len(stamps) - 2)
    ips = (len(stamps) - 1 - k) * s.batch / (stamps[-1] - stamps[k])
    return ips, prof


def runner_rows(s: Setup, bounds: dict[str, float], work: Path) -> dict[str, float]:
    """The data pipeline alone and the fused group, with cpu and with gpu decoding, then teacher training (gpu
    decoding); a piece that fails is a failed row and the others still run."""
    import torch

    from lskd_bench.models import build_image_model
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.tasks import get_task
    from lskd_bench.tasks.base import iterate_batches

    n = s.classes * s.per_class
    say(f"runner: writing {n} training JPEGs ({s.classes} classes)...")
    root = make_jpegs(work / "inet", s)
    task = get_task("imagenet")
    out: dict[str, float] = {}

    def pipeline(decode: str, data) -> None:
        say(f"runner: data pipeline alone, decode={decode} ({s.workers} workers)...")
        t0, seen = None, 0
        for i, (x, _) in enumerate(iterate_batches(data.train, s.batch, shuffle=True, num_workers=s.workers)):
            x = x.to(s.device, non_blocking=True)
            if i == s.measure_from:
                sync(s.device)
                t0 = time.perf_counter()
            elif i > s.measure_from:
                seen += len(x)
        sync(s.device)
        pipe = seen / (time.perf_counter() - t0) if t0 and seen else None
        row(
            f"data pipeline alone, {s.size}px, decode={decode}",
            pipe,
            "img/s",
            bounds.get("group5"),
            note="vs the fused group's bound: the loader must outrun it",
        )

    def fused(decode: str, cfg, data, cells) -> None:
        students = [c for c in cells if c.role != "teacher"]
        fmt = torch.channels_last if s.cuda else torch.contiguous_format
        tmodel = build_image_model(s.teacher, len(data.class_names)).to(s.device).to(memory_format=fmt).eval()
        say(f"runner: fused {s.teacher} -> resnet18 group of {len(students)}, decode={decode}...")
        ips, prof = timed_group(task, students, cfg, data, work / f"fused_{decode}", s, teacher=tmodel)
        tot = sum(prof.values()) or 1.0
        out[f"fused_{decode}"] = ips
        row(
            f"runner: fused {s.teacher} -> resnet18 x{len(students)}, {s.size}px JPEGs, decode={decode}",
            ips,
            "img/s",
            bounds.get("group5"),
            note=f"step loop: data {prof.get('data', 0) / tot:.0%}, teacher {prof.get('teacher', 0) / tot:.0%}, "
            f"students {prof.get('students', 0) / tot:.0%}",
        )

    def teacher_training(cfg, data, cells) -> None:
        teacher = next(c for c in cells if c.role == "teacher")
        say(f"runner: {s.teacher} teacher training, decode=gpu...")
        ips, _ = timed_group(task, [teacher], cfg, data, work / "teacher", s)
        out["teacher_runner"] = ips
        row(
            f"runner: {s.teacher} teacher training, {s.size}px JPEGs, decode=gpu",
            ips,
            "img/s",
            bounds.get("teacher_step"),
        )

    for decode in ("cpu", "gpu"):
        if decode == "gpu" and not nvjpeg_probe(root, s):
            continue
        try:
            cfg = runner_cfg(root, s, decode)
            data = task.load_data(cfg)
            cells = plan_cells(cfg)
        except Exception as exc:
            failed(f"runner, decode={decode}", "img/s", exc)
            continue
        pieces = [
            (f"data pipeline alone, decode={decode}", partial(pipeline, decode, data)),
            (f"runner: fused group, decode={decode}", partial(fused, decode, cfg, data, cells)),
        ]
        if decode == "gpu":
            pieces.append(("runner: teacher training, decode=gpu", partial(teacher_training, cfg, data, cells)))
        for name, piece in pieces:
            try:
                piece()
            except Exception as exc:
                failed(name, "img/s", exc)
            if s.cuda:
                torch.cuda.empty_cache()
    return out


def nvjpeg_probe(root: Path, s: Setup) -> bool:
    """One batched ``decode_jpeg`` of 8 of the JPEGs on the check's device against the CPU decoder, as a row. False
    (the decode=gpu rows are skipped) if it fails: every image would then go through PIL in the one finishing
    thread, minutes of a call that has no minutes to spare."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    name = f"decode probe: decode_jpeg of 8 JPEGs on {s.device.type} ({'nvJPEG' if s.cuda else 'libjpeg'})"
    try:
        files = sorted((root / "train").rglob("*.JPEG"))[:8]
        data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
        on_dev = decode_jpeg(data, mode=ImageReadMode.RGB, device=s.device)
        sync(s.device)
        ref = decode_jpeg(data, mode=ImageReadMode.RGB)
        diff = max(float((a.cpu().float() - b.float()).abs().mean()) for a, b in zip(on_dev, ref))
    except Exception as exc:
        failed(name + " (the decode=gpu rows are skipped)", "-", exc)
        return False
    row(name, None, "-", note=f"works; largest mean absolute difference from the CPU decoder {diff:.2f} grey levels")
    return True


def digits_rows(s: Setup, work: Path, skip: set[str]) -> None:
    from lskd_bench.runners.grid import resolve_config, run_grid

    if "digits" not in skip:
        over: dict = {"device": str(s.device), "grid": {"seeds": [0]}}  # one of the default grid's 3 seeds
        if s.small:
            over.update(
                {
                    "grid": {"alphas": [0.1], "temperatures": [4.0], "seeds": [0]},
                    "teacher": {"epochs": 1},
                    "student": {"epochs": 1},
                }
            )
        say("digits: the default grid, seed 0" + (" (cut down: --small)" if s.small else "") + "...")
        t0 = time.perf_counter()
        try:
            summary = run_grid(resolve_config("digits", {}, over), work / "digits", progress=False)
        except Exception as exc:
            failed("digits default grid, seed 0", "s", exc)
        else:
            bad = "; ".join(f"{c.name}: {why}" for c, why in summary.failed)
            row(
                f"digits default grid, seed 0 ({len(summary.trained)} cells)",
                time.perf_counter() - t0,
                "s",
                higher_is_better=False,
                note=f"{len(summary.failed)} FAILED: {bad}" if bad else "",
            )
    if "ddp" not in skip:
        walls = {}
        for executor in ("local", "torchrun"):
            say(f"digits: one group through the {executor} executor...")
            cmd = [
                sys.executable,
                "-m",
                "lskd_bench",
                "run",
                "--task",
                "digits",
                "--out",
                str(work / f"ddp_{executor}"),
                "--executor",
                executor,
                "--alphas",
                "0.1",
                "--temperatures",
                "4",
                "--set",
                "grid.seeds=[0]",
                "--epochs",
                "1" if s.small else "5",
                "--device",
                str(s.device),
                "--no-progress",
            ]
            if executor == "torchrun":
                cmd += ["--nproc-per-node", "1"]
            t0 = time.perf_counter()
            try:  # a hung launcher must not take the rest of the one GPU call with it
                p = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=120 if s.small else 240,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
            except subprocess.TimeoutExpired as exc:
                failed(f"digits via {executor}", "s", exc)
                return
            walls[executor] = time.perf_counter() - t0
            if p.returncode != 0:
                say(
                    f"  ! digits via {executor} failed (rc {p.returncode}):\n"
                    + "\n".join(p.stderr.strip().splitlines()[-20:])
                )
                row(
                    f"digits via {executor}",
                    None,
                    "s",
                    note=f"FAILED rc {p.returncode}: {p.stderr.strip().splitlines()[-1:]}",
                )
                return
        row(
            "digits grid (3 cells) via torchrun DDP, 1 process",
            walls["torchrun"],
            "s",
            walls["local"],
            note="bound: the same run with the local executor",
            higher_is_better=False,
        )


# ------------------------------------------------------------------------------------------ translation
WAIT_UNTIL = 420.0  # --wait-fairseq waits at most until this many seconds after the start (the call has 600)


def nmt_rows(s: Setup, wait_s: float) -> dict[str, float]:
    """Teacher step, KD step and beam decoding (target tokens/s) on a synthetic batch, then the runner's rows of
    bench_nmt.gpu_rows() against them."""
    import importlib
    import importlib.util

    # not past WAIT_UNTIL seconds into the check either: a build that failed would otherwise hold the one device
    # call (600 s) for the whole wait, and a build still running by then leaves no time for these rows
    deadline = min(time.perf_counter() + wait_s, T0 + WAIT_UNTIL)
    while (
        importlib.util.find_spec("fairseq") is None
        or subprocess.run([sys.executable, "-c", "import fairseq"], capture_output=True).returncode != 0
    ):
        if time.perf_counter() >= deadline:
            row(
                "translation rows",
                None,
                "tok/s",
                note=f"skipped: fairseq is not importable "
                f"(waited until {time.perf_counter() - T0:.0f} s into the check)",
            )
            return {}
        say("translation: waiting for fairseq (being built)...")
        time.sleep(10)
        importlib.invalidate_caches()
    try:
        import numpy as np
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        bench = importlib.import_module("bench_nmt")
        batch_fn, logits_of = bench.batch, bench.logits_of
        from lskd_bench.methods import kd_loss, ls_cross_entropy
        from lskd_bench.tasks.base import autocast
        from lskd_bench.tasks.nmt import PAD
        from lskd_bench.tasks.nmt import fairseq_adapter as fa
    except Exception as exc:
        row("translation rows", None, "tok/s", note=f"skipped: {type(exc).__name__}: {exc}")
        return {}
    out: dict[str, float] = {}
    try:
        dev = s.device
        tarch, sarch = (
            ("transformer_tiny", "transformer_micro")
            if s.small
            else ("transformer_iwslt_de_en", "transformer_iwslt_de_en_small")
        )
        vocab, max_tokens, mean_len = (1000, 256, 8) if s.small else (10000, 4096, 24)
        d = fa.make_dictionary(["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)])
        hp = {
            "dropout": 0.3,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "share_decoder_input_output_embed": True,
            "share_all_embeddings": False,
            "max_positions": 1024,
        }
        b = batch_fn(np.random.default_rng(0), vocab, max_tokens, mean_len, dev)
        tokens = int(b["target"].ne(PAD).sum())
        teacher, student = fa.build_transformer(tarch, d, hp).to(dev), fa.build_transformer(sarch, d, hp).to(dev)
        t_opt = torch.optim.Adam(teacher.parameters(), lr=1e-4, betas=(0.9, 0.98))
        s_opt = torch.optim.Adam(student.parameters(), lr=1e-4, betas=(0.9, 0.98))

        def teacher_step():
            teacher.train()
            with autocast(dev, s.cfg):
                z, y = logits_of(teacher, b)
            loss = ls_cross_entropy(z.float(), y, 0.1)
            t_opt.zero_grad(set_to_none=True)
            loss.backward()
            t_opt.step()

        def kd_step():
            teacher.eval()
            with torch.inference_mode(), autocast(dev, s.cfg):
                t, _ = logits_of(teacher, b)
            t = t.float().clone()
            student.train()
            with autocast(dev, s.cfg):
                z, y = logits_of(student, b)
            loss = kd_loss(z.float(), t, y, T=1.0, lam=1.0)
            s_opt.zero_grad(set_to_none=True)
            loss.backward()
            s_opt.step()

        say(f"translation: {tarch} teacher step ({tokens} target tokens a batch)...")
        out["nmt_teacher"] = rate("nmt teacher", teacher_step, tokens, s)
        row(f"translation: {tarch} teacher step (synthetic batch)", out["nmt_teacher"], "tok/s")
        say(f"translation: KD step {tarch} -> {sarch}...")
        out["nmt_kd"] = rate("nmt kd", kd_step, tokens, s)
        row(f"translation: KD step {tarch} -> {sarch} (synthetic batch)", out["nmt_kd"], "tok/s")
        teacher.eval()
        n_sent = min(4 if s.small else 256, b["target"].shape[0])
        small = {**b, "net_input": {k: v[:n_sent] for k, v in b["net_input"].items()}, "id": b["id"][:n_sent]}
        gen = fa.generator(teacher, d, 5, 1.0, 0.0, mean_len * 2)
        counted = {"n": 0}

        def decode():
            with torch.inference_mode(), autocast(dev, s.cfg):
                hyps = fa.generate(gen, small)
            counted["n"] = sum(len(h) + 1 for h in hyps)

        say(f"translation: beam 5 decoding, {n_sent} sentences...")
        decode()
        t0 = time.perf_counter()
        for _ in range(2):
            decode()
        sync(dev)
        row(
            f"translation: beam 5 decoding ({tarch}, {n_sent} random-weight sentences)",
            2 * counted["n"] / (time.perf_counter() - t0),
            "tok/s",
            note="random weights: hypotheses run to max length",
        )
    except Exception as exc:
        failed("translation: synthetic steps", "tok/s", exc)
    # the runner's own loop (train_group) and task.translate, bench_nmt.gpu_rows: the synthetic steps above are
    # the bounds of the loop's teacher and KD steps; the goals (bench_nmt.BOUNDS) are in the notes
    bounds = {"teacher step": out.get("nmt_teacher"), "KD student step": out.get("nmt_kd")}
    for name, measure, goal, unit in bench.gpu_rows(dev.type, small=s.small):
        say(f"translation: {name}...")
        try:
            achieved = measure()
        except (Exception, SystemExit) as exc:
            failed(f"translation: {name}", unit, exc)  # raises SystemExit when fairseq-train or -preprocess fails)
            continue
        bound = next((v for k, v in bounds.items() if k in name), None)
        note = "through the runner" + (f"; goal {goal:,.3g} {unit}" if goal else "")
        row(f"translation: {name}", achieved, unit, bound, note)
        if "fused group" in name:
            out["nmt_fused5"] = achieved
        elif "beam-5" in name:
            out["nmt_beam"] = achieved
    return out


# ------------------------------------------------------------------------------------------ paper estimate
IMAGENET_TRAIN, CUB_TRAIN = 1_281_167, 5_994
IMAGENET_VAL, CUB_TEST = 50_000, 5_794  # what each evaluation classifies
IWSLT_TGT_TOKENS = 4.0e6  # target sub-word tokens per epoch of IWSLT14 (~160k pairs); assumed, not measured
IWSLT_EVAL_TGT_TOKENS = 3.4e5  # decoded per evaluation: valid (7,283) + test (6,750) sentences x ~24; assumed
STUDENT_FORWARD_SHARE = 1 / 3  # an evaluation forward of a student costs ~1/3 of its training step (no backward)


def evaluations(epochs: int, every: int) -> int:
    """How often the runner evaluates a cell: every ``every`` epochs and after the last (runners/train.py)."""
    return len(set(range(every, epochs + 1, every)) | {epochs}) if epochs else 0


PAPER_TABLES = [  # (table, task, student arch)
    ("ImageNet resnet50 -> resnet18", "imagenet", "resnet18"),
    ("ImageNet resnet50 -> resnet50", "imagenet", "resnet50"),
    ("ImageNet resnet50 -> efficientnet_b0", "imagenet_compact", "efficientnet_b0"),
    ("ImageNet resnet50 -> mobilenetv2_100", "imagenet_compact", "mobilenetv2_100"),
    ("CUB resnet50 -> resnet18", "cub200", "resnet18"),
    ("CUB resnet50 -> resnet50", "cub200", "resnet50"),
    ("CUB resnet50 -> efficientnet_b0", "cub200_compact", "efficientnet_b0"),
    ("CUB resnet50 -> mobilenetv2_100", "cub200_compact", "mobilenetv2_100"),
    ("IWSLT En->De", "iwslt_ende", None),
    ("IWSLT En->Ru", "iwslt_enru", None),
]


def recipe_cells(task_name: str, student: str | None):
    from lskd_bench.config import resolve_layers
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.tasks import get_task

    t = get_task(task_name)
    over: dict = {"task": task_name, "data": {"root": "/nonexistent"}}
    if student:
        over["student"] = {"arch": student}
    cfg = resolve_layers(t, [(t.recipe_source(), t.default_config()), ("gpu_check", over)]).cfg
    return cfg, plan_cells(cfg)


def estimate(s: Setup, m: dict[str, float], gpus: int = 8) -> str:
    """Hours of each paper table on one node of ``gpus`` GPUs: GPU-seconds of every cell from the measured
    per-image (per-token) costs, fused students sharing one teacher forward, the runner's measured efficiency
    (achieved / bound) applied, plus evaluation, divided over the GPUs (ideal packing / DDP scaling)."""
    from lskd_bench.runners.grid import fuse_units

    lines = [
        f"Estimated wall time of the paper's tables on one {gpus}-GPU node (this GPU's figures; ideal scaling over "
        f"{gpus} GPUs; training and evaluation)",
        "",
        "| table | teachers | students | epochs T/S | GPU-hours | of which evaluation | node hours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    eff_t = min(1.0, m.get("teacher_runner", 0) / m["teacher_step"]) if m.get("teacher_runner") else 1.0
    eff_s = min(1.0, m.get("fused_gpu", 0) / m["group5"]) if m.get("fused_gpu") else 1.0
    total = 0.0
    for name, task_name, student in PAPER_TABLES:
        try:
            cfg, cells = recipe_cells(task_name, student)
        except Exception as exc:
            lines.append(f"| {name} | - | - | - | - | - | not planned: {type(exc).__name__} |")
            continue
        teachers = [c for c in cells if c.role == "teacher"]
        students = [c for c in cells if c.role != "teacher"]
        et, es = int(cfg["teacher"]["epochs"]), int(cfg["student"]["epochs"])
        evals = (
            len(teachers) * evaluations(et, int(cfg["teacher"]["eval_every"])),
            len(students) * evaluations(es, int(cfg["student"]["eval_every"])),
        )
        if student is None:  # translation: per target token
            if not m.get("nmt_teacher"):
                lines.append(
                    f"| {name} | {len(teachers)} | {len(students)} | {et}/{es} | - | - | no translation figures |"
                )
                continue
            t_tok = 1.0 / m["nmt_teacher"]
            # per student token: in a fused group of 5 when measured (the runner fuses a teacher's students), else alone
            s_tok = 1.0 / m["nmt_fused5"] if m.get("nmt_fused5") else 1.0 / m["nmt_kd"]
            eval_s = sum(evals) * IWSLT_EVAL_TGT_TOKENS / m["nmt_beam"] if m.get("nmt_beam") else 0.0
            gpu_s = IWSLT_TGT_TOKENS * (len(teachers) * et * t_tok + len(students) * es * s_tok) + eval_s
        else:
            key = f"student_{student}"
            if key not in m:
                lines.append(
                    f"| {name} | {len(teachers)} | {len(students)} | {et}/{es} | - | - | {student} not measured |"
                )
                continue
            imagenet = task_name.startswith("imagenet")
            n, n_eval = (IMAGENET_TRAIN, IMAGENET_VAL) if imagenet else (CUB_TRAIN, CUB_TEST)
            px = (int(cfg["data"]["image_size"]) / s.size) ** 2  # cost scales with pixels
            t_img = px / m["teacher_step"] / eff_t
            fwd, st = px / m["teacher_fwd"], px / m[key]
            # the runner's own fusion (a teacher's students, the baseline in its seed's first group): one teacher
            # forward per group that has a teacher, then each member's step
            groups = fuse_units(students, cfg, fuse=bool(cfg["fuse"]), max_fused=int(cfg["max_fused"]))
            s_img_total = sum((fwd * any(c.teacher for c in g) + len(g) * st) / eff_s for g in groups)
            eval_s = n_eval * (evals[0] * fwd + evals[1] * st * STUDENT_FORWARD_SHARE)
            gpu_s = n * (len(teachers) * et * t_img + es * s_img_total) + eval_s
        total += gpu_s
        lines.append(
            f"| {name} | {len(teachers)} | {len(students)} | {et}/{es} | {gpu_s / 3600:,.1f} | "
            f"{eval_s / 3600:,.1f} | {gpu_s / 3600 / gpus:,.1f} |"
        )
    lines.append(f"| all tables | | | | {total / 3600:,.1f} | | {total / 3600 / gpus:,.1f} |")
    lines.append("")
    lines.append(
        f"Assumptions: runner efficiency teacher {eff_t:.0%}, fused students {eff_s:.0%} (measured above, "
        f"1.0 when not measured); images {IMAGENET_TRAIN:,} (ImageNet) / {CUB_TRAIN:,} (CUB) a epoch, cost scaled by "
        f"pixels from {s.size}px; compact students' figures are their synthetic steps; evaluation: every "
        f"eval_every epochs and the last, {IMAGENET_VAL:,} / {CUB_TEST:,} images (a student's forward taken as "
        f"{STUDENT_FORWARD_SHARE:.2g} of its step), IWSLT {IWSLT_EVAL_TGT_TOKENS:,.0f} target tokens decoded "
        f"(valid + test) at the beam-5 row's rate; IWSLT {IWSLT_TGT_TOKENS:,.0f} target tokens an epoch (assumed), "
        f"students {'fused by 5' if m.get('nmt_fused5') else 'unfused'}; the baseline shares a teacher's group; "
        "each table counts its own two teachers (tables of one task share them: an overcount)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.md", help="where the table goes (markdown)")
    ap.add_argument("--small", action="store_true", help="tiny sizes on the CPU: the same code in seconds")
    ap.add_argument("--skip", default="", help="comma-separated: synthetic, runner, digits, ddp, nmt")
    ap.add_argument(
        "--wait-fairseq",
        type=float,
        default=0.0,
        help="seconds to wait for fairseq to become importable (not past 7 minutes into the check)",
    )
    args = ap.parse_args(argv)
    print("gpu_check: starting (imports, then one line per step)", flush=True)
    s = Setup(args)
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    say(s.describe())
    measured: dict[str, float] = {}
    sections: list[tuple[str, str, Callable[[Path], Any]]] = [
        ("synthetic", "synthetic steps", lambda work: synthetic(s, measured)),
        ("runner", "runner rows", lambda work: measured.update(runner_rows(s, measured, work))),
        ("digits", "digits rows", lambda work: digits_rows(s, work, skip)),
        ("nmt", "translation rows", lambda work: measured.update(nmt_rows(s, args.wait_fairseq))),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for key, name, run in sections:
            if key in skip and key != "digits":  # digits_rows reads skip itself (digits, ddp)
                continue
            try:
                run(Path(tmp))
            except Exception as exc:
                failed(name, "-", exc)
            write(args.out, s, measured)  # the rows so far: a call cut off at its time limit keeps them
    text = write(args.out, s, measured)
    print("\n" + text, flush=True)
    say(f"written {args.out}")
    return 0


def write(out: str, s: Setup, measured: dict[str, float]) -> str:
    """The table and the paper estimate from the figures so far to ``out``, the rows to ``out`` .json; the text."""
    text = f"# gpu_check ({s.describe()})\n\n{table()}\n"
    if measured:
        try:
            text += "\n" + estimate(s, measured) + "\n"
        except Exception as exc:
            text += f"\nno estimate: {type(exc).__name__}: {exc}\n"
    Path(out).write_text(text)
    Path(out).with_suffix(".json").write_text(
        json.dumps({"setup": s.describe(), "rows": ROWS, "measured": measured}, indent=1)
    )
    return text


if __name__ == "__main__":
    sys.exit(main())
