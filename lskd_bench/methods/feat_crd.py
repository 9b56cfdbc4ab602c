"""CRD and the feature methods with an initialisation stage (AB, FT, FSP), as RepDistiller's CIFAR-100 benchmark
(HobbitLong/RepDistiller@b84f547: ``train_student.py``, ``crd/``, ``distiller_zoo/AB.py``, ``FT.py``, ``FSP.py``,
``models/util.py``, ``helper/pretrain.py``, ``helper/loops.py``; weights from ``scripts/run_cifar_distill.sh``).

Each loss is ``ce * CE(s, y) + beta * L_feat`` (RepDistiller's ``gamma * loss_cls + beta * loss_kd``, ``-r 1 -a 0``).
AB, FT and FSP first run RepDistiller's ``init`` stage (``helper/pretrain.py``): ``init_epochs`` epochs training
only ``init_modules`` with ``init_loss`` (SGD at the constant ``init_lr``; the rest of the student in eval mode),
as part of the cell; then the normal training.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section
from .feat_common import feature_modules, paired, pool_matrix_to_smaller, pool_to_smaller, set_trainable
from .feat_repd import ConvReg

_RD = "RepDistiller@b84f547"
EPS = 1e-7  # crd/criterion.py:5


# ------------------------------------------------------------------------------------------------------- CRD
class Embed(nn.Module):
    """CRD's projection (``crd/criterion.py:79`` Embed): flatten, linear to ``feat_dim``, L2-normalise (its
    ``Normalize``: ``x / x.pow(2).sum(1).pow(1/2)``, no epsilon)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


def contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE loss (``crd/criterion.py:51`` ContrastLoss, eq. 18) of scores ``x`` (B, 1+K[, 1]): column 0 the
    positive, the rest the K negatives; noise distribution uniform over the ``n_data`` training samples."""
    x = x.reshape(x.shape[0], -1)
    bsz, m = x.shape[0], x.shape[1] - 1
    pn = 1 / float(n_data)
    p_pos = x[:, 0]
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + EPS)).log()
    p_neg = x[:, 1:]
    log_d0 = torch.div(torch.full_like(p_neg, m * pn), p_neg.add(m * pn + EPS)).log()
    return -(log_d1.sum() + log_d0.sum()) / bsz


def draw_negatives(labels: torch.Tensor, targets: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` negatives per sample (B, k): indices of training samples of another class than the sample's, drawn
    uniformly without replacement, or with replacement where fewer than ``k`` exist (RepDistiller
    ``dataset/cifar100.py:166-167``, ``np.random.choice(cls_negative[target], k, replace=k > len(...))``).
    Samples whose label is not yet known (-1) count as another class. Draws from ``gen`` only."""
    dev = gen.device
    labels, targets = labels.to(dev), targets.to(dev)
    eligible = labels.unsqueeze(0) != targets.unsqueeze(1)  # (B, N)
    counts = eligible.sum(1)
    few = counts < k
    n_few, n_none = torch.stack([few.sum(), (counts == 0).sum()]).tolist()  # one host sync
    if n_none:
        raise UsageError("crd: a sample has no training sample of another class to contrast with")
    out = torch.empty(len(targets), k, dtype=torch.long, device=dev)
    if n_few:  # with replacement, uniform over the other classes' samples: the r-th of a row's eligible indices
        el = eligible[few]
        order = torch.argsort((~el).to(torch.uint8), dim=1, stable=True)  # each row's eligible indices first
        u = torch.rand(n_few, k, generator=gen, device=dev, dtype=torch.float64)
        cnt = counts[few].unsqueeze(1)
        r = torch.minimum((u * cnt).long(), cnt - 1)
        out[few] = order.gather(1, r)
    many = ~few
    if n_few < len(targets):  # without replacement: the k largest of uniform keys, the ineligible keyed below 0
        keys = torch.rand(len(targets) - n_few, labels.numel(), generator=gen, device=dev)
        keys.masked_fill_(~eligible[many], -1.0)
        out[many] = keys.topk(k, dim=1).indices
    return out


@METHODS.register("crd")
class CRD(FeatureMethod):
    """Contrastive Representation Distillation (Tian et al., ICLR 2020) as RepDistiller's ``CRDLoss``
    (``crd/criterion.py:8``, ``crd/memory.py:6`` ContrastMemory): the student's and the teacher's embeddings
    (``feat[-1]``: ``embedding``) are projected by ``Embed`` to ``feat_dim`` 128 and L2-normalised; a memory
    bank holds one student and one teacher vector per training sample (``probe.num_samples`` rows, initialised
    uniform in [-stdv, stdv], stdv = 1/sqrt(feat_dim/3), ``memory.py:19-21``). For each sample, the positive (its
    own index, ``mode='exact'``) and ``nce_k`` 16384 negatives are scored against the other side's memory,
    ``exp(v.m / nce_t) / Z`` (nce_t 0.07), ``Z = mean * n_data`` fixed at the first batch (``memory.py:49-57``;
    kept in the buffer ``z``); the loss is ``ContrastLoss`` of the student-anchored plus the teacher-anchored
    scores, weight beta 0.8 (``run_cifar_distill.sh:29``; CRD+KD is ``crd+kd``, ``-a 1``, line 32). After the
    loss, under no_grad, the batch's memory rows become ``normalise(nce_m * memory + (1 - nce_m) * v)``, nce_m 0.5
    (``memory.py:63-77``).

    Negatives: RepDistiller draws them in the dataset (``CIFAR100InstanceSample``, ``dataset/cifar100.py:166``)
    with numpy's global RNG, from the samples of the other classes. Here they are drawn in the method, the same
    way (uniform over the other classes' samples, without replacement unless there are fewer than nce_k), from
    its own ``torch.Generator`` (on the memory's device, seeded in ``setup`` from the cell's random stream), whose
    state is checkpointed with the method (``get_extra_state``/``set_extra_state``): a killed and resumed cell
    draws the same negatives. Each sample's class is learnt from the batches as they come (``labels`` buffer,
    -1 until seen; ``probe.labels`` fills it up front where the runner supplies it): until a sample has been
    seen, it may be drawn as a negative of its own class.

    parity: RepDistiller@b84f547 crd/criterion.py:31 CRDLoss.forward (+ crd/memory.py:23 ContrastMemory.forward),
    same seed (equal Embed weights and memory bank as built), same indices and negatives, two batches (B 8,
    K 64, embedding dims 24/40): with N 200 (RepDistiller's gather-then-bmm, the path whenever N > K + 1, as
    CIFAR-100's 50000 > 16385) loss and gradient (both embeddings, both Embed weights and bias) max relative
    difference 0.0e+00, memory after each update 0.0e+00, Z 0.0e+00; with N 50 (fewer rows than draws: every
    row's score by one matmul, then gathered; the negatives then drawn with replacement) loss 7.5e-08, gradient
    6.1e-07, memory 0.0e+00, Z 0.0e+00.
    """

    description = "CRD: ce*CE + beta*(NCE_s + NCE_t) with a memory bank of 16384 negatives, beta 0.8"
    needs = Needs(student=("logits", "embedding"), teacher=("embedding",), indices=True)
    params = feature_section(
        "CRD",
        0.8,
        "scripts/run_cifar_distill.sh:29",
        feat_dim=Field(
            int, 128, "projection dimension (RepDistiller --feat_dim, train_student.py:81)", min=1, max=1 << 16
        ),
        nce_k=Field(int, 16384, "negatives per sample (--nce_k, train_student.py:83)", min=1, max=1 << 24),
        nce_t=Field(
            float,
            0.07,
            "temperature of the scores (--nce_t, train_student.py:84)",
            min=0.0,
            min_exclusive=True,
            max=1e3,
        ),
        nce_m=Field(float, 0.5, "momentum of the memory update (--nce_m, train_student.py:85)", min=0.0, max=1.0),
    )

    def setup(self, probe: Probe) -> None:
        d, n = self.p["feat_dim"], int(probe.num_samples)
        self.n_data = n
        # RepDistiller's order of draws: embed_s, embed_t, memory_v1 (student), memory_v2 (teacher)
        self.embed_s = Embed(probe.s["embedding"].reshape(probe.s["embedding"].shape[0], -1).shape[1], d)
        self.embed_t = Embed(probe.t["embedding"].reshape(probe.t["embedding"].shape[0], -1).shape[1], d)
        stdv = 1.0 / math.sqrt(d / 3)
        self.register_buffer("memory_s", torch.rand(n, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of the student- and teacher-anchored scores
        labels = getattr(probe, "labels", None)
        self.register_buffer(
            "labels",
            torch.full((n,), -1, dtype=torch.long)
            if labels is None
            else torch.as_tensor(labels, dtype=torch.long).clone(),
        )
        self.seed = int(torch.randint(0, 2**62, (1,)).item())  # the negatives' stream, from the cell's stream
        self._gen: torch.Generator | None = None
        self._gen_state: torch.Tensor | None = None  # a checkpointed state, set when the generator is made

    # -- the negatives' generator, checkpointed with the method ------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device.type != device.type:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            if self._gen_state is not None:
                try:
                    g.set_state(self._gen_state)
                except RuntimeError as exc:
                    raise UsageError(
                        f"crd: the checkpointed negatives' generator does not fit a {device.type} "
                        f"generator (resumed on another device type?): {exc}"
                    ) from None
                self._gen_state = None
            self._gen = g
        return self._gen

    def get_extra_state(self) -> dict[str, Any]:
        state = self._gen.get_state() if self._gen is not None else self._gen_state
        return {"seed": self.seed, "generator": state}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed, self._gen, self._gen_state = int(state["seed"]), None, state["generator"]

    # -- the loss ---------------------------------------------------------------------------------------------
    def contrast(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, 1+K, 1) of the student-anchored (teacher memory) and teacher-anchored (student memory)
        pairs of the projected ``f_s``, ``f_t`` and memory rows ``idx`` (B, 1+K); sets Z at the first batch."""
        b, k1 = idx.shape
        n, d = self.memory_s.shape
        T = self.p["nce_t"]
        if n > k1:  # RepDistiller's computation (memory.py:38-46): the (B, 1+K, D) memory rows, then bmm
            w_s = self.memory_s.index_select(0, idx.reshape(-1)).view(b, k1, d)
            out_t = torch.exp(torch.div(torch.bmm(w_s, f_t.view(b, d, 1)), T))
            w_t = self.memory_t.index_select(0, idx.reshape(-1)).view(b, k1, d)
            out_s = torch.exp(torch.div(torch.bmm(w_t, f_s.view(b, d, 1)), T))
        else:  # fewer memory rows than draws (a small data set): every row's score once, then the drawn ones
            # (a copy of the memory: backward needs it as it is now, and the update below changes it in place)
            out_t = torch.exp(torch.div(f_t.mm(self.memory_s.t().clone()).gather(1, idx), T)).unsqueeze(-1)
            out_s = torch.exp(torch.div(f_s.mm(self.memory_t.t().clone()).gather(1, idx), T)).unsqueeze(-1)
        with torch.no_grad():  # no host sync: Z is the first batch's value from then on
            first = torch.stack([out_s.mean(), out_t.mean()]) * self.n_data
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        z = self.z.clone()
        return torch.div(out_s, z[0]).contiguous(), torch.div(out_t, z[1]).contiguous()

    @torch.no_grad()
    def update_memory(self, f_s: torch.Tensor, f_t: torch.Tensor, y: torch.Tensor) -> None:
        m = self.p["nce_m"]
        for memory, v in ((self.memory_s, f_s), (self.memory_t, f_t)):
            pos = memory.index_select(0, y).mul_(m).add_(torch.mul(v, 1 - m))
            memory.index_copy_(0, y, pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))

    def loss(self, student, targets, teacher, ctx):
        if ctx.indices is None:
            raise ValueError("crd needs the batch's sample indices (ctx.indices)")
        y = ctx.indices.to(self.memory_s.device).long()
        self.labels.index_copy_(0, y, targets.to(self.labels.device).long())
        neg = draw_negatives(self.labels, targets, self.p["nce_k"], self.generator(self.memory_s.device))
        idx = torch.cat([y.unsqueeze(1), neg.to(y.device)], 1)
        f_s, f_t = self.embed_s(student["embedding"]), self.embed_t(teacher["embedding"])
        out_s, out_t = self.contrast(f_s, f_t, idx)
        crd = contrast_loss(out_s, self.n_data) + contrast_loss(out_t, self.n_data)
        self.update_memory(f_s, f_t, y)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * crd}


# ------------------------------------------------------------------------------------------------------- AB
def ab_losses(g_s: list[torch.Tensor], g_t: list[torch.Tensor], n: int, margin: float = 1.0) -> list[torch.Tensor]:
    """RepDistiller ``distiller_zoo/AB.py`` ABLoss: per pair, ``criterion_alternative_l2`` (the activation-boundary
    hinge on pre-activations) times ``2**(i - n + 1)``, divided by the batch size, ``/ 1000 * 3``."""
    bsz = g_s[0].shape[0]
    out = []
    for i, (s, t) in enumerate(zip(g_s, g_t)):
        l2 = (s + margin) ** 2 * ((s > -margin) & (t <= 0)).float() + (s - margin) ** 2 * (
            (s <= margin) & (t > 0)
        ).float()
        out.append(2 ** (i - n + 1) * torch.abs(l2).sum() / bsz / 1000 * 3)
    return out


class Connector(nn.Module):
    """AB's connectors (``models/util.py:65`` Connector): per stage pair, identity where channels and height
    agree, else ``ConvReg(use_relu=False)``."""

    def __init__(self, s_shapes: list[tuple[int, ...]], t_shapes: list[tuple[int, ...]]):
        super().__init__()
        self.connectors = nn.ModuleList(
            [
                nn.Sequential() if s[0] == t[0] and s[1] == t[1] else ConvReg(tuple(s), tuple(t), use_relu=False)
                for s, t in zip(s_shapes, t_shapes)
            ]
        )

    def forward(self, g_s: list[torch.Tensor]) -> list[torch.Tensor]:
        return [c(g) for c, g in zip(self.connectors, g_s)]


def _init_epochs() -> Field:
    return Field(
        int,
        30,
        "epochs of the initialisation stage, run first as part of the cell (RepDistiller "
        "--init_epochs, train_student.py:47)",
        min=0,
        max=100_000,
    )


class _InitStage(FeatureMethod):
    """A method with RepDistiller's initialisation stage (``helper/pretrain.py:11`` init)."""

    def init_stage(self) -> int:
        return int(self.p["init_epochs"])

    def init_lr(self, hp: dict[str, Any]) -> float:
        return float(hp["lr"])  # pretrain.py:27 (opt.learning_rate)


@METHODS.register("ab")
class AB(_InitStage):
    """Activation Boundaries (Heo et al., AAAI 2019) as RepDistiller: the init stage (``train_student.py:227-238``,
    ``pretrain.py:63-67``) trains the student's feature modules (all but the classifier head,
    ``get_feat_modules``) and a ``Connector`` on ``sum ABLoss(Connector(student preact stages), teacher preact
    stages)`` (``preact=True``; ``AB.py``: margin 1, stage i weighted ``2**(i-n+1)``, n the student's stage count);
    the main stage is then plain ``ce * CE``: RepDistiller's ``loss_kd = 0`` for abound (``loops.py:171-173``),
    the connector not trained further (not in its ``trainable_list``). -b 1 (``run_cifar_distill.sh:21``) weighs
    nothing. Stages are paired by index for the stages both have (``feat_common.paired``; RepDistiller's pairs have
    as many). The init stage runs as part of the cell (``init_epochs`` 30). The pre-activations are RepDistiller's
    ``preact=True`` tensors for every CIFAR model (``cifar_models``); one difference for a WRN student: RepDistiller
    gets them by calling the next BN again (wrn.py:118-121), which in training mode updates that BN's running
    statistics a second time per step; lskd-bench reads the forward's value and updates them once.

    parity: RepDistiller@b84f547 distiller_zoo/AB.py:16 ABLoss.forward + models/util.py:65 Connector (same
    seed: equal connector weights), pre-activations shaped as resnet32x4/resnet8x4's (identity connectors) and
    with half the student channels (ConvReg connectors): loss and gradient max relative difference 0.0e+00.
    """

    description = (
        "AB: an init stage (init_epochs, part of the cell) fits the student's pre-activation "
        "boundaries to the teacher's, then ce*CE"
    )
    needs = Needs(student=("logits", "preact_stages"), teacher=("preact_stages",))
    params = feature_section(
        "AB",
        1.0,
        "scripts/run_cifar_distill.sh:21",
        init_epochs=_init_epochs(),
        margin=Field(float, 1.0, "margin of the boundary loss (ABLoss margin, AB.py:11)", min=0.0, max=1e6),
    )

    def setup(self, probe: Probe) -> None:
        s, t = probe.s.stages(pre=True), probe.t.stages(pre=True)
        pairs = paired(s, t)
        self.n = len(s)
        self.connector = Connector([tuple(a.shape[1:]) for a, _ in pairs], [tuple(b.shape[1:]) for _, b in pairs])
        set_trainable([self.connector], False)  # trained by the init stage only (init_modules)

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        set_trainable([self.connector], True)
        return [self.connector, *feature_modules(student)]

    def init_loss(self, student, targets, teacher, ctx):
        pairs = paired(student.stages(pre=True), teacher.stages(pre=True))
        g_s = self.connector([s for s, _ in pairs])
        return {"init": sum(ab_losses(g_s, [t for _, t in pairs], self.n, self.p["margin"]))}

    def loss(self, student, targets, teacher, ctx):
        return {"ce": self.cross_entropy(student, targets)}


# ------------------------------------------------------------------------------------------------------- FT
def _ft_block(c_in: int, c_out: int, bn: bool, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [
        conv(c_in, c_out, 3, 1, 1),
        nn.BatchNorm2d(c_out) if bn else nn.Sequential(),
        nn.LeakyReLU(0.1, inplace=True),
    ]


class Paraphraser(nn.Module):
    """FT's paraphraser (``models/util.py:7``): a 3-conv encoder to ``k * C`` channels and a 3-deconv decoder
    back (LeakyReLU 0.1; no BN by default), trained to reconstruct the teacher's map."""

    def __init__(self, c: int, k: float = 0.5, use_bn: bool = False):
        super().__init__()
        out = int(c * k)
        self.encoder = nn.Sequential(*_ft_block(c, c, use_bn), *_ft_block(c, out, use_bn), *_ft_block(out, out, use_bn))
        self.decoder = nn.Sequential(
            *_ft_block(out, out, use_bn, True), *_ft_block(out, c, use_bn, True), *_ft_block(c, c, use_bn, True)
        )

    def forward(self, f: torch.Tensor, is_factor: bool = False):
        factor = self.encoder(f)
        return factor if is_factor else (factor, self.decoder(factor))


class Translator(nn.Module):
    """FT's translator (``models/util.py:44``): a 3-conv encoder of the student's map to ``k * C_teacher``
    channels, with BN."""

    def __init__(self, c_s: int, c_t: int, k: float = 0.5, use_bn: bool = True):
        super().__init__()
        out = int(c_t * k)
        self.encoder = nn.Sequential(
            *_ft_block(c_s, c_s, use_bn), *_ft_block(c_s, out, use_bn), *_ft_block(out, out, use_bn)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)


def factor_transfer(f_s: torch.Tensor, f_t: torch.Tensor, p1: int = 2, p2: int = 1) -> torch.Tensor:
    """RepDistiller ``distiller_zoo/FT.py`` FactorTransfer: the larger map average-pooled to the smaller, then
    ``|normalize(mean_c f_s^p1) - normalize(mean_c f_t^p1)|^p2`` averaged."""
    f_s, f_t = pool_to_smaller(f_s, f_t)

    def factor(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(p1).mean(1).view(f.size(0), -1))

    d = factor(f_s) - factor(f_t)
    return d.abs().mean() if p2 == 1 else d.pow(p2).mean()


# students for which RepDistiller's FT init stage uses lr 0.01 (helper/pretrain.py:22-25)
FT_INIT_LR_001 = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
)


@METHODS.register("ft")
class FT(_InitStage):
    """Factor Transfer (Kim et al., NeurIPS 2018) as RepDistiller (``train_student.py:239-253``): the init stage
    trains a ``Paraphraser`` of the teacher's last stage (``feat[-2]``) to reconstruct it (MSE,
    ``pretrain.py:68-71``; lr 0.01 for the CIFAR ResNet/WRN students, else the student's lr, ``pretrain.py:22-27``);
    then the student trains with ``ce * CE + beta * FactorTransfer(Translator(student last stage),
    Paraphraser.encoder(teacher last stage))``, beta 200 (``run_cifar_distill.sh:23``), the translator trained
    with the student, the paraphraser frozen (not in RepDistiller's ``trainable_list``; here no gradient reaches
    it). The init stage runs as part of the cell (``init_epochs`` 30).

    parity: RepDistiller@b84f547 distiller_zoo/FT.py:14 FactorTransfer.forward + models/util.py:7,44 Paraphraser,
    Translator (same seed: equal weights), resnet32x4/resnet8x4 last-stage shapes (256x8x8) and a 64x4x4 student
    map (pooling branch): main loss and gradient max relative difference 0.0e+00; init loss (MSELoss of the
    reconstruction, pretrain.py:68-71) and gradient 0.0e+00.
    """

    description = (
        "FT: an init stage (init_epochs, part of the cell) trains a paraphraser of the teacher's last "
        "stage, then ce*CE + beta*|factor_s - factor_t|, beta 200"
    )
    needs = Needs(student=("logits", "last_stage"), teacher=("last_stage",))  # feat[-2]
    params = feature_section("FT", 200.0, "scripts/run_cifar_distill.sh:23", init_epochs=_init_epochs())

    def setup(self, probe: Probe) -> None:
        c_s, c_t = probe.s.stages()[-1].shape[1], probe.t.stages()[-1].shape[1]
        self.paraphraser = Paraphraser(c_t)  # RepDistiller's order: paraphraser, then translator
        self.translator = Translator(c_s, c_t)
        set_trainable([self.paraphraser], False)  # trained by the init stage only (init_modules)

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        set_trainable([self.paraphraser], True)
        return [self.paraphraser]

    def init_lr(self, hp: dict[str, Any]) -> float:
        return 0.01 if hp.get("arch") in FT_INIT_LR_001 else float(hp["lr"])

    def init_loss(self, student, targets, teacher, ctx):
        f_t = teacher.stages()[-1]
        _, rec = self.paraphraser(f_t)
        return {"init": F.mse_loss(rec, f_t)}

    def loss(self, student, targets, teacher, ctx):
        factor_s = self.translator(student.stages()[-1])
        with torch.no_grad():  # the paraphraser is frozen after its init stage
            factor_t = self.paraphraser(teacher.stages()[-1], is_factor=True)
        ft = factor_transfer(factor_s, factor_t)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * ft}


# ------------------------------------------------------------------------------------------------------ FSP
def fsp_matrices(g: list[torch.Tensor]) -> list[torch.Tensor]:
    """RepDistiller ``distiller_zoo/FSP.py`` compute_fsp: for consecutive maps (the larger average-pooled to the
    smaller), the (C_bottom x C_top) matrix of spatial means of channel products."""
    out = []
    for bot, top in itertools.pairwise(g):
        bot, top = pool_to_smaller(bot, top)
        b = bot.unsqueeze(1).flatten(3)  # (N, 1, Cb, HW)
        t = top.unsqueeze(2).flatten(3)  # (N, Ct, 1, HW)
        out.append((b * t).mean(-1))  # (N, Ct, Cb)
    return out


def fsp_losses(g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per pair of consecutive maps, the mean squared difference of the student's and teacher's FSP matrices
    (``FSP.py:26``); where channel counts differ (RepDistiller raises ValueError), the larger matrix is
    average-pooled to the smaller (``feat_common.pool_matrix_to_smaller``)."""
    return [
        (s - t).pow(2).mean()
        for s, t in (pool_matrix_to_smaller(s, t) for s, t in zip(fsp_matrices(g_s), fsp_matrices(g_t)))
    ]


@METHODS.register("fsp")
class FSP(_InitStage):
    """FSP (Yim et al., CVPR 2017) as RepDistiller (``train_student.py:254-263``): the init stage trains the
    student's feature modules (all but the classifier head) on ``sum FSP(student maps, teacher maps)``
    (``pretrain.py:72-74``), the maps being the stem and every stage (``feat[:-1]``: the stem ``stage0`` where the
    model names one); the main stage is then plain ``ce * CE`` (RepDistiller's ``loss_kd = 0`` for fsp,
    ``loops.py:174-176``). -b 50 (``run_cifar_distill.sh:25``) weighs nothing. Deviations, only where
    RepDistiller's pairs never go: FSP matrices of different channel counts (RepDistiller raises ValueError) are
    compared after average-pooling the larger to the smaller; the models' map lists are zipped (the stages both
    have). The init stage runs as part of the cell (``init_epochs`` 30).

    parity: RepDistiller@b84f547 distiller_zoo/FSP.py:19 FSP.forward, resnet32x4/resnet8x4 stem + stage shapes
    (four maps, three matrices): init loss and gradient max relative difference 0.0e+00.
    """

    description = (
        "FSP: an init stage (init_epochs, part of the cell) fits the student's FSP matrices to the "
        "teacher's, then ce*CE"
    )
    needs = Needs(student=("logits", "stem_stages"), teacher=("stem_stages",))  # feat[:-1]
    params = feature_section("FSP", 50.0, "scripts/run_cifar_distill.sh:25", init_epochs=_init_epochs())

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return feature_modules(student)

    def init_loss(self, student, targets, teacher, ctx):
        return {"init": sum(fsp_losses(student.stages(stem=True), teacher.stages(stem=True)))}

    def loss(self, student, targets, teacher, ctx):
        return {"ce": self.cross_entropy(student, targets)}
