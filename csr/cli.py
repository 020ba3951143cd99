"""The `csr` command: a Hydra app over conf/ that validates the config and runs the loop."""

from __future__ import annotations

import errno
import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from csr.config import validate
from csr.distributed import check_trainer
from csr.errors import CSRError

log = logging.getLogger("csr")
# Out of space, over quota, file too large, read-only file system: only a write fails this way.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# No permission: a write or a read (a prompt file, a checkpoint) may fail so.
ACCESS_ERRORS = {errno.EACCES, errno.EPERM}

# conf/ sits beside the package in the repository (installed with `pip install -e .`).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _quiet_libraries() -> None:
    """Keep the console for csr's own progress: Lightning's banners and tips say nothing about the run."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> float | None:
    from csr.loop import Loop

    _quiet_libraries()
    try:
        typed = validate(cfg)
        check_trainer(typed.trainer)
        result = Loop(typed).run()
    except CSRError as err:
        # A user-facing problem: the message names the file, record or key; no traceback needed.
        log.error("%s", err)
        sys.exit(2)
    except OSError as err:
        if err.errno not in WRITE_ERRORS | ACCESS_ERRORS:
            raise
        log.error("cannot %s %s: %s. Finished stages are kept and no partial file is read as complete: "
                  "free space or fix the permissions, then rerun the same command to resume.",
                  "write" if err.errno in WRITE_ERRORS else "access", err.filename or cfg.run_dir, err.strerror)
        sys.exit(2)
    rows = result.get("rows") if isinstance(result, dict) else None
    # Returned to Hydra sweepers (e.g. Optuna) as the objective: the last iteration's answer R_I.
    return rows[-1].get("answer R_I") if rows else None


def main() -> None:
    app()


class PrepareTrackingStore(Callback):
    """Parallel sweeps share one MLflow store: create it and the experiment once, before the runs
    start, or concurrent runs race to create the sqlite schema and the experiment."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from csr.tracking import Tracker

        lg = config.logger
        if lg.enabled and lg.tracking_uri:  # null = a store per run: nothing shared
            Tracker(Path(config.hydra.sweep.dir), True, lg.tracking_uri, lg.experiment_name)
