"""Several processes train what one process trains (``--nproc-per-node N``, DDP; gloo on the CPU, NCCL on GPUs).

The process count is not part of a cell's hash, so it must not change the result beyond float rounding. Each
rank loads ``batch_size / N`` samples of the global batch (``tasks.loading.train_plan``); the pieces that make
``N`` ranks equal one process:

- **the loss is the global batch's**: the student's and the teacher's outputs, the targets and the sample indices
  are gathered from every rank in rank order (``gather_step``), and every rank computes the method's loss on the
  whole batch. Methods whose loss couples the samples (RKD's distances, SP's and PKT's similarity matrices,
  DIST's relations, CRD's memory bank and its normaliser Z) then see what one process sees, and a method's own
  parts (connectors, embeddings, a learnt temperature, a memory bank) run on identical inputs on every rank, so
  their state stays identical rank for rank. The gathered rows pass back to each rank its own rows' gradient,
  times N, because DDP averages the model's gradients over the ranks (``GatherRows``);
- **a method's parameters** are averaged over the ranks after each backward (``average_grads``) as the student's
  are by DDP (their gradients are equal already: this keeps them so where a GPU kernel is not deterministic);
- **BatchNorm uses the statistics of the global batch** (``sync_batchnorm``: on by default under DDP; ``--set
  sync_batchnorm=false`` keeps per-rank statistics and then puts the process count into the cell's hash);
- **logged losses are the global batch's** (every rank holds the same).

What stays per rank: dropout masks (each rank draws its own samples' masks from the member's stream; the same
distribution as one process, not the same draws: models without dropout, as every image model here, are equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError


def world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ------------------------------------------------------------------------------------------ gathering rows
def row_counts(n: int, device: torch.device) -> list[int]:
    """Every rank's number of rows (``n`` here), in rank order."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t) for t in out]


def all_gather_rows(x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The rows of ``x`` of every rank concatenated in rank order (``counts``: every rank's row count; shorter
    pieces are padded for the collective and cut after it)."""
    most = max(counts)
    x = x.contiguous()
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    pieces = [torch.empty_like(x) for _ in counts]
    dist.all_gather(pieces, x)
    return torch.cat([p[:n] for p, n in zip(pieces, counts)])


class GatherRows(torch.autograd.Function):
    """``all_gather_rows`` with a gradient: every rank computes the same loss from the same gathered rows, so
    the gradient of this rank's rows is its slice of the output's gradient; it is multiplied by the world size
    because DDP divides the model's gradients by it (an exact power of two for 2, 4, 8 processes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: Sequence[int], rank: int) -> torch.Tensor:
        ctx.start, ctx.n, ctx.world = sum(counts[:rank]), counts[rank], len(counts)
        return all_gather_rows(x, counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.start : ctx.start + ctx.n] * ctx.world, None, None


def gather_rows(x: torch.Tensor, counts: Sequence[int], rank: int) -> torch.Tensor:
    """Every rank's rows of ``x`` (rank order); differentiable where ``x`` requires a gradient."""
    if x.requires_grad:
        return GatherRows.apply(x, list(counts), rank)
    return all_gather_rows(x, counts)


def gather_step(outputs: Any, targets: torch.Tensor, teacher: Any, indices: torch.Tensor | None) -> tuple:
    """(student outputs, targets, teacher outputs, indices) of the global batch: each tensor's rows from every
    rank in rank order. ``outputs``/``teacher`` are ``Outputs`` (name -> tensor with one row per sample or
    target position, as ``targets``); ``teacher`` may be None, tensors without rows (0-d) are kept as they are."""
    rank, _ = world()
    counts = row_counts(int(targets.shape[0]), targets.device)

    def rows(out: Any) -> Any:
        if out is None:
            return None
        return type(out)({k: gather_rows(v, counts, rank) if v.dim() > 0 else v for k, v in out.items()})

    idx = None if indices is None else all_gather_rows(indices, counts)
    return rows(outputs), all_gather_rows(targets, counts), rows(teacher), idx


# ------------------------------------------------------------------------------------------ gradients
def average_grads(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, as DDP does the model's (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    at = 0
    for g in grads:
        g.copy_(flat[at : at + g.numel()].view_as(g))
        at += g.numel()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks, differentiable (the gradient is summed over the ranks too)."""
    return _AllReduceSum.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


# ------------------------------------------------------------------------------------------ BatchNorm
def global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn``'s training-mode forward with the statistics of every rank's batch: per channel, the sums of
    ``x - shift`` and of its square (``shift`` the running mean, the same on every rank: it keeps the one-pass
    variance accurate) and the count, summed over the ranks in one all-reduce (float64); the running statistics
    updated as ``nn.BatchNorm`` does (unbiased variance, ``momentum`` or the cumulative average)."""
    c = x.shape[1]
    shape = (1, c, *([1] * (x.dim() - 2)))
    dims = [0, *range(2, x.dim())]
    xf = x.float()
    shift = bn.running_mean.detach().float() if bn.running_mean is not None else xf.new_zeros(c)
    xs = xf - shift.view(shape)
    local = torch.cat([xs.sum(dims).double(), (xs * xs).sum(dims).double(), xs.new_full((1,), xs.numel() / c).double()])
    total = all_reduce_sum(local)
    n = float(total[-1].detach())
    m1 = (total[:c] / n).float()
    var = ((total[c : 2 * c] / n).float() - m1 * m1).clamp_min(0)
    mean = shift + m1
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - f).add_(mean.detach().to(bn.running_mean.dtype), alpha=f)
            unbiased = var.detach() * (n / max(n - 1, 1))
            bn.running_var.mul_(1 - f).add_(unbiased.to(bn.running_var.dtype), alpha=f)
    y = (xf - mean.view(shape)) * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


class _GlobalBatchNorm:
    """Mixed into a BatchNorm class: the global batch's statistics in training mode under several processes,
    the class's own forward otherwise (one process, evaluation: bit for bit what it was)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and world()[1] > 1:
            return global_batch_norm(self, x)
        return super().forward(x)


_GLOBAL = {
    cls: type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {})
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
}


def sync_batchnorm(model: nn.Module, what: str) -> int:
    """Give every BatchNorm of ``model`` the global batch's statistics (its class swapped in place for a
    subclass: parameters, buffers, state_dict keys and hooks unchanged). Returns how many. A BatchNorm variant
    this cannot synchronise (its own forward, e.g. timm's BatchNormAct2d) is a ``UsageError`` naming it."""
    n = 0
    for name, m in model.named_modules():
        if type(m) in _GLOBAL:
            m.__class__ = _GLOBAL[type(m)]
            n += 1
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _GlobalBatchNorm):
            raise UsageError(
                f"{what}: {name or 'the model'} is a {type(m).__name__}, whose statistics lskd-bench cannot "
                "synchronise over processes: train it with --nproc-per-node 1, or accept per-rank statistics "
                "(--set sync_batchnorm=false, which puts the process count into the cell's hash)"
            )
    return n
