"""Named outputs of an image classifier's forward pass, for the methods that read more than logits.

Names (the same tensors RepDistiller's ``is_feat=True`` / mdistiller's ``feats`` return for the CIFAR family):

- ``logits``: the model's output;
- ``embedding``: the pooled penultimate vector, the input of the final linear layer (``model.head``);
- ``stage0``: the stem's output, where the model's table names one (RepDistiller's ``feat[0]``; for timm models
  the first level of ``feature_info``, at reduction 2);
- ``stage1`` ... ``stageN``: the output of each stage (post-activation, ``feat[1:-1]``);
- ``pooled_map``: the feature map whose global average is ``embedding`` (the head's input before the global
  pooling: a ResNet's last stage, a WRN's map after its final BN and ReLU, a MobileNet-V2's after its last 1x1
  conv), where a module outputs it: found by the probe forward as the last 4-d output of a module other than a
  pooling one before the head runs, and offered only if its spatial mean equals the head's input there (CAT-KD's
  class activation maps);
- ``preact_stageK``: the same stage before its final activation (RepDistiller's ``preact=True``): where the
  model's table ``feature_preacts`` says (stage name -> the path of the module whose input is the
  pre-activation: lskd-bench's WRN, ShuffleNets and MobileNet-V2, whose pre-activations RepDistiller takes outside
  the stage or assembles from two tensors), else, for a stage the table does not list, where the stage ends in an
  activation module (its input);
- shorthands a method may declare: ``stages`` (every ``stage1..N`` of the model), ``preact_stages``,
  ``stem_stages`` (``stage0`` where the model has one, then every stage), ``last_stage`` (the deepest stage).

Where the stages are, per model, in this order of preference: the model's own table ``feature_stages``
(name -> module path: lskd-bench's CIFAR and digits models), timm's ``feature_info`` (every timm model), else a
probe forward that takes, at each spatial resolution, the last block-level module to produce it (other
torchvision and plain ``nn.Module`` backbones). Outputs are captured with forward hooks while a ``Tap`` is open
(a pre-activation is the input of its module, or the channel concatenation of its inputs where the module is
called with several, e.g. ``cifar_models.PreActivation``): no weights, and nothing is kept that no method asked
for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UsageError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh)
_STAGE = re.compile(r"(preact_)?stage(\d+)$")


class Outputs(dict):
    """name -> tensor of one forward pass; ``stages()`` lists ``stage1..N`` in order (``pre=True``: their
    pre-activations)."""

    def stages(self, pre: bool = False, stem: bool = False) -> list[torch.Tensor]:
        keys = [k for k in self if (m := _STAGE.match(k)) and bool(m.group(1)) == pre and (stem or m.group(2) != "0")]
        return [self[k] for k in sorted(keys, key=lambda k: int(_STAGE.match(k).group(2)))]


def head_module(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise UsageError(f"{type(model).__name__} has no final linear layer 'head' (its embedding cannot be read)")
    return head


def _modules_by_path(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


@dataclass
class Layout:
    """Where a model's named outputs come from: ``stages`` name -> module path, ``preact`` name -> the path of
    the module whose input is that stage's pre-activation (``preact_input``), ``pooled_map`` the path of the module
    whose output is the map global-pooled into the embedding (None: none found), ``shapes`` name -> per-sample
    shape."""

    stages: dict[str, str] = field(default_factory=dict)
    preact: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    pooled_map: str | None = None

    def names(self) -> list[str]:
        pooled = ["pooled_map"] if self.pooled_map else []
        return ["logits", "embedding", *self.stages, *(f"preact_{k}" for k in self.preact), *pooled]


def preact_input(inputs: tuple) -> torch.Tensor:
    """The pre-activation a module's forward pre-hook sees: its input (cloned: an activation may run in place), or
    the channel concatenation of its inputs where it is called with several (``cifar_models.PreActivation``)."""
    return inputs[0].clone() if len(inputs) == 1 else torch.cat(inputs, 1)


def _timm_stages(model: nn.Module) -> dict[str, str] | None:
    backbone = getattr(model, "backbone", None)
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return None
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    return {f"stage{i}": f"backbone.{d['module']}" for i, d in enumerate(entries)}


@torch.no_grad()
def describe(model: nn.Module, x: torch.Tensor) -> Layout:
    """The layout of ``model``'s named outputs, from one probe forward of ``x`` (eval mode; the caller's random
    state and the model's mode are left as they were)."""
    return look(model, x).layout


@dataclass
class Look:
    """One probe forward of a model: its ``layout`` and, where ``look`` was asked to keep them, the tensors of its
    named outputs, so that a probe's outputs need no second forward (``outputs``)."""

    layout: Layout
    logits: torch.Tensor | None = None
    kept: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)  # name -> (first capture, last value)
    x: torch.Tensor | None = None  # the probe batch

    def outputs(self, model: nn.Module, names: Iterable[str]) -> Outputs:
        """The named outputs ``names`` (shorthands expanded) and ``logits``: the tensors a ``Tap`` of ``names`` open
        during the same forward holds, in the order it captures them first (UsageError, as ``Tap``, for a name the
        model lacks). Where the forward did not leave one as a ``Tap`` takes it (a model that calls the pooled map's
        module again after its head, applies its head as a function, never calls a module its table names...),
        a second forward with a ``Tap`` gives them all (``probe_outputs``)."""
        wanted = Tap(model, self.layout, names).names
        if self.logits is None or self.x is None:
            raise ValueError("look(keep=False) keeps no outputs")
        if any(n not in self.kept for n in wanted):
            return probe_outputs(model, self.layout, wanted, self.x)
        order = sorted(wanted, key=lambda n: self.kept[n][0])
        return Outputs({**{n: self.kept[n][1] for n in order}, "logits": self.logits})


def probe_outputs(model: nn.Module, layout: Layout, names: Iterable[str], x: torch.Tensor) -> Outputs:
    """``model``'s named outputs ``names`` on ``x`` from a forward with a ``Tap`` (eval mode, no gradient, the
    caller's random state untouched)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), Tap(model, layout, names) as tap:
            logits = model(x)
    finally:
        model.train(was_training)
    return Outputs({**tap.out, "logits": logits})


@torch.no_grad()
def look(model: nn.Module, x: torch.Tensor, keep: bool = False, preacts: bool = False) -> Look:
    """``describe``'s probe forward; ``keep``: also the tensors of every named output of the layout (each where a
    ``Tap`` would take it: the last call of its module), ``preacts``: the pre-activations' too (cloned at each call,
    as ``Tap`` does). Only block-level outputs are held during the forward, not every module's."""
    mods = _modules_by_path(model)
    order: list[tuple[str, tuple[int, ...]]] = []  # (path, output shape) in order of completion
    calls: list[str] = []  # paths in order of call
    in_shape: dict[str, tuple[int, ...]] = {}  # path -> the shape of its input (channels summed over several)
    hooks = []
    table = getattr(model, "feature_stages", None) or _timm_stages(model)
    root = "backbone." if "backbone" in mods and "head" in mods else ""
    # what a named output can be: a stage's module (the table's, else a block-level one), the pooled map's (the
    # last 4-d output before the head), a pre-activation's module (the table's, or an activation)
    held = set(table.values()) if table else {p for p in mods if p.startswith(root) and p[len(root) :].count(".") <= 1}
    pre_table = set((getattr(model, "feature_preacts", None) or {}).values())
    first: dict[tuple[str, str], int] = {}  # ("in" | "out", path) -> the index of its first hook event
    last_out: dict[str, int] = {}  # path -> the index of its last output (a count of every module's outputs)
    out_of: dict[str, torch.Tensor] = {}  # held path -> its last output
    pre_of: dict[str, torch.Tensor | None] = {}  # path -> its last pre-activation input, cloned (None: not taken)

    def event(kind: str, p: str) -> None:
        first.setdefault((kind, p), len(first))

    def called(p: str, mod: nn.Module, inp: tuple) -> None:
        calls.append(p)
        event("in", p)
        ts = [t for t in inp if torch.is_tensor(t)]
        if ts and all(t.dim() == ts[0].dim() >= 2 for t in ts):
            in_shape[p] = (sum(t.shape[1] for t in ts), *ts[0].shape[2:])
        if preacts and (p in pre_table or isinstance(mod, ACTIVATIONS)):
            try:  # at every call, as a Tap's pre-hook (where that would fail, ``outputs`` runs the Tap itself)
                pre_of[p] = preact_input(inp)
            except Exception:
                pre_of[p] = None

    last_map: list = [None]  # (path, output) of the last module other than a pooling one to output a 4-d tensor
    map_at: list[int] = [0]  # the index of that output (as ``last_out``)

    def done(p: str, mod: nn.Module, out) -> None:
        order.append((p, tuple(out.shape[1:]) if torch.is_tensor(out) else ()))
        event("out", p)
        last_out[p] = len(order)
        if torch.is_tensor(out):
            if keep and p in held:
                out_of[p] = out
            if out.dim() == 4 and not isinstance(mod, POOLS):
                last_map[0] = (p, out)
                map_at[0] = len(order)

    for path, m in mods.items():
        if not path:
            continue
        hooks.append(m.register_forward_pre_hook(lambda mod, inp, p=path: called(p, mod, inp)))
        hooks.append(m.register_forward_hook(lambda mod, inp, out, p=path: done(p, mod, out)))
    head_in: list[tuple[int, ...]] = []
    before_head: list = []  # (last_map at the head's call, the head's input)

    map_mark: list[int] = [0]  # ``map_at`` at the head's last call

    def head_called(inp: tuple) -> None:
        head_in.append(tuple(inp[0].shape[1:]))
        before_head.append((last_map[0], inp[0]))
        map_mark[0] = map_at[0]
        event("head", "")

    hooks.append(head_module(model).register_forward_pre_hook(lambda mod, inp: head_called(inp)))
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            logits = model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    shape_of = {}
    for p, s in order:
        shape_of[p] = s  # the last call of a module (a ReLU used twice in a block) wins
    stages = table or _probe_stages(order, mods)
    stages = {k: v for k, v in stages.items() if v in mods}
    layout = Layout(stages=dict(stages), pooled_map=_pooled_map(before_head))
    layout.shapes = {"embedding": head_in[-1] if head_in else (), **{k: shape_of.get(v, ()) for k, v in stages.items()}}
    if layout.pooled_map:
        layout.shapes["pooled_map"] = tuple(before_head[-1][0][1].shape[1:])
    pre_paths = getattr(model, "feature_preacts", None) or {}
    parents = {q.rpartition(".")[0] for q in mods if "." in q}  # the paths that hold other modules
    for name, path in stages.items():
        if name in pre_paths:  # the model's own table; a stage it leaves out follows the rule below
            pre = pre_paths[name]
            if pre not in in_shape:
                continue
        else:
            inside = [p for p in calls if p == path or p.startswith(path + ".")]
            leaves = [p for p in inside if p not in parents]
            if not leaves or not isinstance(mods[leaves[-1]], ACTIVATIONS):
                continue
            pre = leaves[-1]
        layout.preact[name] = pre
        layout.shapes[f"preact_{name}"] = in_shape.get(pre, layout.shapes[name])
    if not keep:
        return Look(layout)
    kept = {k: (first["out", v], out_of[v]) for k, v in stages.items() if v in out_of}
    if before_head:
        kept["embedding"] = (first["head", ""], before_head[-1][1])
    if layout.pooled_map and last_out[layout.pooled_map] == map_mark[0]:  # its module's last output: a Tap's too
        kept["pooled_map"] = (first["out", layout.pooled_map], before_head[-1][0][1])
    pres = {f"preact_{k}": (first["in", v], pre_of.get(v)) for k, v in layout.preact.items()}
    kept.update({k: (i, t) for k, (i, t) in pres.items() if t is not None})
    return Look(layout, logits, kept, x)


POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.Flatten)


def _pooled_map(before_head: list) -> str | None:
    """The path of the module whose output, averaged over its positions, is the head's input (the last call of the
    head, and the last 4-d output of a module other than a pooling one before it), or None."""
    if not before_head or before_head[-1][0] is None:
        return None
    (path, fmap), emb = before_head[-1]
    emb = emb.flatten(1)
    if fmap.shape[0] != emb.shape[0] or fmap.shape[1] != emb.shape[1]:
        return None
    mean = fmap.float().mean(dim=(2, 3))
    return path if torch.allclose(mean, emb.float(), rtol=1e-4, atol=1e-5) else None


def _probe_stages(order: list[tuple[str, tuple[int, ...]]], mods: dict[str, nn.Module]) -> dict[str, str]:
    """``stage1..N``: at each spatial resolution, in the order the forward reaches them, the last block-level
    module (a child of a top-level container, or a top-level module) whose output has it; what follows the first
    global pooling is the head."""
    root = "backbone." if "backbone" in mods and "head" in mods else ""
    last: dict[tuple[int, int], str] = {}
    seen: list[tuple[int, int]] = []
    for path, shape in order:
        if not path.startswith(root) or path[len(root) :].count(".") > 1:
            continue
        if isinstance(mods[path], POOLS):
            break
        if len(shape) != 3:
            continue
        res = (shape[1], shape[2])
        if res not in last:
            seen.append(res)
        last[res] = path
    return {f"stage{i + 1}": last[r] for i, r in enumerate(seen)}


def expand(layout: Layout, names: Iterable[str]) -> list[str]:
    """``names`` with the shorthands resolved: ``stages`` = every ``stage1..N`` of the layout (not the stem
    ``stage0``), ``preact_stages`` = their pre-activations, ``stem_stages`` = the stem where the layout has one and
    every stage (RepDistiller's ``feat[:-1]``), ``last_stage`` = the deepest stage alone (``feat[-2]``)."""
    out: list[str] = []
    for n in names:
        if n == "stages":
            out += [k for k in _ordered(layout.stages) if k != "stage0"]
        elif n == "preact_stages":
            out += [f"preact_{k}" for k in _ordered(layout.stages) if k != "stage0"]
        elif n == "stem_stages":
            out += _ordered(layout.stages)
        elif n == "last_stage":
            out += _ordered(layout.stages)[-1:]
        else:
            out.append(n)
    return out


def _ordered(stages: dict[str, str]) -> list[str]:
    return sorted(stages, key=lambda k: int(_STAGE.match(k).group(2)))


class Tap:
    """Captures the named outputs ``names`` (all but ``logits``, which the caller has) of ``model`` during the
    forward passes made inside ``with tap:``; ``tap.out`` holds the last pass's tensors. Pre-activations are
    cloned when captured (the activation may run in place; ``preact_input``)."""

    def __init__(self, model: nn.Module, layout: Layout, names: Iterable[str]):
        self.model, self.layout = model, layout
        self.names = [n for n in dict.fromkeys(expand(layout, names)) if n != "logits"]
        missing = [
            n
            for n in self.names
            if n != "embedding"
            and not (n == "pooled_map" and layout.pooled_map)
            and n not in layout.stages
            and not (n.startswith("preact_") and n.removeprefix("preact_") in layout.preact)
        ]
        if missing:
            why = ""
            if missing[0].startswith("preact_") and missing[0].removeprefix("preact_") in layout.stages:
                why = "; its stage does not end in an activation module and the model lists no feature_preacts"
            if missing[0] == "pooled_map":
                why = "; no module outputs the map that it global-average-pools into its embedding"
            raise UsageError(
                f"{type(model).__name__} has no output {missing[0]!r} (it has: {', '.join(layout.names())}){why}"
            )
        self.out = Outputs()
        self._hooks: list = []

    def _put(self, name: str, value: torch.Tensor) -> None:
        self.out[name] = value

    def __enter__(self) -> Tap:
        self.out = Outputs()
        mods = _modules_by_path(self.model)
        for n in self.names:
            if n == "embedding":
                h = head_module(self.model).register_forward_pre_hook(lambda m, inp, n=n: self._put(n, inp[0]))
            elif n == "pooled_map":
                h = mods[self.layout.pooled_map].register_forward_hook(lambda m, inp, out, n=n: self._put(n, out))
            elif n.startswith("preact_"):
                path = self.layout.preact[n.removeprefix("preact_")]
                h = mods[path].register_forward_pre_hook(lambda m, inp, n=n: self._put(n, preact_input(inp)))
            else:
                h = mods[self.layout.stages[n]].register_forward_hook(lambda m, inp, out, n=n: self._put(n, out))
            self._hooks.append(h)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
