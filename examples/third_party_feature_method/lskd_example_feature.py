"""A third-party feature-KD method for lskd-bench: embedding cosine hints.

    ce * CE(y, s) + beta * mean(1 - cos(P(e_s), e_t))

e_s, e_t: the student's and teacher's pooled penultimate embeddings; P: a linear projector sized in setup()
from a probe forward, trained with the student, checkpointed, never exported with it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lskd_bench.methods import FeatureMethod, Needs, feature_section


class CosineHint(FeatureMethod):
    description = "embedding cosine hints: ce*CE + beta*(1 - cos(P(e_s), e_t)), P a learned projector"
    needs = Needs(student=("logits", "embedding"), teacher=("embedding",))  # named outputs it reads
    params = feature_section("cosine hints", beta=1.0, source="this example's choice")

    def setup(self, probe):
        self.proj = nn.Linear(probe.s["embedding"].shape[1], probe.t["embedding"].shape[1])

    def loss(self, student, targets, teacher, ctx):
        cos = F.cosine_similarity(self.proj(student["embedding"]), teacher["embedding"], dim=1)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * (1 - cos).mean()}
