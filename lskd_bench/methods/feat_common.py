"""What the feature methods share: pairing stages of two networks and resizing maps to each other."""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import head_module


def paired(s: list[torch.Tensor], t: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stage i of the student with stage i of the teacher, for the stages both have (RepDistiller zips
    ``feat_s[1:-1]`` and ``feat_t[1:-1]``, which its pairs give the same length)."""
    if not s or not t:
        raise UsageError("a stage-wise method needs stages in both networks (lskd_bench.outputs found none)")
    return list(zip(s, t))


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps at the smaller one's spatial size (adaptive average pooling of the larger, as RepDistiller's
    AT, FSP and NST do when the sizes differ)."""
    ha, hb = a.shape[2], b.shape[2]
    if ha > hb:
        a = F.adaptive_avg_pool2d(a, (hb, b.shape[3]))
    elif hb > ha:
        b = F.adaptive_avg_pool2d(b, (ha, a.shape[3]))
    return a, b


def pool_matrix_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of matrices ``(N, R, C)`` at the smaller row and column counts (adaptive average pooling of
    the larger; for FSP matrices of maps with different channel counts this equals the FSP matrix of the maps
    with their channels average-pooled in groups, as the matrix is bilinear in the two maps)."""
    rows, cols = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])

    def fit(m: torch.Tensor) -> torch.Tensor:
        return m if m.shape[1:] == (rows, cols) else F.adaptive_avg_pool2d(m.unsqueeze(1), (rows, cols)).squeeze(1)

    return fit(a), fit(b)


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The model's top-level modules except its classifier head (``outputs.head_module``): RepDistiller's
    ``model.get_feat_modules()`` (every layer up to the last stage), what AB and FSP's init stage train."""
    head = head_module(model)
    return [m for m in model.children() if not any(sub is head for sub in m.modules())]


def set_trainable(modules: list[nn.Module], on: bool) -> None:
    """``requires_grad`` of every parameter of ``modules`` (parts trained by an init stage only)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(on)


def aligned_last(*lists: list) -> list[list]:
    """The last ``min(len)`` entries of each list: the deepest stages both networks have (mdistiller's
    ``_align_list``, distillers/OFD.py:163-165, used where a teacher has more stages than its student)."""
    n = min(len(x) for x in lists)
    return [list(x[len(x) - n :]) for x in lists]


def stage_keys(out: dict, pre: bool = False) -> list[str]:
    """The names of ``out``'s stages ``stage1..N`` (``pre``: ``preact_stage1..N``) in order."""
    rx = re.compile(r"preact_stage(\d+)$" if pre else r"stage(\d+)$")
    keys = [(int(m.group(1)), k) for k in out if (m := rx.match(k)) and m.group(1) != "0"]
    return [k for _, k in sorted(keys)]


def _probe_input(model: nn.Module, layout: Any) -> torch.Tensor | None:
    """An all-zero input batch of 2 at the resolution that reproduces the spatial sizes of ``layout.shapes``
    (the largest stage size times 1, 2, 4 or 8), or None."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    sizes = [s[1:] for k, s in layout.shapes.items() if k != "embedding" and len(s) == 3]
    if conv is None or not sizes:
        return None
    p = next(model.parameters())
    h, w = max(sizes)
    for f in (1, 2, 4, 8):
        x = torch.zeros(2, conv.in_channels, h * f, w * f, device=p.device, dtype=p.dtype)
        got: dict[str, tuple] = {}
        mods = dict(model.named_modules())
        hooks = [
            mods[path].register_forward_hook(lambda m, i, o, n=n, got=got: got.__setitem__(n, tuple(o.shape[1:])))
            for n, path in layout.stages.items()
        ]
        try:
            with torch.no_grad():
                model(x)
        except RuntimeError:
            continue
        finally:
            for hk in hooks:
                hk.remove()
        if all(got.get(n) == layout.shapes.get(n) for n in layout.stages):
            return x
    return None


def bn_before_preact(model: nn.Module, layout: Any, stages: list[str]) -> list[nn.BatchNorm2d]:
    """For each stage name (``stageK``), the BatchNorm2d whose output is that stage's pre-activation, or the
    first addend of it that is one and not an identity shortcut (a residual block's ``bn2(...) + shortcut``, an
    inverted residual's ``x + conv(x)``: the main path's last BN, what OFD's authors' ``get_bn_before_relu``
    lists by hand per architecture, clovaai/overhaul-distillation CIFAR-100/models/*.py). Found from the autograd
    graph of one hooked forward pass (eval mode, an all-zero input at the layout's resolution), so nothing per
    architecture; UsageError where there is none."""
    mods = dict(model.named_modules())
    missing = [s for s in stages if s not in layout.preact]
    if missing:
        raise UsageError(
            f"{type(model).__name__} has no pre-activation of {missing[0]} (it has: {', '.join(layout.names())})"
        )
    was_training = model.training
    model.eval()
    bn_of: dict[Any, nn.Module] = {}
    pre: dict[str, Any] = {}
    hooks: list = []
    try:
        x = _probe_input(model, layout)
        if x is None:
            raise UsageError(
                f"cannot find an input size for {type(model).__name__} that gives its stage shapes "
                f"{layout.shapes} (needed to find the BatchNorm before each pre-activation)"
            )
        hooks = [
            m.register_forward_hook(lambda mod, i, o: bn_of.__setitem__(o.grad_fn, mod))
            for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
        hooks += [
            mods[layout.preact[s]].register_forward_pre_hook(
                lambda mod, i, s=s: pre.__setitem__(s, i[0].grad_fn if len(i) == 1 else None)
            )  # several inputs (a concatenation, ShuffleNet-V2's): no one BN before it
            for s in stages
        ]
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            model(x.requires_grad_(True))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    def reaches(node: Any, target: Any) -> bool:
        """Is ``target`` computed on the way to ``node`` (an ancestor in the autograd graph)?"""
        seen, stack = set(), [node]
        while stack:
            n = stack.pop()
            if n is None or n in seen:
                continue
            if n is target:
                return True
            seen.add(n)
            stack.extend(f for f, _ in n.next_functions)
        return False

    def find(node: Any) -> nn.Module | None:
        if node is None:
            return None
        if node in bn_of:
            return bn_of[node]
        if type(node).__name__.startswith("AddBackward"):
            addends = [nxt for nxt, _ in node.next_functions if nxt is not None]
            # an identity shortcut is an addend the other one is computed from (MobileNet-V2's x + conv(x)): the
            # main path's BN is the other's; otherwise the first addend's (a ResNet's bn2(...) + downsample(x))
            main = [a for a in addends if not any(b is not a and reaches(b, a) for b in addends)]
            for nxt in main:
                found = find(nxt)
                if found is not None:
                    return found
        return None

    out = []
    for s in stages:
        bn = find(pre.get(s))
        if bn is None:
            raise UsageError(
                f"{type(model).__name__}: the pre-activation of {s} is not the output of a BatchNorm2d "
                f"(or a sum with one), which a margin from BN statistics needs"
            )
        out.append(bn)
    return out
