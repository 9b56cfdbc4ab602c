"""A training member's own random-number state (dropout masks, augmentation drawn in the process), swapped in
around its work so that fused members draw what each would draw alone."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..components import Component


class RngState(Component):
    """The CPU generator's state and, on CUDA, the device's; captured from the process when built."""

    key = "rng"

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def scope(self):
        """This state in, around the caller's block; the process's own back afterwards (this one advanced)."""
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(outer)
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.cpu, "cuda_rng": self.cuda}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.cpu = st["rng"]
        if self.cuda is not None and st.get("cuda_rng") is not None:
            self.cuda = st["cuda_rng"]
