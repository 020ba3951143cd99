"""The iteration driver: the only place that knows the order of the stages.

run_dir/
  config.yaml              resolved config; a resume may change only what resume.allow_changes names
                           (config.<n>.yaml + config_changes.json, see csr/run/run_dir.py)
  iter_0/metrics.json      evaluation of the starting model
  iter_k/search.jsonl -> rewards.jsonl -> pairs.jsonl (+ exports) -> adapter/ -> merged/ -> eval/, metrics.json
  iter_k/eval/select/      with eval.select: the model scored on the selection split (csr/run/selection.py)
Each finished stage leaves `<stage>.done.json`; rerunning the same command skips those and resumes
the unfinished stage from its partial output.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from csr.config.schema import Stage
from csr.core import progress, signals
from csr.core.distributed import (
    barrier,
    is_global_zero,
    predict_strategy,
    rank_zero_done,
    rank_zero_value,
    start_ranks,
)
from csr.core.errors import CSRError
from csr.core.io import (
    atomic_write_json,
    atomic_write_text,
    done_made_from,
    done_stats,
    is_done,
    mark_done,
    read_json,
    remove_stale_temp_files,
)
from csr.core.lock import run_lock
from csr.core.tracking import Tracker, flatten
from csr.run.context import StageContext
from csr.run.inputs import made_from, record_inputs, stale_input
from csr.run.run_dir import (
    CHANGES,
    RUN_INFO,
    change_tags,
    check_resume,
    check_run_dir,
    hydra_outputs,
    make_run_dir,
    record_config,
)
from csr.run.run_info import record_selection, run_info, run_info_params, started_as, sweep_run_name
from csr.run.selection import (
    HELD_OUT,
    best_iteration,
    metric_parts,
    patience_spent,
    remove_selection,
    selection_record,
    selection_settings,
    selection_tags,
)
from csr.run.selection import MARKER as SELECT
from csr.run.stage_run import STAGES as ITERATION_STAGES
from csr.worlds import evaluators, world_of

log = logging.getLogger(__name__)

# Each stage's module: its `run(ctx: StageContext) -> dict` is the stage (csr/run/context.py). Imported
# when the stage runs, so that `csr` checks its config before any model library loads.
STAGE_MODULES = {"search": "csr.search.stage", "reward": "csr.reward.stage", "pairs": "csr.pairs.build",
                 "dpo": "csr.dpo.stage", "merge": "csr.merge.stage", "eval": "csr.eval.stage"}
# Stages that only read and write files: under several devices rank 0 runs them alone.
RANK_ZERO_STAGES = ("pairs", "merge")


class Loop:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir).resolve()
        self.info = run_info()
        # A no-op until the run directory is held (run): MLflow may create its store there.
        self.tracker = Tracker(self.run_dir, False, None, cfg.logger.experiment_name)
        self.change: dict | None = None  # this start's accepted config change (csr/run/run_dir.py)
        self.params = flatten(OmegaConf.to_container(cfg, resolve=True))
        self._policy: tuple[str, object, object] | None = None
        self.world = world_of(cfg.data)
        self._scorer = None

    # -- config and paths ---------------------------------------------------------------------------

    @contextmanager
    def open_run_dir(self) -> Iterator[None]:
        """Hold the run directory: refuse a file, someone else's directory, a run in use and a changed
        config (csr/run/run_dir.py) before writing anything, then write this start's run_info and config."""
        text, allowed = OmegaConf.to_yaml(self.cfg, resolve=True), list(self.cfg.resume.allow_changes)
        alone = self.cfg.stage != "all"  # a stage run alone may change any key (csr/run/stage_run.py)
        resume = check_run_dir(self.run_dir, hydra_outputs(self.run_dir))  # only reads
        if resume:
            check_resume(self.run_dir, text, allowed, alone)  # refused before even the lock file is touched
        make_run_dir(self.run_dir)
        with run_lock(self.run_dir):
            diff = check_resume(self.run_dir, text, allowed, alone) if resume else {}  # again, now that no one writes
            remove_stale_temp_files(self.run_dir)
            # What `csr-reproduce` needs besides the config: overrides, package and library versions, commit.
            self._save_once("run_info", ".json", json.dumps(self.info, indent=2) + "\n", started_as)
            self.change = record_config(self.run_dir, text, diff, self.finished(), alone)
            record_inputs(self.run_dir, OmegaConf.to_container(self.cfg, resolve=True))  # csr/run/inputs.py
            yield

    def finished(self) -> list[str]:
        """The stages with a marker, in loop order: iter_0/eval, iter_1/search, ..."""
        ks = sorted(int(d.name[5:]) for d in self.run_dir.glob("iter_*") if d.name[5:].isdigit())
        return [f"iter_{k}/{s}" for k in ks for s in ITERATION_STAGES if is_done(self.iter_dir(k), s)]

    def _save_once(self, stem: str, suffix: str, text: str, saved=Path.read_text) -> None:
        """saved: the file's text as a start wrote it (run_info.json gains the selection at the end)."""
        path = self.run_dir / f"{stem}{suffix}"
        if not path.exists():
            atomic_write_text(path, text)
        elif saved(path) != text:  # a resume with other overrides: keep both, never overwrite
            n = len(list(self.run_dir.glob(f"{stem}.*{suffix}"))) + 1
            atomic_write_text(self.run_dir / f"{stem}.{n}{suffix}", text)
            log.warning("%s differs from %s; saved this start's as %s.%d%s", stem, path, stem, n, suffix)

    def iter_dir(self, k: int) -> Path:
        return self.run_dir / f"iter_{k}"

    def model_path(self, k: int) -> str:
        """The policy iteration k starts from: the base model, then the previous merged model."""
        return self.cfg.model.path if k <= 1 else str(self.iter_dir(k - 1) / "merged")

    def context(self, k: int, run_id: str | None) -> StageContext:
        return StageContext(
            cfg=self.cfg, k=k, iter_dir=self.iter_dir(k), model_path=self.model_path(k),
            evaluated_path=self.model_path(k + 1), trainer_kwargs=self.trainer_kwargs(), family=self.family,
            policy=self.policy, scorer=self.scorer, release_policy=self.release_policy,
            logger=lambda: self.tracker.lightning_logger(run_id), evaluators=evaluators(),
        )

    def release_policy(self) -> None:
        self._policy = None
        gc.collect()

    def trainer_kwargs(self) -> dict:
        t = self.cfg.trainer
        return {"accelerator": t.accelerator, "devices": t.devices, "num_nodes": t.num_nodes,
                "precision": t.precision, "deterministic": t.deterministic, "strategy": predict_strategy(t)}

    # -- models, loaded lazily and shared between the stages of an iteration --------------------------

    @functools.cached_property
    def family(self):
        """model.family's adapter (csr/models/families/), resolved once for the run and handed to every
        stage in its context; each load checks the checkpoint's model_type against it (load_model)."""
        from csr.models.families import get_family

        return get_family(self.cfg.model.family)

    def policy(self, path: str):
        from csr.models.checkpoint import load_model

        if self._policy is None or self._policy[0] != path:
            self._policy = None
            gc.collect()
            m = self.cfg.model
            model, processor = load_model(path, self.family, dtype=m.dtype, attn_implementation=m.attn_implementation)
            self._policy = (path, model, processor)
        return self._policy[1], self._policy[2]

    def scorer(self):
        from csr.models.clip import ClipScorer, load_clip

        if self._scorer is None:
            c = self.cfg.reward.clip
            self._scorer = ClipScorer(load_clip(c.arch, c.weights, c.config_json))
        return self._scorer

    # -- stages ---------------------------------------------------------------------------------------

    def run_stage(self, stage: str, k: int, run_id: str | None) -> dict:
        d = self.iter_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        start = time.time()
        if stage in RANK_ZERO_STAGES and not is_global_zero():
            rank_zero_done(f"iteration {k} {stage}")  # no timeout: rank 0's merge may take longer than one
            return {}
        signals.check()  # a safe point: a signal Python dropped in a finaliser (csr/core/signals.py) stops here
        log.info("iteration %d: %s", k, stage)
        sources = made_from(self.run_dir, k, stage) if is_global_zero() else None  # what it reads, as it starts
        with progress.stage(f"iteration {k} {stage}"):
            stats = importlib.import_module(STAGE_MODULES[stage]).run(self.context(k, run_id))
            if stage == "pairs" and self.world is not None:  # ground truth known: is the reward right?
                stats.update(self.world.diagnose_pairs(self.cfg.data, d / "pairs.jsonl"))
        stats["seconds"] = round(time.time() - start, 3)
        if not is_global_zero():
            return stats
        mark_done(d, stage, stats, sources)
        self.tracker.log_metrics(run_id, stats, prefix=f"{stage}/")
        log.info("iteration %d: %s done in %.1fs", k, stage, stats["seconds"])
        if stage in RANK_ZERO_STAGES:
            rank_zero_done(f"iteration {k} {stage}")
        return stats

    # -- iterations -----------------------------------------------------------------------------------

    def iteration(self, k: int, stages=ITERATION_STAGES, force: bool = False) -> dict:
        # Iteration 0 (the base model's evaluation) has no nested run: its metrics go to the parent.
        run_id = self.tracker.iteration(k, self.params) if k > 0 else self.tracker.ids.get("parent")
        d = self.iter_dir(k)
        for stage in stages:
            barrier()  # every rank sees the files of the stage before
            todo = rank_zero_value(force or not is_done(d, stage))  # one answer, though rank 0's marker may lag elsewhere
            if not todo:
                self.check_made_from(k, stage)
            barrier()  # every rank has decided before rank 0 can mark this stage done
            if todo:
                self.run_stage(stage, k, run_id)
        if self.selecting and "eval" in stages:
            self.select_eval(k, run_id)
        barrier()
        # Every finished stage, not only those run now: a single-stage run must not drop the others.
        metrics = {s: done_stats(d, s) for s in ITERATION_STAGES if is_done(d, s)}
        if is_done(d / "eval", SELECT):
            metrics["select"] = done_stats(d / "eval", SELECT)
        if "eval" in metrics:
            metrics["eval"].update(self.selected_harness_metrics(k))
        if not is_global_zero():
            return metrics
        atomic_write_json(d / "metrics.json", metrics)
        self.tracker.log_artifact(run_id, d / "metrics.json")
        if k > 0:  # iteration 0 already logged into the parent
            for block in ("eval", "select"):
                if block in metrics:
                    self.tracker.log_metrics(self.tracker.ids.get("parent"), metrics[block], step=k, prefix=f"{block}/")
        if k > 0 and all(is_done(d, s) for s in ITERATION_STAGES):
            self.tracker.finish(run_id)
        return metrics

    def check_made_from(self, k: int, stage: str) -> None:
        """Refuse to go on from a finished stage whose input was rebuilt or replaced since (csr/run/inputs.py)."""
        stale = rank_zero_value(stale_input(self.run_dir, k, stage, done_made_from(self.iter_dir(k), stage))
                                if is_global_zero() else None)
        if stale is not None:
            raise CSRError(f"{self.iter_dir(k)}/{stage}.done.json: iteration {k}'s {stage} was made from {stale} as it "
                           f"was then, which has changed since (rebuilt or replaced): redo it and what follows with "
                           f"`csr stage={stage} iteration={k} run_dir={self.run_dir}`, or restore {stale}")

    # -- the selected iteration (csr/run/selection.py) ---------------------------------------------------------

    @property
    def selecting(self) -> bool:
        return self.cfg.eval.select is not None

    def select_eval(self, k: int, run_id: str | None) -> None:
        """Score iteration k's evaluated model on the selection split, once: inside eval/, so that what
        removes the evaluation (csr/run/stage_run.py) removes this score too."""
        d = self.iter_dir(k) / "eval"
        settings = selection_settings(self.cfg)
        barrier()
        done = done_stats(d, SELECT)
        todo = is_done(self.iter_dir(k), "eval") and (done is None or done.get("selection") != settings)
        if not rank_zero_value(todo):
            return
        from csr.run.selection import evaluate

        if done is not None and is_global_zero():  # scored under other selection settings (an allowed change): anew
            log.warning("iteration %d: the selection score was made with %s; scoring again with %s", k,
                        done.get("selection"), settings)
            remove_selection(d)
        barrier()
        start = time.time()
        log.info("iteration %d: selection on %s", k, self.cfg.eval.select.split)
        stats = {**evaluate(self.context(k, run_id)), "selection": settings}
        stats["seconds"] = round(time.time() - start, 3)
        if is_global_zero():
            mark_done(d, SELECT, stats)
            self.tracker.log_metrics(run_id, stats, prefix="select/")
            log.info("iteration %d: %s on %s = %.4f", k, self.cfg.eval.select.metric, self.cfg.eval.select.split,
                     stats[self.cfg.eval.select.metric])

    def selection_values(self, upto: int) -> dict[int, float]:
        """Iteration -> its selection score, for the iterations up to `upto` that have one."""
        found = {k: done_stats(self.iter_dir(k) / "eval", SELECT) or {} for k in range(0, upto + 1)}
        return {k: stats[self.cfg.eval.select.metric] for k, stats in found.items() if self.cfg.eval.select.metric in stats}

    def stop_early(self, k: int) -> bool:
        """With eval.select.patience: whether iterations up to k have spent it before the last iteration
        (every rank the same answer)."""
        s = self.cfg.eval.select
        if s is None or k >= self.cfg.iterations:
            return False
        values = self.selection_values(k) if is_global_zero() else {}
        spent = rank_zero_value(patience_spent(values, s.mode, s.patience))
        if spent and is_global_zero():
            best = best_iteration(values, s.mode)
            log.info("iteration %d: %s on %s has not beaten iteration %d's %.4f for %d iteration(s) "
                     "(eval.select.patience): no further iteration", k, s.metric, s.split, best, values[best], k - best)
        return spent

    def selection(self, rows: dict[int, dict]) -> dict | None:
        """The run's choice over the iterations it evaluated, with the selected one's reported metrics."""
        s = self.cfg.eval.select
        values = {k: m["select"][s.metric] for k, m in rows.items() if s.metric in m.get("select", {})} if s is not None else {}
        if not values:
            return None
        k = best_iteration(values, s.mode)
        last = max(rows)
        stopped = last < self.cfg.iterations and patience_spent(values, s.mode, s.patience)
        held = HELD_OUT[metric_parts(s.metric)[0]]
        return selection_record(values, s, rows[k].get("eval", {}), OmegaConf.select(self.cfg, held.eval_key),
                                self.cfg.model.path, stopped)

    def selected_harness_metrics(self, k: int) -> dict:
        """The metrics of the harnesses with only_selected that ran on iteration k's model (it was selected)."""
        from csr.eval.harness import selected_only

        found = {name: done_stats(self.iter_dir(k) / "eval", f"selected_{name}") for name in selected_only(self.cfg.eval)}
        return {f"{name}/{key}": v for name, stats in found.items() if stats is not None for key, v in stats.items()}

    def evaluate_selected(self, selection: dict, rows: dict[int, dict]) -> CSRError | None:
        """The harnesses with only_selected, once, on the selected iteration's model; their metrics join that
        iteration's row (and metrics.json, MLflow). Kept inside its eval/ like the selection score, so that
        whatever removes the evaluation removes them too. A failure is returned, for after the summary."""
        from csr.eval.harness import HarnessFailed, evaluate_checkpoint, selected_only

        k = selection["iteration"]
        d = self.iter_dir(k)
        checkpoint = self.model_path(k + 1)  # the model iteration k evaluated, as its context's evaluated_path
        failure = None
        for name in selected_only(self.cfg.eval):
            if is_done(d / "eval", f"selected_{name}"):
                continue
            log.info("iteration %d (selected): %s", k, name)
            try:
                stats = evaluate_checkpoint(name, self.cfg.eval[name], checkpoint, d / "eval" / name,
                                            self.cfg.trainer.accelerator, self.cfg.model.dtype)
            except HarnessFailed as err:
                failure = err
                continue
            mark_done(d / "eval", f"selected_{name}", stats)
        metrics = {**read_json(d / "metrics.json")}
        metrics["eval"] = {**metrics.get("eval", {}), **self.selected_harness_metrics(k)}
        atomic_write_json(d / "metrics.json", metrics)
        rows[k] = metrics
        parent = self.tracker.ids.get("parent")
        self.tracker.log_metrics(parent, metrics["eval"], step=k, prefix="eval/")
        if k > 0:
            self.tracker.log_metrics(self.tracker.iteration(k, self.params), metrics["eval"], prefix="eval/")
        return failure

    def base_eval(self) -> dict:
        return self.iteration(0, stages=("eval",))

    def first_unfinished(self) -> int:
        for k in range(1, self.cfg.iterations + 1):
            if not all(is_done(self.iter_dir(k), s) for s in ITERATION_STAGES):
                return k
        return self.cfg.iterations

    def prepare_data(self) -> None:
        if self.world is not None:
            self.world.prepare(self.cfg.data)
        # The prompts are first read by iteration 1's search, after the base model's evaluation: a wrong
        # path must fail at start, not minutes in.
        reads_prompts = self.cfg.stage == "search" or self.cfg.stage == "all" and any(
            not is_done(self.iter_dir(k), "search") for k in range(1, self.cfg.iterations + 1))
        prompts = Path(self.cfg.data.prompt_file)
        if reads_prompts and not prompts.exists():  # a directory: load_prompts below says so
            raise CSRError(f"{prompts}: prompt file not found (config key 'data.prompt_file')")
        if reads_prompts:  # and a bad record too (or its counted skip): read it whole now, as the search will
            from csr.data.prompts import load_prompts

            load_prompts(str(prompts), self.cfg.data.image_root, on_error=self.cfg.data.on_error)

    def run(self) -> dict:
        start_ranks(self.cfg.trainer)  # srun / torchrun: all ranks meet here before any file is read
        # Only the first process of a multi-device run owns the directory; the others only read it.
        with self.open_run_dir() if is_global_zero() else nullcontext():
            barrier()  # the others go on once rank 0 holds the directory and has removed stale temp files
            return self._run()

    def _run(self) -> dict:
        lg = self.cfg.logger
        self.tracker = Tracker(self.run_dir, lg.enabled and is_global_zero(), lg.tracking_uri, lg.experiment_name)
        self.prepare_data()
        name = self.cfg.logger.run_name or sweep_run_name() or self.run_dir.name
        parent = self.tracker.parent(name,
                                     {**self.params, **run_info_params(self.info)})
        self.tracker.log_artifact(parent, self.run_dir / "config.yaml")
        self.tracker.log_artifact(parent, self.run_dir / "run_info.json")
        if self.change:  # params cannot change once logged: the change goes in as tags and files
            self.tracker.set_tags(parent, change_tags(self.change))
            self.tracker.log_artifact(parent, self.run_dir / self.change["config"])
            self.tracker.log_artifact(parent, self.run_dir / CHANGES)
        status = "FAILED"
        if is_global_zero():
            log.info("run directory: %s (%s)", self.run_dir, "resumed" if self.finished() else "new")
        try:
            stage = Stage(self.cfg.stage)
            if stage is Stage.all:
                if self.cfg.eval.at_base:
                    self.base_eval()
                for k in range(1, self.cfg.iterations + 1):
                    self.iteration(k)
                    if self.stop_early(k):
                        break
                result = self.summary() if is_global_zero() else {}
            else:
                result = self.stage_alone(stage.value)
            status = "FINISHED"
            if is_global_zero():
                log.info("done: %s (%s)", self.run_dir,
                         "summary.md" if (self.run_dir / "summary.md").exists() else "its stage outputs")
            return result
        finally:
            self.tracker.finish(parent, status)

    def stage_iteration(self, stage: str) -> int:
        from csr.run.stage_run import stage_iteration

        return self.cfg.iteration if self.cfg.iteration is not None else \
            stage_iteration(self.run_dir, stage, self.cfg.iterations)

    def stage_alone(self, stage: str) -> dict:
        """Run one stage. Under a changed config: from scratch, dropping what it invalidates, and the
        summary written again; with the run's config: its output is completed (resumed), the rest kept."""
        from csr.run.stage_run import describe, invalidate

        k = rank_zero_value(self.stage_iteration(stage))  # before rank 0 removes the outputs it invalidates
        # Redone from scratch too when what it was made from changed since (csr/run/inputs.py)
        stale = rank_zero_value(stale_input(self.run_dir, k, stage, done_made_from(self.iter_dir(k), stage))
                                if is_global_zero() else None)
        redo = self.change is not None or stale is not None
        had_summary = redo and (self.run_dir / "summary.md").exists()
        if is_global_zero():
            removed = invalidate(self.run_dir, k, stage) if redo else None
            log.warning("%s", describe(k, stage, self.change, removed, stale))
        barrier()
        result = self.iteration(k, stages=(stage,), force=True)
        if k > 0:  # done with it for now, finished or not: no run stays RUNNING (a resume reopens it)
            self.tracker.finish(self.tracker.ids["iterations"].get(str(k)))
        if had_summary and is_global_zero():
            self.summary()
        return result

    def summary(self) -> dict:
        from csr.eval.harness import selected_only
        from csr.eval.registry import summary_columns
        from csr.run.report import write_report

        rows = {}
        for k in range(0, self.cfg.iterations + 1):
            path = self.iter_dir(k) / "metrics.json"
            if path.exists():
                rows[k] = read_json(path)
        selection = self.selection(rows)
        failure = None
        if selection is not None and selected_only(self.cfg.eval):
            failure = self.evaluate_selected(selection, rows)
            selection = self.selection(rows)  # its reported metrics now hold the harnesses' too
        columns = summary_columns(evaluators(), self.cfg.eval.evaluators, self.cfg.eval)  # a harness's from its config
        result = write_report(rows, self.run_dir, columns, selection)
        record_selection(self.run_dir / RUN_INFO, selection)
        if selection is not None:  # the parent's tags, its run_info.json again, the reported metrics
            parent = self.tracker.ids.get("parent")
            self.tracker.set_tags(parent, selection_tags(selection))
            self.tracker.log_artifact(parent, self.run_dir / RUN_INFO)
            self.tracker.log_metrics(parent, selection["reported"], prefix="selected/")
        if OmegaConf.select(self.cfg, "report.inspect", default=False):  # the browsable site, also in MLflow
            from csr.inspect import write_site

            self.tracker.log_artifact(self.tracker.ids.get("parent"), write_site(self.run_dir))
        if failure is not None:  # the summary holds every other metric; rerunning the command runs the harness again
            raise failure
        return result
