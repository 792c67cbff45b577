"""Megatron-LM's --wandb-project: the TensorBoard scalars, also sent to Weights & Biases.

Used when the `wandb` package is installed (it is not a megastack dependency). One W&B run per
process: the two phases of a growth run log into the same run, as they do into one TensorBoard
directory. `WANDB_MODE=offline` keeps everything in --wandb-save-dir (`wandb sync` uploads it
later), for clusters whose compute nodes have no network.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

logger = logging.getLogger(__name__)

_run: Any = None  # this process's W&B run, shared by the phases of a growth run


def wandb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


class WandbWriter:
    """`scalars(values, step)` as TensorBoardWriter's; the run ends with the process."""

    def __init__(self, project: str, name: Optional[str], save_dir: Optional[str],
                 entity: Optional[str], config: dict[str, Any]) -> None:
        global _run
        import wandb

        if _run is None:
            _run = wandb.init(project=project, name=name, dir=save_dir, entity=entity,
                              config=config)
            logger.info("logging to Weights & Biases: project %s, run %s", project,
                        getattr(_run, "name", name))
        self.run = _run

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def flush(self) -> None:
        pass  # wandb sends in the background

    def close(self) -> None:
        pass  # one run for the whole process: wandb finishes it at exit
