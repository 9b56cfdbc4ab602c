"""lskd-bench against RepDistiller, side by side (issue 36, item 3): resnet32x4 -> resnet8x4 on a generated
CIFAR-100-format folder, batch 64, 2 threads, KD / FitNet / AT / CRD (nce_k 256), rounds alternated; each side runs
in a fresh process per (round, method), and the script prints lskd-bench / reference throughput ratios (> 1:
lskd-bench faster) for training (steps after the first), start-up (process start to the end of the first step),
start-up without the reference's evaluation of its teacher (RepDistiller validates the teacher over the test split
before its first epoch, ``train_student.py:286-287``; lskd-bench evaluates a teacher once, in the teacher's own
cell) and evaluation (images a second over the test split). Both sides import lskd-bench's modules (the reference
its models) from bytecode compiled first, as an installed package does (pip compiles at install; a machine with
PYTHONDONTWRITEBYTECODE set would otherwise compile them at every start).

    python benchmarks/bench_repdistiller.py --quick          # 1 round, KD and CRD, a small folder (~1-2 min quiet)
    python benchmarks/bench_repdistiller.py [--rounds 3] [--methods kd,fitnet,at,crd] [--per-class 13,10]
    python benchmarks/bench_repdistiller.py --reference ~/RepDistiller   # its models and losses from a checkout

The reference is RepDistiller's recipe (HobbitLong/RepDistiller@b84f547), re-created here in a few lines, not its
code: ``helper/loops.py:68-215`` (``train_distill``: student and criteria in train mode, teacher in eval mode
(:71-74); student and teacher forwards with ``is_feat=True``, the teacher's under ``no_grad`` (:114-117);
``gamma * CE + alpha * KL + beta * loss_kd`` (:184); SGD step (:192-194)) and ``:218-250`` (``validate``: eval
mode, ``no_grad``, loss and top-1/top-5 a batch); ``dataset/cifar100.py:47-87`` (per-image torchvision transforms
RandomCrop(32, 4) + flip + ToTensor + Normalize in a DataLoader, shuffled; test batch ``batch_size / 2`` = 32) and
``:138-170`` (CRD: the sample's index and ``nce_k`` negatives drawn from the other classes, ``mode='exact'``);
``train_student.py:170-174`` (a probe forward of both models on two random images, which sizes ``ConvReg``),
``:286-287`` (the teacher's validation) and ``:176-279`` (SGD lr 0.05, momentum 0.9, weight decay 5e-4 over the
student and the method's modules; the criteria: ``DistillKL`` T 4, ``HintLoss`` + ``ConvReg`` on ``feat[2]``,
``Attention`` on ``feat[1:-1]``, ``CRDLoss`` on ``feat[-1]``) and the weights of ``scripts/run_cifar_distill.sh``
(KD: -r 0.1 -a 0.9 -b 0; FitNet: -a 0 -b 100; AT: -a 0 -b 1000; CRD: -a 0 -b 0.8). Both sides use the same
architecture code (lskd-bench's port, same layers), 0 loader workers and an untrained teacher (speed does not depend
on weights). ``--reference PATH`` takes the models, criteria, ``ConvReg`` and CRD memory from a RepDistiller
checkout instead (its CRD memory's ``.cuda()`` is skipped on a CPU). No network: the data folder is generated.

Other engineers may use the machine: the script prints ``uptime``'s load before and after; the figures are
indicative, the ratios (each side measured in the same round) less so than the seconds.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # start-up is measured from here, before torch is imported (both sides alike)

import argparse  # noqa: E402
import compileall  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {"kd": "kd", "fitnet": "hint", "at": "attention", "crd": "crd"}  # lskd-bench name: RepDistiller's
WEIGHTS = {"kd": (0.1, 0.9, 0.0), "hint": (1.0, 0.0, 100.0), "attention": (1.0, 0.0, 1000.0), "crd": (1.0, 0.0, 0.8)}
BATCH, THREADS, NCE_K = 64, 2, 256


def make_cifar100(root: Path, per_class: tuple[int, int]) -> Path:
    """A ``cifar-100-python/`` folder in the release's pickle format (class-coloured noise), as tests/fixtures.py."""
    import numpy as np

    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class[0]), ("test", per_class[1])):
        labels = np.repeat(np.arange(100), n)
        rng.shuffle(labels)
        img = rng.integers(0, 90, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            img[i, c % 3] += np.uint8(60 + (c // 3) * 3)
        blob = {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()}
        blob[b"data"] = img.reshape(len(labels), -1)
        blob[b"filenames"] = [f"{i}.png".encode() for i in range(len(labels))]
        blob[b"batch_label"] = split.encode()
        with open(d / split, "wb") as f:
            pickle.dump(blob, f, protocol=2)
    with open(d / "meta", "wb") as f:
        names = {b"fine_label_names": [f"c{c}".encode() for c in range(100)]}
        pickle.dump({**names, b"coarse_label_names": [f"s{c}".encode() for c in range(20)]}, f, protocol=2)
    return root


# ------------------------------------------------------------------------------------------ lskd-bench side
def run_lskd(method: str, root: Path, out: Path) -> dict:
    """One student of ``method`` trained for one epoch through lskd-bench's loop (``train_cell``); the step marks
    from its ``on_step`` callback; evaluation: the task's own over the test split (the per-device batch)."""
    import torch

    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    over = {
        "data": {"root": str(root)},
        "grid": {"alphas": [0.0], "temperatures": [4.0], "seeds": [0]},
        "methods": [method],
        "baseline": False,
        "student": {"epochs": 1, "batch_size": BATCH},
        "threads": THREADS,
        "num_workers": 0,
        "device": "cpu",
        "crd": {"nce_k": NCE_K},
    }
    cfg = resolve_config("cifar100", {}, over)
    torch.set_num_threads(THREADS)
    task = get_task("cifar100")
    data = task.load_data(cfg)
    torch.manual_seed(0)
    teacher = task.build_model(cfg["teacher"]["arch"], data, cfg, cfg["teacher"]).eval()
    (cell,) = [c for c in plan_cells(cfg) if c.role == "student"]
    marks: list[float] = []
    train_cell(
        task,
        cell,
        cfg,
        data,
        out / cell.name,
        teacher=teacher,
        progress=False,
        on_step=lambda e, i: marks.append(time.perf_counter()),
    )
    student = task.build_model(cfg["student"]["arch"], data, cfg, cfg["student"])
    t = time.perf_counter()
    task.evaluate(student, data, cfg, torch.device("cpu"))
    return _figures(marks, time.perf_counter() - t, len(data.test))


# ------------------------------------------------------------------------------------------ reference side
def _feat(model, x):
    """RepDistiller's ``ResNet.forward(x, is_feat=True)`` (models/resnet.py): [stem, stage 1-3, pooled], logits."""
    f0 = model.relu(model.bn1(model.conv1(x)))
    f1 = model.layer1(f0)
    f2 = model.layer2(f1)
    f3 = model.layer3(f2)
    f4 = model.avgpool(f3).flatten(1)
    return [f0, f1, f2, f3, f4], model.fc(f4)


def _reference_parts(distill: str, reference: str | None, n_data: int):
    """(teacher, student, feature forward, criterion_div, criterion_kd, modules to train): RepDistiller's from a
    checkout, or re-created after its files."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    if reference:
        sys.path.insert(0, reference)
        import crd.memory  # type: ignore[import-not-found]

        crd.memory.AliasMethod.cuda = lambda self: None  # its memory moves the sampler to CUDA: not on a CPU
        from crd.criterion import CRDLoss  # type: ignore[import-not-found]
        from distiller_zoo import Attention, DistillKL, HintLoss  # type: ignore[import-not-found]
        from models import model_dict  # type: ignore[import-not-found]
        from models.util import ConvReg  # type: ignore[import-not-found]

        teacher, student = model_dict["resnet32x4"](num_classes=100), model_dict["resnet8x4"](num_classes=100)

        def feat(m, x):
            return m(x, is_feat=True)

        div = DistillKL(4)
        opt = argparse.Namespace(feat_dim=128, nce_k=NCE_K, nce_t=0.07, nce_m=0.5, n_data=n_data, s_dim=256, t_dim=256)
        kd = {"kd": lambda: DistillKL(4), "hint": HintLoss, "attention": Attention, "crd": lambda: CRDLoss(opt)}
        crit = kd[distill]()
    else:
        from lskd_bench.cifar_models import build_cifar_model

        teacher, student, feat = build_cifar_model("resnet32x4", 100), build_cifar_model("resnet8x4", 100), _feat
        ConvReg = None

        def div(s, t, T=4.0):  # DistillKL (distiller_zoo/KD.py:14-18)
            return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="sum") * T**2 / s.shape[0]

        def at(f, p=2):  # Attention.at (distiller_zoo/AT.py:29-30)
            return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))

        crit = {
            "kd": lambda s, t: 0,
            "hint": nn.MSELoss(),  # HintLoss
            "attention": lambda s, t: [(at(a) - at(b)).pow(2).mean() for a, b in zip(s, t)],
            "crd": _Crd(256, 256, n_data),
        }[distill]
    # the models' shapes from a probe forward of both (train_student.py:170-174), the hint's regressor sized by them
    x = torch.randn(2, 3, 32, 32)
    s_shape, t_shape = feat(student.eval(), x)[0][2].shape, feat(teacher.eval(), x)[0][2].shape
    if ConvReg is not None:
        reg = ConvReg(s_shape, t_shape)
    else:  # ConvReg (models/util.py) where the shapes match: a 3x3 conv, BN, ReLU
        reg = nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 3, padding=1), nn.BatchNorm2d(t_shape[1]), nn.ReLU())
    train = [student] + ([reg] if distill == "hint" else [crit.embed_s, crit.embed_t] if distill == "crd" else [])
    return teacher.eval(), student, feat, div, crit, reg, train


class _Crd:
    """CRDLoss (crd/criterion.py:8-97, crd/memory.py:6-80): embeddings, the two momentum memories, NCE loss."""

    def __init__(self, s_dim: int, t_dim: int, n_data: int, dim: int = 128, T: float = 0.07, m: float = 0.5):
        import math

        import torch
        from torch import nn

        self.embed_s, self.embed_t = nn.Linear(s_dim, dim), nn.Linear(t_dim, dim)
        stdv = 1.0 / math.sqrt(dim / 3)
        self.mem = [torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv) for _ in range(2)]
        self.T, self.m, self.n, self.Z = T, m, n_data, [None, None]

    def __call__(self, f_s, f_t, idx, contrast_idx):
        import torch
        import torch.nn.functional as F

        v1, v2 = F.normalize(self.embed_s(f_s)), F.normalize(self.embed_t(f_t))
        outs = []
        for k, (mem, v) in enumerate(((self.mem[1], v1), (self.mem[0], v2))):
            w = mem.index_select(0, contrast_idx.view(-1)).view(len(v), -1, v.shape[1])
            out = torch.exp(torch.bmm(w, v.unsqueeze(2)) / self.T)
            if self.Z[k] is None:
                self.Z[k] = out.mean().item() * self.n
            outs.append(out / self.Z[k])
        with torch.no_grad():
            for mem, v in ((self.mem[0], v1), (self.mem[1], v2)):
                pos = mem.index_select(0, idx) * self.m + v * (1 - self.m)
                mem.index_copy_(0, idx, F.normalize(pos))
        loss = 0
        for x in outs:  # ContrastLoss
            x = x.squeeze(2)
            k, pn = x.shape[1] - 1, 1.0 / self.n
            d1 = (x[:, 0] / (x[:, 0] + k * pn + 1e-7)).log()
            d0 = ((k * pn) / (x[:, 1:] + k * pn + 1e-7)).log()
            loss = loss - (d1.sum() + d0.sum()) / len(x)
        return loss


def run_reference(distill: str, root: Path, reference: str | None) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    torch.set_num_threads(THREADS)
    norm = T.Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.ToTensor(), norm])

    class Cifar(Dataset):  # CIFAR100Instance / CIFAR100InstanceSample (dataset/cifar100.py:30-45, :138-170)
        def __init__(self, split, tf, k=None):
            from PIL import Image

            with open(root / "cifar-100-python" / split, "rb") as f:
                raw = pickle.load(f, encoding="bytes")
            self.img = [Image.fromarray(a) for a in raw[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)]
            self.y, self.tf, self.k = raw[b"fine_labels"], tf, k
            labels = np.array(self.y)
            self.negative = [np.nonzero(labels != c)[0] for c in range(100)]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            x, y = self.tf(self.img[i]), self.y[i]
            if self.k is None:
                return x, y, i
            neg = np.random.choice(self.negative[y], self.k, replace=True)
            return x, y, i, np.hstack(([i], neg))

    train_set = Cifar("train", train_tf, NCE_K if distill == "crd" else None)
    train = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=0)
    test = DataLoader(Cifar("test", test_tf), batch_size=BATCH // 2, shuffle=False, num_workers=0)
    teacher, student, feat, div, crit, reg, trainable = _reference_parts(distill, reference, len(train_set))
    params = [p for m in trainable for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    gamma, alpha, beta = WEIGHTS[distill]

    def validate(model) -> float:  # validate (helper/loops.py:218-250): seconds over the test split
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for x, y, _ in test:
                out = model(x.float())
                torch.nn.functional.cross_entropy(out, y).item()
                out.topk(5, 1)
        return time.perf_counter() - t

    teacher_val_s = validate(teacher)  # the teacher's accuracy, before the first epoch (train_student.py:286-287)
    for m in trainable:
        m.train()
    marks = []
    for data in train:  # train_distill (helper/loops.py:95-194)
        x, y, idx = data[0].float(), data[1], data[2]
        feat_s, logit_s = feat(student, x)
        with torch.no_grad():
            feat_t, logit_t = feat(teacher, x)
            feat_t = [f.detach() for f in feat_t]
        loss_cls = torch.nn.functional.cross_entropy(logit_s, y)
        loss_div = div(logit_s, logit_t)
        if distill == "kd":
            loss_kd = 0
        elif distill == "hint":
            loss_kd = crit(reg(feat_s[2]), feat_t[2])
        elif distill == "attention":
            loss_kd = sum(crit(feat_s[1:-1], feat_t[1:-1]))
        else:
            loss_kd = crit(feat_s[-1], feat_t[-1], idx, data[3])
        loss = gamma * loss_cls + alpha * loss_div + beta * loss_kd
        top = logit_s.topk(5, 1).indices  # accuracy() of the batch, as the loop logs it
        _ = (top[:, :1] == y[:, None]).any(1).sum().item(), (top == y[:, None]).any(1).sum().item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        marks.append(time.perf_counter())
    return _figures(marks, validate(student), len(test.dataset), teacher_val_s)


def _figures(marks: list[float], eval_s: float, n_test: int, teacher_val_s: float = 0.0) -> dict:
    """``startup_s``: process start to the end of the first step; ``teacher_val_s``: the part of it spent
    evaluating the teacher (RepDistiller's, before its first epoch; lskd-bench evaluates a teacher in its own cell)."""
    steps = [b - a for a, b in itertools.pairwise(marks[:-1])]  # after the first; the last (partial batch) left out
    return {
        "startup_s": marks[0] - T0,
        "teacher_val_s": teacher_val_s,
        "step_s": statistics.median(steps) if steps else float("nan"),
        "eval_images_s": n_test / eval_s,
    }


# ------------------------------------------------------------------------------------------ driver
def _worker(side: str, method: str, root: Path, reference: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = str(THREADS)
    with tempfile.TemporaryDirectory(prefix="bench_repd-") as out:
        cmd = [sys.executable, "-W", "ignore", __file__, "--worker", side, "--method", method, "--data", str(root)]
        cmd += ["--out", out] + (["--reference", reference] if reference else [])
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{side} {method} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime not available"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, KD and CRD, 3 train / 1 test images a class")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="kd,fitnet,at,crd", help="of: " + ",".join(METHODS))
    ap.add_argument(
        "--per-class", default=None, help="train,test images a class of the generated folder (default 13,10; quick 3,1)"
    )
    ap.add_argument("--reference", default=None, help="a RepDistiller checkout: its models and losses")
    ap.add_argument("--worker", choices=("lskd", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        got = run_lskd(a.method, Path(a.data), Path(a.out)) if a.worker == "lskd" else None
        got = got or run_reference(METHODS[a.method], Path(a.data), a.reference)
        print(json.dumps(got))
        return
    methods = ["kd", "crd"] if a.quick and a.methods == ap.get_default("methods") else a.methods.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}: choose from {', '.join(METHODS)}")
    rounds = 1 if a.quick else a.rounds
    per_class = tuple(int(v) for v in (a.per_class or ("3,1" if a.quick else "13,10")).split(","))
    # both sides import lskd-bench's modules (the reference its models) from bytecode, as an installed package does
    # (pip compiles at install; Python writes the cache on first import unless PYTHONDONTWRITEBYTECODE is set)
    compileall.compile_dir(REPO / "lskd_bench", quiet=1)
    print(f"load before: {_load()}", flush=True)
    keys = ("step_s", "startup_s", "startup_less_val_s", "eval_images_s")
    ratios: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in methods}
    with tempfile.TemporaryDirectory(prefix="bench_repd-data-") as tmp:
        root = make_cifar100(Path(tmp), per_class)
        for r in range(rounds):
            for m in methods:
                sides = ("lskd", "reference") if (r + methods.index(m)) % 2 == 0 else ("reference", "lskd")
                got = {s: _worker(s, m, root, a.reference) for s in sides}
                ours, ref = got["lskd"], got["reference"]
                ratio = {
                    "step_s": ref["step_s"] / ours["step_s"],
                    "startup_s": ref["startup_s"] / ours["startup_s"],
                    "startup_less_val_s": (ref["startup_s"] - ref["teacher_val_s"]) / ours["startup_s"],
                    "eval_images_s": ours["eval_images_s"] / ref["eval_images_s"],
                }
                for k in keys:
                    ratios[m][k].append(ratio[k])
                print(
                    f"round {r + 1}/{rounds} {m}: train {ratio['step_s']:.2f} (lskd-bench {ours['step_s'] * 1e3:.0f} "
                    f"ms/step, reference {ref['step_s'] * 1e3:.0f}), start-up {ratio['startup_s']:.2f} "
                    f"({ours['startup_s']:.2f} s, {ref['startup_s']:.2f} s), without the reference's teacher "
                    f"validation ({ref['teacher_val_s']:.2f} s) {ratio['startup_less_val_s']:.2f}, "
                    f"eval {ratio['eval_images_s']:.2f} "
                    f"({ours['eval_images_s']:.0f}, {ref['eval_images_s']:.0f} images/s)",
                    flush=True,
                )
    print(f"load after: {_load()}")
    src = f"RepDistiller checkout {a.reference}" if a.reference else "RepDistiller's recipe re-created"
    print(
        f"\nlskd-bench / reference throughput (> 1: lskd-bench faster), resnet32x4 -> resnet8x4, batch {BATCH}, "
        f"{THREADS} threads, {per_class[0] * 100} train / {per_class[1] * 100} test images, median of {rounds} "
        f"round(s); reference: {src}"
    )
    print(
        "| method | training | start-up (first step) | start-up without the teacher's validation | evaluation |\n"
        "|---|---|---|---|---|"
    )
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{statistics.median(ratios[m][k]):.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
