"""Translation throughput, measured through lskd-bench's own training loop (``runners.train.train_group``) and
beam search (``TranslationTask.translate``) on a generated corpus shaped like IWSLT (sentence lengths drawn
around --mean-len sub-words, uniform random tokens).

    python benchmarks/bench_nmt.py                        # CPU: the demo's tiny models
    python benchmarks/bench_nmt.py --recipe --device cuda # the IWSLT recipe: 41.8 M -> 8.8 M, vocab 10k, 4096 tokens
    python benchmarks/bench_nmt.py --vs-fairseq           # the same teacher training with fairseq-train, side by side

Figures (target tokens/s; a fused group counts each member's tokens):

- teacher training: label-smoothed CE (alpha 0.1), the recipe's Adam and inverse_sqrt schedule;
- KD student training: one word-level KD student, the teacher's forward in inference mode each batch;
- fused group of 5 KD students: one batch and one teacher forward shared by 5 members (``train_group``);
- beam decoding: ``task.translate`` over a held-out split, batched by ``generation.max_tokens``.

``--vs-fairseq`` writes the corpus as text, binarises it with ``fairseq-preprocess`` (the same dictionary,
so the same token ids), trains the same architecture with the same max_tokens, optimiser, schedule and
dropout for the same number of updates with ``fairseq-train`` and with lskd-bench's loop, alternating the
two ``--rounds`` times (this machine is shared: side by side, never an absolute time), and prints target
tokens/s for both (updates after the first ``--skip`` excluded: start-up), then as its last line
``ratio lskd-bench / fairseq-train: R``. Both time an update from the end of the previous one (data
loading, step and logging included): fairseq-train from its own per-update meters (``wpb / wps`` of
``--log-interval 1``), lskd-bench from the loop's ``on_step`` callback. The figures are medians over the
rounds; R is the median of the rounds' paired ratios.

The functions ``teacher_step``, ``kd_step``, ``fused_students``, ``beam_decoding`` and ``vs_fairseq`` return
their figure, and ``BOUNDS`` holds the issue's goals, for ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lskd_bench.tasks.nmt import EOS, PAD, IWSLTEnDe, Split
from lskd_bench.tasks.nmt import fairseq_adapter as fa

# the goals (issue 16) for the GPU check; figures in target tokens/s at the IWSLT recipe
BOUNDS = {
    "teacher_step": 100_000,  # transformer_iwslt_de_en, max_tokens 4096, one H100/H200, bf16
    "beam_decoding": 20_000,  # beam 5
    "vs_fairseq": 1.0,  # lskd-bench / fairseq-train target tokens/s, same device, same max_tokens
}

RECIPE = {
    "teacher": "transformer_iwslt_de_en",
    "student": "transformer_iwslt_de_en_small",
    "vocab": 10000,
    "max_tokens": 4096,
}
DEMO = {"teacher": "transformer_tiny", "student": "transformer_micro", "vocab": 1000, "max_tokens": 1024}


# ------------------------------------------------------------------------------------------ a synthetic batch
def batch(rng, vocab: int, max_tokens: int, mean_len: int, device) -> dict:
    """One collated batch of random sentences within ``max_tokens`` (sentences x longest side), on ``device``."""
    samples, i, longest = [], 0, 0
    while True:
        ls, lt = (max(2, int(rng.normal(mean_len, mean_len / 4))) for _ in range(2))
        longest = max(longest, ls, lt)
        if (len(samples) + 1) * longest > max_tokens:
            break
        samples.append(
            {
                "id": i,
                "source": torch.from_numpy(np.append(rng.integers(4, vocab, ls - 1), EOS)),
                "target": torch.from_numpy(np.append(rng.integers(4, vocab, lt - 1), EOS)),
            }
        )
        i += 1
    b = fa.collate(samples, PAD, EOS)
    b["target_index"] = b["target"].reshape(-1).ne(PAD).nonzero().squeeze(1)
    return IWSLTEnDe().to_device(b, torch.device(device), {})


def logits_of(model, b):
    """The training forward of the translation task: logits and targets of the non-pad positions."""
    return IWSLTEnDe().forward(model, b)


# ------------------------------------------------------------------------------------------ the corpus
@dataclass
class Corpus:
    """A generated parallel corpus: token ids (with eos) of words ``w0..w{V-5}`` (ids 4..V-1)."""

    vocab: int
    train: Split
    test: Split


def _words(ids) -> str:
    return " ".join(f"w{int(i) - 4}" for i in ids)


def make_corpus(vocab: int, n_train: int, n_test: int = 64, mean_len: int = 24, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        src, tgt = [], []
        for _ in range(n):
            ls, lt = (max(2, int(rng.normal(mean_len, mean_len / 4))) for _ in range(2))
            src.append(np.append(rng.integers(4, vocab, ls - 1), EOS).astype(np.int32))
            tgt.append(np.append(rng.integers(4, vocab, lt - 1), EOS).astype(np.int32))
        return Split(src, tgt, [_words(s[:-1]) for s in src], [_words(t[:-1]) for t in tgt])

    return Corpus(vocab, split(n_train), split(n_test))


class _Words:
    """Stands in for the SentencePiece model: ids <-> ``w<i>`` words."""

    def decode(self, ids) -> str:
        return _words(i for i in ids if int(i) != EOS)


class _Counting(IWSLTEnDe):
    """The IWSLT task, recording the target tokens of every training forward (bench only)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def forward(self, model, batch):
        out = super().forward(model, batch)
        if model.training:
            self.tokens.append(int(out[1].shape[0]))
        return out


def config(
    corpus: Corpus,
    root: Path,
    *,
    teacher: str,
    student: str,
    max_tokens: int,
    updates: int,
    device: str,
    dropout: float = 0.3,
    alphas=(0.1,),
    temperatures=(1.0,),
    **train,
) -> dict[str, Any]:
    """The IWSLT recipe with the given models and batch, stopping after ``updates`` updates."""
    from lskd_bench.runners.grid import resolve_config

    for split in ("train", "test"):
        for side in ("en", "de"):
            (root / f"{split}.{side}").touch()  # the task checks that a corpus is there; the bench supplies it
    compile_ = bool(train.pop("compile", False))  # a run setting, not a role's
    role = {
        "max_tokens": max_tokens,
        "max_updates": updates,
        "epochs": 10_000,
        "eval_every": 10_000,
        "checkpoint_every": None,
        "dropout": dropout,
        **train,
    }
    return resolve_config(
        "iwslt_ende",
        {},
        {
            "data": {"root": str(root), "vocab_size": corpus.vocab},
            "device": device,
            "compile": compile_,
            "teacher": {**role, "arch": teacher},
            "student": {**role, "arch": student},
            "grid": {"alphas": list(alphas), "temperatures": list(temperatures)},
            "generation": {"limit": 1, "beam": 1, "max_len_b": 2},  # the loop's final evaluation: negligible
        },
    )


def task_data(corpus: Corpus):
    from lskd_bench.tasks import TaskData

    d = fa.make_dictionary(["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(corpus.vocab - 4)])
    return TaskData(
        train=corpus.train,
        val=corpus.test,
        num_classes=len(d),
        class_names=[],
        extras={"valid": corpus.test, "dictionary": d, "subwords": _Words(), "report": []},
    )


def _rate(tokens: list[int], seconds: list[float], skip: int) -> float:
    return sum(tokens[skip:]) / max(sum(seconds[skip:]), 1e-9)


def loop_run(
    corpus: Corpus,
    *,
    role: str,
    teacher: str,
    student: str,
    max_tokens: int,
    updates: int,
    device: str,
    members: int = 1,
    skip: int = 2,
    dropout: float = 0.3,
    **train,
) -> tuple[list[int], list[float]]:
    """Train through ``train_group`` for ``updates`` updates; (target tokens, seconds) per update, each update
    timed from the end of the previous one. ``role`` teacher: ``members`` teachers (alphas 0.1, 0.2...);
    student: ``members`` word-level KD students (T = 1, 2...) of a randomly initialised teacher."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.train import resolve_device, train_group

    with tempfile.TemporaryDirectory(prefix="bench_nmt-") as tmp:
        alphas = [round(0.1 * (i + 1), 2) for i in range(members)] if role == "teacher" else [0.1]
        temps = [float(i + 1) for i in range(members)]
        cfg = config(
            corpus,
            Path(tmp),
            teacher=teacher,
            student=student,
            max_tokens=max_tokens,
            updates=updates,
            device=device,
            dropout=dropout,
            alphas=alphas,
            temperatures=temps,
            **train,
        )
        cfg["methods"], cfg["baseline"] = ["kd"], False
        task, data = _Counting(), task_data(corpus)
        cells = [c for c in plan_cells(cfg) if (c.role == "teacher") == (role == "teacher")][:members]
        t_model = None
        if role != "teacher":
            torch.manual_seed(0)
            dev = resolve_device(cfg)
            t_model = task.build_model(teacher, data, cfg, cfg["teacher"]).to(dev).eval()
        marks = [time.perf_counter()]
        train_group(
            task,
            cells,
            cfg,
            data,
            [Path(tmp) / c.name for c in cells],
            teacher=t_model,
            progress=False,
            on_step=lambda e, i: marks.append(_synced(cfg)),
        )
    per = len(cells)
    tokens = [sum(task.tokens[i : i + per]) for i in range(0, len(task.tokens), per)]
    seconds = list(np.diff(marks))
    return tokens[: len(seconds)], seconds


def _synced(cfg) -> float:
    if torch.cuda.is_available() and cfg.get("device") != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter()


# ------------------------------------------------------------------------------------------ figures
def _corpus_for(vocab: int, max_tokens: int, updates: int, mean_len: int) -> Corpus:
    per_batch = max(1, int(max_tokens / (mean_len * 1.4)))  # sentences a batch, with room for the longest
    return make_corpus(vocab, n_train=per_batch * (updates + 4), mean_len=mean_len)


def teacher_step(
    device: str = "cpu",
    *,
    teacher: str = DEMO["teacher"],
    vocab: int = DEMO["vocab"],
    max_tokens: int = DEMO["max_tokens"],
    updates: int = 20,
    skip: int = 3,
    mean_len: int = 24,
    **train,
) -> float:
    """Teacher training (label-smoothed CE) through the loop: target tokens/s."""
    c = _corpus_for(vocab, max_tokens, updates, mean_len)
    tok, sec = loop_run(
        c,
        role="teacher",
        teacher=teacher,
        student=teacher,
        max_tokens=max_tokens,
        updates=updates,
        device=device,
        **train,
    )
    return _rate(tok, sec, skip)


def kd_step(
    device: str = "cpu",
    *,
    teacher: str = DEMO["teacher"],
    student: str = DEMO["student"],
    vocab: int = DEMO["vocab"],
    max_tokens: int = DEMO["max_tokens"],
    updates: int = 20,
    skip: int = 3,
    mean_len: int = 24,
    **train,
) -> float:
    """One word-level KD student (teacher forward + student step) through the loop: target tokens/s."""
    return fused_students(
        device,
        members=1,
        teacher=teacher,
        student=student,
        vocab=vocab,
        max_tokens=max_tokens,
        updates=updates,
        skip=skip,
        mean_len=mean_len,
        **train,
    )


def fused_students(
    device: str = "cpu",
    *,
    members: int = 5,
    teacher: str = DEMO["teacher"],
    student: str = DEMO["student"],
    vocab: int = DEMO["vocab"],
    max_tokens: int = DEMO["max_tokens"],
    updates: int = 20,
    skip: int = 3,
    mean_len: int = 24,
    **train,
) -> float:
    """A fused group of ``members`` KD students sharing each batch and one teacher forward: target tokens/s
    summed over the members (compare with ``members * kd_step``'s time)."""
    c = _corpus_for(vocab, max_tokens, updates, mean_len)
    tok, sec = loop_run(
        c,
        role="student",
        teacher=teacher,
        student=student,
        max_tokens=max_tokens,
        updates=updates,
        device=device,
        members=members,
        **train,
    )
    return _rate(tok, sec, skip)


def beam_decoding(
    device: str = "cpu",
    *,
    teacher: str = DEMO["teacher"],
    vocab: int = DEMO["vocab"],
    beam: int = 5,
    sentences: int = 64,
    mean_len: int = 24,
    gen_max_tokens: int | None = None,
    rounds: int = 2,
) -> float:
    """``task.translate`` with beam ``beam`` over ``sentences`` held-out sentences (random weights; the output
    length is capped at 1.2 x source + 10 as in the demo): generated target tokens/s (eos included)."""
    c = make_corpus(vocab, n_train=8, n_test=sentences, mean_len=mean_len)
    with tempfile.TemporaryDirectory(prefix="bench_nmt-") as tmp:
        cfg = config(
            c, Path(tmp), teacher=teacher, student=teacher, max_tokens=DEMO["max_tokens"], updates=1, device=device
        )
    cfg["generation"].update(beam=beam, max_len_a=1.2, max_len_b=10, limit=None)
    if gen_max_tokens is not None:
        cfg["generation"]["max_tokens"] = gen_max_tokens
    task, data = _Counting(), task_data(c)
    from lskd_bench.runners.train import resolve_device

    dev = resolve_device(cfg)
    torch.manual_seed(0)
    model = task.build_model(teacher, data, cfg, cfg["teacher"]).to(dev).eval()
    hyps = task.translate(model, data, data.val, cfg, dev)  # warm-up
    best = 0.0
    for _ in range(rounds):
        t0 = _synced(cfg)
        hyps = task.translate(model, data, data.val, cfg, dev)
        best = max(best, sum(len(h) + 1 for h in hyps) / (_synced(cfg) - t0))
    return best


# ------------------------------------------------------------------------------------------ fairseq-train
FAIRSEQ_BIN = Path(sys.executable).parent


def _fairseq_tool(name: str) -> list[str]:
    """The command that runs fairseq's console script ``name`` (fairseq-train...): the script next to this
    interpreter, else its module run by this interpreter (``python -m fairseq_cli.train``: fairseq installed with
    ``pip --target``, as on the GPU machine, puts its scripts in a bin/ that is on no PATH), else the one on PATH."""
    import importlib.util

    if (FAIRSEQ_BIN / name).is_file():
        return [str(FAIRSEQ_BIN / name)]
    module = "fairseq_cli." + name.removeprefix("fairseq-").replace("-", "_")
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # no fairseq_cli package at all
        found = False
    if found:
        return [sys.executable, "-m", module]
    on_path = shutil.which(name)
    if on_path:
        return [on_path]
    raise SystemExit(
        f"bench_nmt: {name} not found next to {sys.executable}, as {module} nor on PATH (pip install fairseq)"
    )


def write_text(corpus: Corpus, root: Path) -> None:
    """train/valid.{en,de} as words and dict.txt listing w0..w{V-5} in id order (fairseq-preprocess --srcdict)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, s in (("train", corpus.train), ("valid", corpus.test)):
        (root / f"{split}.en").write_text("\n".join(s.src_text) + "\n")
        (root / f"{split}.de").write_text("\n".join(s.tgt_text) + "\n")
    (root / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(corpus.vocab - 4)))


def fairseq_args(arch: str, hp: dict[str, Any], max_tokens: int, updates: int, device: str) -> list[str]:
    """fairseq-train flags for the lskd-bench recipe ``hp`` (a resolved teacher section) and ``arch``."""
    spec = fa.ARCHS[arch]
    out = ["--task", "translation", "-s", "en", "-t", "de", "--arch", spec.fairseq_arch]
    for k, v in spec.overrides.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    if hp["share_decoder_input_output_embed"]:
        out.append("--share-decoder-input-output-embed")
    out += [
        "--dropout",
        str(hp["dropout"]),
        "--attention-dropout",
        str(hp["attention_dropout"]),
        "--activation-dropout",
        str(hp["activation_dropout"]),
        "--optimizer",
        "adam",
        "--adam-betas",
        str(tuple(hp["betas"])),
        "--adam-eps",
        str(hp["adam_eps"]),
        "--lr",
        str(hp["lr"]),
        "--lr-scheduler",
        "inverse_sqrt",
        "--warmup-updates",
        str(hp["warmup_updates"]),
        "--warmup-init-lr",
        str(hp["warmup_init_lr"]),
        "--weight-decay",
        str(hp["weight_decay"]),
        "--clip-norm",
        str(hp["clip_norm"]),
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        "0.1",
        "--max-tokens",
        str(max_tokens),
        "--required-batch-size-multiple",
        "1",
        "--max-update",
        str(updates),
        "--seed",
        "0",
        "--no-save",
        "--disable-validation",
        "--no-progress-bar",
        "--log-format",
        "json",
        "--log-interval",
        "1",
    ]
    out += ["--cpu"] if device == "cpu" else ["--bf16"]
    return out


def fairseq_run(bin_dir: Path, args: list[str]) -> tuple[list[int], list[float]]:
    """Run fairseq-train; (target tokens, seconds) per update from its per-update json log (wpb / wps)."""
    threads = str(torch.get_num_threads())  # the same intra-op threads as this process
    proc = subprocess.run(
        [*_fairseq_tool("fairseq-train"), str(bin_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench_nmt: fairseq-train failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    tokens, seconds = [], []
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"\| train_inner \| (\{.*\})", line)
        if m:
            st = json.loads(m.group(1))
            wpb, wps = float(st["wpb"]), float(st["wps"])
            tokens.append(round(wpb))
            seconds.append(wpb / wps if wps > 0 else 0.0)  # the first update: no interval yet (skipped)
    if not tokens:
        raise SystemExit("bench_nmt: no per-update lines in fairseq-train's log")
    return tokens, seconds


def vs_fairseq(
    device: str = "cpu",
    *,
    arch: str = DEMO["teacher"],
    vocab: int = DEMO["vocab"],
    max_tokens: int = DEMO["max_tokens"],
    updates: int = 60,
    skip: int = 5,
    rounds: int = 2,
    mean_len: int = 24,
    dropout: float = 0.3,
    log=print,
    **train,
) -> tuple[float, float, float]:
    """Teacher training of ``arch`` with fairseq-train and with lskd-bench's loop, alternating ``rounds`` times;
    (lskd-bench tokens/s, fairseq-train tokens/s, ratio): the medians over the rounds, the ratio the median of
    each round's paired ratio (robust to a round that another process disturbed)."""
    corpus = _corpus_for(vocab, max_tokens, updates, mean_len)
    ours: list[float] = []
    theirs: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_nmt-fairseq-") as tmp:
        text, bin_dir = Path(tmp) / "text", Path(tmp) / "bin"
        write_text(corpus, text)
        pre = subprocess.run(
            [
                *_fairseq_tool("fairseq-preprocess"),
                "--source-lang",
                "en",
                "--target-lang",
                "de",
                "--trainpref",
                str(text / "train"),
                "--validpref",
                str(text / "valid"),
                "--destdir",
                str(bin_dir),
                "--srcdict",
                str(text / "dict.txt"),
                "--tgtdict",
                str(text / "dict.txt"),
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if pre.returncode != 0:
            raise SystemExit(f"bench_nmt: fairseq-preprocess failed:\n{pre.stderr[-3000:]}")
        cfg = config(
            corpus,
            Path(tmp),
            teacher=arch,
            student=arch,
            max_tokens=max_tokens,
            updates=updates,
            device=device,
            dropout=dropout,
            **train,
        )
        args = fairseq_args(arch, cfg["teacher"], max_tokens, updates, device)
        log(f"fairseq-train {' '.join(args)}")
        for r in range(rounds):  # the order alternates too, so that a drifting load favours neither
            run_ours = partial(
                loop_run,
                corpus,
                role="teacher",
                teacher=arch,
                student=arch,
                max_tokens=max_tokens,
                updates=updates,
                device=device,
                dropout=dropout,
                **train,
            )
            if r % 2 == 0:
                a, b = run_ours(), fairseq_run(bin_dir, args)
            else:
                b = fairseq_run(bin_dir, args)
                a = run_ours()
            ours.append(_rate(*a, skip))
            theirs.append(_rate(*b, skip))
            ratios.append(ours[-1] / theirs[-1])
            log(
                f"round {r + 1}/{rounds}: lskd-bench {_rate(*a, skip):9.0f}  "
                f"fairseq-train {_rate(*b, skip):9.0f} target tokens/s, ratio {ratios[-1]:.3f} "
                f"({len(a[0])} and {len(b[0])} updates, {sum(a[0])} and {sum(b[0])} target tokens)"
            )
    return statistics.median(ours), statistics.median(theirs), statistics.median(ratios)


# ------------------------------------------------------------------------------------------ GPU check rows
def gpu_rows(device: str = "cuda", small: bool = False) -> list[tuple[str, Callable[[], float], float | None, str]]:
    """(name, measure, lower bound or None, unit) of the translation rows of ``benchmarks/gpu_check.py``: the
    IWSLT recipe (41.8 M teacher, 8.8 M student, vocab 10k, max_tokens 4096) on one GPU, bf16. ``small``: the
    demo's models, max_tokens 256, a few updates, no fairseq-train (seconds on a CPU, for tests)."""
    if small:
        r = {
            "teacher": DEMO["teacher"],
            "vocab": DEMO["vocab"],
            "max_tokens": 256,
            "updates": 4,
            "skip": 1,
            "mean_len": 8,
        }
        rs = {**r, "student": DEMO["student"]}
        return [
            ("teacher step (demo models, small)", lambda: teacher_step(device, **r), None, "target tokens/s"),
            ("KD student step (small)", lambda: kd_step(device, **rs), None, "target tokens/s"),
            (
                "fused group of 5 KD students (small)",
                lambda: fused_students(device, members=5, **rs),
                None,
                "target tokens/s (all members)",
            ),
            (
                "beam-5 decoding (small)",
                lambda: beam_decoding(
                    device, teacher=r["teacher"], vocab=r["vocab"], sentences=8, mean_len=8, rounds=1
                ),
                None,
                "target tokens/s",
            ),
        ]
    r = {k: RECIPE[k] for k in ("teacher", "vocab", "max_tokens")}
    rs = {**r, "student": RECIPE["student"]}
    return [
        ("teacher step (IWSLT recipe)", lambda: teacher_step(device, **r), BOUNDS["teacher_step"], "target tokens/s"),
        ("KD student step (one student)", lambda: kd_step(device, **rs), None, "target tokens/s"),
        (
            "fused group of 5 KD students",
            lambda: fused_students(device, members=5, **rs),
            None,
            "target tokens/s (all members)",
        ),
        (
            "beam-5 decoding (256 sentences, max_tokens 8192)",
            lambda: beam_decoding(device, teacher=r["teacher"], vocab=r["vocab"], sentences=256, gen_max_tokens=8192),
            BOUNDS["beam_decoding"],
            "target tokens/s",
        ),
        (
            "lskd-bench / fairseq-train teacher (IWSLT recipe)",
            lambda: vs_fairseq(
                device,
                arch=r["teacher"],
                vocab=r["vocab"],
                max_tokens=r["max_tokens"],
                updates=40,
                skip=5,
                rounds=1,
                log=lambda s: None,
            )[2],
            BOUNDS["vs_fairseq"],
            "ratio",
        ),
        (
            "demo teacher (transformer_tiny) on the GPU / on the CPU",
            lambda: teacher_step(device, updates=30) / teacher_step("cpu", updates=30),
            None,
            "ratio (device auto keeps the demo on the CPU)",
        ),
    ]


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--recipe",
        action="store_true",
        help="the IWSLT recipe's models, vocab 10k, max_tokens 4096 "
        "(default on CUDA; the demo's tiny models, vocab 1k, max_tokens 1024 on the CPU)",
    )
    ap.add_argument("--teacher", choices=sorted(fa.ARCHS))
    ap.add_argument("--student", choices=sorted(fa.ARCHS))
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--mean-len", type=int, default=24, help="mean sentence length in sub-words (IWSLT14: ~24)")
    ap.add_argument("--updates", type=int, default=None, help="updates per measured run (default 20; --vs-fairseq 60)")
    ap.add_argument("--members", type=int, default=5, help="students in the fused group")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the models being trained (cfg compile)")
    ap.add_argument(
        "--pad-to-multiple",
        type=int,
        default=1,
        help="pad batch lengths to a multiple (teacher/student pad_to_multiple: shapes repeat, for --compile)",
    )
    ap.add_argument("--vs-fairseq", action="store_true", help="teacher training side by side with fairseq-train")
    ap.add_argument("--rounds", type=int, default=3, help="--vs-fairseq: alternations of the two trainers (medians)")
    ap.add_argument(
        "--iwslt-train-tokens",
        type=float,
        default=None,
        help="target tokens per epoch of the real corpus, to print the grid's estimated hours",
    )
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    base = RECIPE if (args.recipe or device == "cuda") else DEMO
    teacher, student = args.teacher or base["teacher"], args.student or base["student"]
    vocab, max_tokens = args.vocab or base["vocab"], args.max_tokens or base["max_tokens"]
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    train: dict[str, Any] = {"pad_to_multiple": args.pad_to_multiple} if args.pad_to_multiple > 1 else {}
    if args.compile:
        train["compile"] = True
    print(
        f"device: {name}; {teacher} -> {student}, vocab {vocab}, max_tokens {max_tokens}, mean length {args.mean_len}, "
        f"{'bf16 autocast' if device == 'cuda' else 'fp32'}",
        flush=True,
    )
    if args.vs_fairseq:
        updates = args.updates or 60
        mine, other, ratio = vs_fairseq(
            device,
            arch=teacher,
            vocab=vocab,
            max_tokens=max_tokens,
            updates=updates,
            rounds=args.rounds,
            mean_len=args.mean_len,
            log=lambda s: print(s, flush=True),
            **train,
        )
        print(
            f"teacher training ({teacher}), lskd-bench loop     {mine:12.0f} target tokens/s "
            f"(median of {args.rounds} rounds)"
        )
        print(
            f"teacher training ({teacher}), fairseq-train       {other:12.0f} target tokens/s "
            f"(median of {args.rounds} rounds)"
        )
        print(f"ratio lskd-bench / fairseq-train: {ratio:.3f}")  # the median of the rounds' paired ratios
        return
    updates = args.updates or 20
    common = {"vocab": vocab, "max_tokens": max_tokens, "updates": updates, "mean_len": args.mean_len, **train}

    def show(label: str, tps: float) -> float:
        print(f"{label:<52} {tps:12.0f} target tokens/s", flush=True)
        return tps

    t_tps = show(f"teacher training ({teacher})", teacher_step(device, teacher=teacher, **common))
    k_tps = show(f"KD student training ({student})", kd_step(device, teacher=teacher, student=student, **common))
    f_tps = show(
        f"fused group of {args.members} KD students ({student})",
        fused_students(device, members=args.members, teacher=teacher, student=student, **common),
    )
    print(f"fusion gain: {f_tps / k_tps:.2f}x the tokens/s of one KD student trained alone")
    show(
        f"beam {args.beam} decoding ({teacher}, 64 sentences)",
        beam_decoding(device, teacher=teacher, vocab=vocab, beam=args.beam, mean_len=args.mean_len),
    )
    if args.iwslt_train_tokens:
        per_epoch_t = args.iwslt_train_tokens / t_tps
        per_epoch_s = args.iwslt_train_tokens / f_tps  # one student's epoch, trained in a fused group
        total = args.epochs * (2 * per_epoch_t + 9 * per_epoch_s) / 3600  # 2 teachers, 8 KD students + baseline
        print(
            f"estimated IWSLT grid ({args.epochs} epochs, 2 teachers + 9 students fused by {args.members}): "
            f"{total:.1f} device-hours (training only; evaluation and data loading not included)"
        )


if __name__ == "__main__":
    main()
