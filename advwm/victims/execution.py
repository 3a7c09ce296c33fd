"""How a victim's network runs, without changing what it computes: memory format and compilation.

Per-victim options (`victims.<name>.channels_last`, `victims.<name>.compile`; the `execution` config group
sets the defaults for all victims) because the best plan depends on the network and the device: on an H100
AttGAN and STGAN gained from channels_last + torch.compile in bf16 (DESIGN.md section 4), StarGAN's
train-mode InstanceNorm hands back the standard layout, and on the 2-core CPU neither paid (README, Speed).
`execution=gpu_fast` turns both on with trainer.precision=bf16-mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advwm.errors import ConfigError

# trainer.precision values the attack supports: fp32, or bf16 autocast of the victims. 16-mixed would need a
# gradient scaler that the attack's own autograd.grad calls bypass; *-true would cast the perturbation itself.
PRECISIONS = ("32-true", "32", "bf16-mixed")


def check_precision(precision: object) -> None:
    """Refuse a trainer.precision the attack cannot run correctly (one line saying what to use)."""
    if str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} is not supported by the attack: use 32-true (default) or "
                          "bf16-mixed (bf16 autocast of the victims; the perturbation stays fp32)")


@dataclass(frozen=True)
class ExecutionSettings:
    """The `execution` config group: every victim's default `channels_last` / `compile` and the trainer's
    precision (each victim's own key and `trainer.precision` can still override them)."""

    channels_last: bool = False
    compile: bool = False
    precision: str = "32-true"

    def __post_init__(self) -> None:
        check_precision(self.precision)


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the image argument (the first, 4-D) in channels_last, the others as given."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def use_channels_last(victim: nn.Module) -> nn.Module:
    """Store the network's 4-D weights in channels_last (NHWC) and hand it channels_last images.

    Convolutions then run NHWC kernels (tensor cores prefer them, especially in bf16); outputs agree with the
    standard layout up to floating-point rounding (different kernels)."""
    network = getattr(victim, "network", victim)
    network.to(memory_format=torch.channels_last)
    victim.register_forward_pre_hook(_channels_last_input)
    victim.channels_last = True
    return victim


def apply_execution(victim: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The victim with its execution options applied (channels_last first: compile traces the layout it sees).

    compile: `torch.compile(victim.network)`; the first steps compile (about a minute for StarGAN at 256 px,
    5-10 s with the on-disk cache warm), so it pays on long runs on an accelerator."""
    if channels_last:
        use_channels_last(victim)
    if compile:
        victim.network = torch.compile(victim.network)
    return victim
