"""Entry point: `python -m advwm.run +victims=[stargan,attgan] aggregator=mgda` (see conf/config.yaml)."""

from __future__ import annotations

import logging
import warnings

import hydra
from omegaconf import DictConfig

from advwm import resolvers  # noqa: F401  (registers the config resolvers)
from advwm.attacks.module import NonFiniteLossError
from advwm.data import NoImagesError
from advwm.pipeline import ConfigError, craft, objective
from advwm.victims import CheckpointError, CheckpointNotFoundError

# Errors whose message already says what is wrong and what to do: shown as one line, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, CheckpointNotFoundError, NoImagesError, NonFiniteLossError)

log = logging.getLogger("advwm")


def quiet_third_party_noise() -> None:
    """Drop two messages that say nothing about a run: Lightning's advert for its cloud logger and a
    deprecation notice Lightning itself triggers inside torch.utils._pytree."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.getMessage()).startswith("\N{ELECTRIC LIGHT BULB} Tip:"))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Craft, judge and save a watermark; return the sweep objective (mean SR_mask over victims)."""
    quiet_third_party_noise()
    try:
        return objective(cfg, craft(cfg))
    except USER_ERRORS as error:
        log.error("%s", error)
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
