"""The real Hydra config of conf/ composed as the tests need it (outside the app: no hydra config)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from csr.cli import CONF_DIR

# run_dir, the MLflow store and the tiny paths interpolate ${hydra:runtime...}, which compose() without
# the hydra config cannot resolve; these stand in for them.
RUN = ["run_dir=/tmp/x", "logger.tracking_uri=sqlite:////tmp/x/mlflow.db"]
PATHS = [
    *RUN,
    "model.path=/m",
    "reward.clip.weights=/w",
    "reward.clip.config_json=/c.json",
    "data.prompt_file=/p.json",
    "data.image_root=/i",
    "data.shapesworld.root=/sw",
    "eval.shapesworld.root=/sw",
]


def compose_config(*overrides: str, paths: list[str] = PATHS) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*paths, *overrides], return_hydra_config=False)
