"""Which metrics to compute under DDP: those any process updated, the same ones on every process.

Why: computing a torchmetrics `Metric` synchronises its states across the processes (a collective), so every
process must compute the same metrics in the same order. A process whose share of the held-out faces is empty
(fewer faces than processes: 1 face on 2 GPUs) updated none of them; skipping them there, as a single process
rightly does, left the other processes waiting in the collective forever (judging never ended).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over the processes (None: one process)


def updated_anywhere(metrics: Mapping[str, Metric], reduce: Reduce | None) -> set[str]:
    """The keys of the metrics that some process updated (one collective for all of them under DDP)."""
    keys = list(metrics)
    counts = torch.tensor([float(metrics[key].update_count) for key in keys], dtype=torch.float64)
    if reduce is not None and keys:
        counts = reduce(counts)
    return {key for key, count in zip(keys, counts.tolist(), strict=True) if count > 0}


def compute(metric: Metric) -> Any:
    """`metric.compute()`, without torchmetrics' warning on a process that updated it nowhere: its states are the
    zero sums it contributes, and the value is the synchronised one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        return metric.compute()
