"""A third-party KD method for lskd-bench: reverse-KL distillation.

    (1 - lambda) * CE(y, s) + lambda * T^2 * KL(softmax(s/T) || softmax(t/T))

(the student's distribution first: mode-seeking instead of KD's mode-covering forward KL). Registered
through the ``lskd_bench.methods`` entry point in pyproject.toml; its parameters live in the config
section named after the entry point (``--set reverse_kd.lambda=0.7``).
"""

from __future__ import annotations

import torch.nn.functional as F

from lskd_bench.methods import Method
from lskd_bench.schema import Field, Section


class ReverseKD(Method):
    description = "reverse-KL KD: (1-lambda)*CE + lambda*T^2*KL(softmax(s/T) || softmax(t/T))"
    teacher_signal = "logits"  # the teacher's logits on the same batch
    uses_temperature = True  # one student per alpha x T of the grid
    params = Section({"lambda": Field(float, 0.5, "weight of the KD term", min=0.0, max=1.0)}, "reverse KD")

    def loss(self, student_logits, targets, teacher_logits, ctx):
        T, lam = float(ctx.T), self.p["lambda"]
        log_ps = F.log_softmax(student_logits / T, dim=-1)
        log_pt = F.log_softmax(teacher_logits / T, dim=-1)
        reverse = F.kl_div(log_pt, log_ps, log_target=True, reduction="batchmean")  # KL(p_s || p_t)
        return (1 - lam) * F.cross_entropy(student_logits, targets) + lam * T * T * reverse
