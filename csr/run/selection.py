"""Which iteration to keep: iterations gated on a held-out split.

With an `eval.select` block (its `metric`: `<evaluator>/<key>`, e.g. shapesworld/chair_s), every model the loop
evaluates (the base model and each iteration's merged model) is also scored by that evaluator on the
selection split `eval.select.split` (ShapesWorld: val), never on the split the run reports (eval's own)
nor on the one it trains on. The best score by `mode` is the run's selected iteration (a tie goes to the
earlier, less-trained model); with `patience` the loop stops once that many iterations in a row have not
beaten the best, and `iterations` is the most it runs. The choice reads only the selection split's
scores; the reported metrics of the selected iteration are then looked up once, after the choice.

Where it is kept: iter_<k>/eval/select/<evaluator>/ with its marker iter_<k>/eval/select.done.json,
inside the eval stage's directory, so that whatever removes an evaluation (a stage run under a changed
config, csr/run/stage_run.py) removes its selection score with it. The choice: run_info.json's "selection"
(csr/run/run_info.py), the summary's columns, tags of the MLflow parent run and the inspector's run page.
Its checkpoint is a path relative to the run directory (iter_<k>/merged), or model.path when the base
model is the best: a path written in JSON survives any copy of a run directory, where a `best/` link is
dropped or copied as a second set of weights (rsync -r, zip, shutil.copytree, MLflow artifacts), and the
base model lies outside the run directory anyway.

Scoring on the selection split leaves training alone: search seeds its own generator per batch, DPO
calls seed_everything at its start and greedy evaluation draws nothing, so a run with selection trains
exactly as one without (tests/test_select.py compares the two runs' outputs).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from csr.config.held_out import HELD_OUT, metric_parts
from csr.core.errors import CSRError

MARKER = "select"  # iter_<k>/eval/select.done.json; its outputs in iter_<k>/eval/select/


def selection_eval_cfg(cfg):
    """The run's eval config with the selection's overrides and the selecting evaluator pointed at the
    selection split."""
    name, _ = metric_parts(cfg.eval.select.metric)
    out = OmegaConf.merge(cfg.eval, cfg.eval.select.overrides)
    OmegaConf.update(out, HELD_OUT[name].eval_key.removeprefix("eval."), cfg.eval.select.split)
    return out


def selection_settings(cfg) -> dict:
    """What a selection score depends on besides the model: a score made otherwise is made again."""
    s = cfg.eval.select
    return {"evaluator": metric_parts(s.metric)[0], "split": s.split,
            "overrides": OmegaConf.to_container(s.overrides, resolve=True)}


def remove_selection(eval_dir: Path) -> None:
    """A selection score and its outputs (iter_<k>/eval/select.done.json, iter_<k>/eval/select/)."""
    (eval_dir / f"{MARKER}.done.json").unlink(missing_ok=True)
    shutil.rmtree(eval_dir / MARKER, ignore_errors=True)


def evaluate(ctx) -> dict:
    """Score the model iteration ctx.k produced on the selection split (csr/run/context.py StageContext):
    the selecting evaluator's metrics, namespaced `<evaluator>/<key>` as the eval stage's are."""
    from csr.core import progress

    cfg = ctx.cfg
    name, key = metric_parts(cfg.eval.select.metric)
    eval_cfg = selection_eval_cfg(cfg)
    out = ctx.iter_dir / "eval" / MARKER / name
    out.mkdir(parents=True, exist_ok=True)
    model, processor = ctx.policy(ctx.evaluated_path)
    with progress.stage(f"{name} on {cfg.eval.select.split} (selection)"):
        result = ctx.evaluators[name].run(
            model=model, processor=processor, family=ctx.family, scorer=ctx.scorer(), eval_cfg=eval_cfg,
            prompt_file=eval_cfg.prompt_file or cfg.data.prompt_file,
            image_root=eval_cfg.image_root or cfg.data.image_root,
            out_dir=out, trainer_kwargs=ctx.trainer_kwargs, on_error=cfg.data.on_error,
        )
    if not _is_number(result.get(key)):
        known = sorted(k for k, v in result.items() if _is_number(v))
        raise CSRError(f"config key 'eval.select.metric': evaluator {name!r} has no numeric metric {key!r}; "
                       f"it has {known}")
    return {f"{name}/{k}": v for k, v in result.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the choice: pure -----------------------------------------------------------------------------------


def best_iteration(values: Mapping[int, float], mode: str) -> int:
    """The iteration with the best value (`min` or `max`); a tie goes to the earlier iteration, and a
    value that is not finite (no answers to score) is never the best unless nothing else is."""
    sign = 1.0 if mode == "min" else -1.0
    return min(sorted(values), key=lambda k: sign * values[k] if math.isfinite(values[k]) else math.inf)


def patience_spent(values: Mapping[int, float], mode: str, patience: int | None) -> bool:
    """Whether the last `patience` iterations have all failed to beat the best before them."""
    if patience is None or not values:
        return False
    return max(values) - best_iteration(values, mode) >= patience


def selection_record(values: Mapping[int, float], select_cfg, reported: dict, reported_split: str | None,
                     base_model: str, stopped_early: bool) -> dict:
    """What the run records of its choice: the iteration, why, where its checkpoint is and its reported
    metrics (the eval stage's, on the reported split), looked up once the choice is made."""
    k = best_iteration(values, select_cfg.mode)
    return {
        "iteration": k, "metric": select_cfg.metric, "mode": select_cfg.mode, "split": select_cfg.split,
        "patience": select_cfg.patience, "value": values[k],
        "values": {str(i): v for i, v in sorted(values.items())},
        # relative to the run directory; the base model's own path when no iteration beat it
        "checkpoint": f"iter_{k}/merged" if k > 0 else base_model,
        "stopped_early": stopped_early,
        "reported_split": reported_split,
        "reported": reported,
    }


def selection_tags(record: dict) -> dict[str, str]:
    """The MLflow tags of the parent run."""
    return {
        "csr.selected_iteration": str(record["iteration"]),
        "csr.selected_by": f"{record['metric']} on {record['split']} ({record['mode']}): {record['value']:.6g}",
        "csr.selected_checkpoint": record["checkpoint"],
    }
