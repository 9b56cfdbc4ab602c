"""Components: the parts of a training member that own their state.

A member (``runners.member.Member``) keeps its model, optimizer, method and position (epoch, step, updates); every
other per-cell concern is a ``Component``: its random stream, the epoch's loss sums, the selected epoch and the
evaluations, the loggers, the checkpoint files, a method's trainable parts and initialisation stage, and optional
concerns such as an exponential moving average of the weights (``components.ema``). One protocol:

- ``key``: the name its state is kept under in a checkpoint (``state.pt``'s ``parts[key]``);
- ``state_dict()`` / ``load_state_dict(state)``: plain data and tensors (checkpoints load with ``weights_only``);
- ``params()``: parameters the student's optimizer trains besides the model's (a method's connectors);
- ``lead_epochs`` and ``stage(epoch)``: epochs this part trains before the main schedule, and the ``Stage`` that
  replaces the main step during them (RepDistiller's initialisation stages of AB, FT, FSP);
- ``optimizer(opt)``: the optimizer the main schedule steps, given the student's (an optimizer that keeps its own
  state per loss term wraps or replaces it; its state is checkpointed as the student's optimizer's);
- ``backward(terms, loss)``: do the step's backward pass itself (True) instead of ``loss.backward()`` (an optimizer
  that treats the loss terms apart);
- ``deployed(model)``: the model this cell is evaluated and exported as, given the student ``model`` (default: the
  student itself). A method whose inference is not the student's own forward (SimKD's projector and reused teacher
  classifier) returns a module that wraps the student; the evaluations, the selected epoch and result.json read
  it, the student's own weights stay ``model.pt`` (``runners.result_file.save_deployed``);
- hooks: ``on_step_end(cell, step)`` after each optimizer step, ``on_epoch_end(cell, entry)`` with the epoch's
  history entry (it may add keys), ``on_finish(cell, result)`` with result.json's record before it is written (it
  may add keys).

``cell`` in a hook is a ``Trainee``: what a component may read of its member. A method brings its components
through one hook, ``Method.components(site)``; optional per-cell concerns register in ``COMPONENTS`` (entry-point
group ``lskd_bench.components``) with their own config section, which enters a cell's hash only when it differs
from its defaults (a cell planned before the component existed keeps its name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..registry import Registry
from ..schema import Section


@dataclass
class StepInfo:
    """One finished optimizer step: the loss (detached, on the device), the learning rate, the update count."""

    loss: torch.Tensor
    lr: float
    update: int


class Trainee(Protocol):
    """What a component's hooks may read of the member they belong to."""

    model: nn.Module
    cfg: dict[str, Any]

    @property
    def dir(self) -> Path: ...

    @property
    def epoch(self) -> int: ...

    @property
    def update(self) -> int: ...

    def assess(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics of ``model`` (another set of the member's weights) on the evaluation split."""
        ...


@dataclass
class Stage:
    """A stage that replaces the main schedule's step for some epochs: ``modules`` train alone with ``loss`` (the
    method's stage loss) and their own optimizer ``opt`` at the constant ``lr``, or, given ``lr_at``, at
    ``lr_at(epoch)`` (the cell's 0-based epoch; SSKD's multistep schedule), the rest of the student in eval mode.
    ``name`` is written in the history entries of its epochs (``stage``)."""

    name: str
    modules: list[nn.Module]
    opt: torch.optim.Optimizer
    lr: float
    loss: Callable[..., Any]
    params: list[nn.Parameter] = field(default_factory=list)
    lr_at: Callable[[int], float] | None = None

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]

    def epoch_lr(self, epoch: int) -> float:
        """The stage's learning rate in ``epoch``, set on its optimizer when it has a schedule (``lr_at``; a
        constant-lr stage's optimizer is left as it was built)."""
        if self.lr_at is None:
            return self.lr
        lr = float(self.lr_at(epoch))
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def train_mode(self, model: nn.Module) -> None:
        model.eval()
        for m in self.modules:
            m.train()


class Component:
    """The base of every part of a member; every hook does nothing unless a subclass overrides it."""

    key: ClassVar[str] = ""
    lead_epochs: int = 0  # epochs trained by this part's stage before the main schedule

    def params(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        return None

    def stage(self, epoch: int) -> Stage | None:
        return None

    def optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return opt

    def backward(self, terms: Any, loss: torch.Tensor) -> bool:
        return False

    def deployed(self, model: nn.Module) -> nn.Module:
        return model

    def on_step_end(self, cell: Trainee, step: StepInfo) -> None:
        return None

    def on_epoch_end(self, cell: Trainee, entry: dict[str, Any]) -> None:
        return None

    def on_finish(self, cell: Trainee, result: dict[str, Any]) -> None:
        return None


class Parts:
    """A member's components in order (hooks run in this order), looked up by key."""

    def __init__(self, parts: list[Component]):
        keys = [p.key for p in parts]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice or "" in keys:
            raise ValueError(f"components need distinct, non-empty keys: {twice or keys}")
        self.items = list(parts)
        self._by_key = {p.key: p for p in parts}

    def __iter__(self) -> Iterator[Component]:
        return iter(self.items)

    def __getitem__(self, key: str) -> Any:
        return self._by_key[key]

    def get(self, key: str) -> Any:
        return self._by_key.get(key)

    def params(self) -> list[nn.Parameter]:
        return [p for part in self.items for p in part.params()]

    @property
    def lead_epochs(self) -> int:
        return sum(p.lead_epochs for p in self.items)

    def stage(self, epoch: int) -> Stage | None:
        """The stage that trains ``epoch`` (0-based), or None: the main schedule."""
        return next((s for p in self.items if (s := p.stage(epoch)) is not None), None)

    def optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for p in self.items:
            opt = p.optimizer(opt)
        return opt

    def backward(self, terms: Any, loss: torch.Tensor) -> None:
        if not any(p.backward(terms, loss) for p in self.items):
            loss.backward()

    def deployed(self, model: nn.Module) -> nn.Module:
        """The model the member is evaluated and exported as: ``model`` through each part's ``deployed``."""
        for p in self.items:
            model = p.deployed(model)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {p.key: p.state_dict() for p in self.items}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        """Each part's state by its key; a part absent from ``states`` (added since) keeps its fresh state."""
        for p in self.items:
            if p.key in states:
                p.load_state_dict(states[p.key])

    def on_step_end(self, cell: Trainee, step: StepInfo) -> None:
        for p in self.items:
            p.on_step_end(cell, step)

    def on_epoch_end(self, cell: Trainee, entry: dict[str, Any]) -> None:
        for p in self.items:
            p.on_epoch_end(cell, entry)

    def on_finish(self, cell: Trainee, result: dict[str, Any]) -> None:
        for p in self.items:
            p.on_finish(cell, result)


class CellComponent(Component):
    """An optional per-cell concern with its own config section ``section`` (named ``key``). ``build`` returns the
    part for one member, or None when the section leaves it off."""

    section: ClassVar[Section] = Section({})

    @classmethod
    def build(cls, params: dict[str, Any], cell: Trainee) -> Component | None:
        raise NotImplementedError


COMPONENTS: Registry[type[CellComponent]] = Registry(
    "component", "lskd_bench.components", builtin=("lskd_bench.components.ema",)
)


def component_sections() -> dict[str, Section]:
    """The config section of every registered component, by its key."""
    return {name: cls.section for name, cls in COMPONENTS.items()}


def component_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The components' part of a cell's identity: each section that differs from its defaults (its identity keys),
    under ``components``; nothing when every component is at its defaults (hashes planned before stay)."""
    out = {}
    for name, cls in COMPONENTS.items():
        if name in cfg and cls.section.identity(cfg[name]) != cls.section.identity(cls.section.defaults()):
            out[name] = cls.section.identity(cfg[name])
    return {"components": out} if out else {}


def cell_components(cfg: Mapping[str, Any], cell: Trainee) -> list[Component]:
    """The registered components a member's config turns on, in registry order."""
    parts = []
    for name, cls in COMPONENTS.items():
        part = cls.build(cfg[name], cell) if name in cfg else None
        if part is not None:
            parts.append(part)
    return parts


__all__ = [
    "COMPONENTS",
    "CellComponent",
    "Component",
    "Parts",
    "Stage",
    "StepInfo",
    "Trainee",
    "cell_components",
    "component_identity",
    "component_sections",
]
