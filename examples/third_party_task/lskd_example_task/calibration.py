"""A third-party metric for lskd-bench: expected calibration error (15 equal-width confidence bins, in percent).

Label smoothing and distillation both change how confident a network is; ECE measures how far its confidence
is from its accuracy. Registered through the ``lskd_bench.metrics`` entry point; any classification task can
report it (``--set 'metrics=[ece]'``), and the blobs task of this package always does.
"""

from __future__ import annotations

import torch

from lskd_bench.metrics import Metric, MetricSpec

BINS = 15


class ECE(Metric):
    spec = MetricSpec("ece", "expected calibration error (%)", higher_is_better=False, shown=False)

    def __init__(self):
        self.count = torch.zeros(BINS, dtype=torch.float64)
        self.confidence = torch.zeros(BINS, dtype=torch.float64)
        self.correct = torch.zeros(BINS, dtype=torch.float64)

    def update(self, logits, targets):
        conf, pred = logits.softmax(-1).max(-1)
        conf, hit = conf.double().cpu(), pred.eq(targets).double().cpu()
        b = (conf * BINS).long().clamp(max=BINS - 1)  # bin [i/15, (i+1)/15); a confidence of 1 in the last
        self.count.index_add_(0, b, torch.ones_like(conf))
        self.confidence.index_add_(0, b, conf)
        self.correct.index_add_(0, b, hit)

    def compute(self):
        n = self.count.sum().clamp(min=1)
        return float(100.0 * (self.correct - self.confidence).abs().sum() / n)
