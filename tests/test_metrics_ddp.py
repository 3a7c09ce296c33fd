"""Metric states sync across processes: two gloo ranks on CPU, each with part of the data, equal one process.

The ranks meet through a file store (no TCP port to race for, no store server thread in rank 0) and wait for
each other before leaving: under load one rank used to tear down and exit while the other was still talking
to it, and the survivor aborted ("terminate called without an active exception", SIGABRT in gloo).
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N_IMAGES = 7  # odd: the ranks get 4 and 3 images


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, G(x), G(x + delta): an edited region (for the mask) and per-image distortions on both sides of 0.05."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_IMAGES, 3, 8, 8, generator=g) * 2 - 1
    fake_clean = x.clone()
    fake_clean[:, :, 2:6, 2:6] += 0.5  # sum over channels of |G(x) - x| = 1.5 > 0.5 there
    scale = torch.linspace(0.02, 0.5, N_IMAGES).reshape(N_IMAGES, 1, 1, 1)
    fake_adv = fake_clean + scale * torch.randn(x.shape, generator=g)
    fake_clean[3] = x[3]  # one empty mask
    return x, fake_clean, fake_adv


def _metrics() -> dict:
    from advwm.metrics import AttackRate, AverageDistortion, L2Mask, Liveness, PerImagePSNR, RuizSuccess, SRMask

    return {
        "sr_mask": SRMask(),
        "l2_mask": L2Mask(),
        "avg_l": AverageDistortion(),
        "attack_rate": AttackRate(),
        "ruiz": RuizSuccess(),
        "psnr": PerImagePSNR(),
        "liveness": Liveness(),
    }


def _update(metrics: dict, index: slice) -> None:
    x, fake_clean, fake_adv = _data()
    x, fake_clean, fake_adv = x[index], fake_clean[index], fake_adv[index]
    for name, metric in metrics.items():
        if name in ("sr_mask", "l2_mask"):
            metric.update(x, fake_clean, fake_adv)
        elif name == "psnr":
            metric.update(fake_adv, fake_clean)
        elif name == "liveness":
            metric.update(torch.sigmoid(fake_adv.mean(dim=(1, 2, 3)) * 40))  # stand-in scores around 0.99
        else:
            metric.update(fake_clean, fake_adv)


def _compute(metrics: dict) -> dict[str, float]:
    """compute() of every metric (collective under DDP: every rank calls it the same number of times)."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        if isinstance(value, dict):
            out.update({f"{name}/{k}": float(v) for k, v in value.items()})
        else:
            out[name] = float(value)
    # SRMask.empty_count() is not a compute(): it reads the local state, unsynced (checked below as a sum).
    out["local/sr_mask_empty"] = float(metrics["sr_mask"].empty_count())
    return out


def _worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=timedelta(minutes=30))
    try:
        # contiguous split, uneven: rank 0 gets 4 images (in two updates), rank 1 gets 3
        metrics = _metrics()
        if rank == 0:
            _update(metrics, slice(0, 2))
            _update(metrics, slice(2, 4))
        else:
            _update(metrics, slice(4, N_IMAGES))
        result = _compute(metrics)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank leaves while the other still needs it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
def test_two_process_sync_equals_single_process(tmp_path):
    torch.set_num_threads(1)
    metrics = _metrics()
    _update(metrics, slice(0, N_IMAGES))
    single = _compute(metrics)
    assert 0 < single["sr_mask"] < 1 and 0 < single["attack_rate"] < 1 and single["local/sr_mask_empty"] == 1
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for rank, synced in enumerate(results):
        assert synced.keys() == single.keys()
        for key, value in single.items():
            if not key.startswith("local/"):
                assert math.isclose(synced[key], value, rel_tol=1e-12, abs_tol=1e-12), (rank, key, synced[key], value)
    assert sum(r["local/sr_mask_empty"] for r in results) == single["local/sr_mask_empty"]
