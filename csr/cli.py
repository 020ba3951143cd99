"""The `csr` command: a Hydra app over conf/ that validates the config and runs the loop."""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import signal
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from csr.config.schema import validate
from csr.core import signals
from csr.core.distributed import check_trainer, is_global_zero
from csr.core.errors import CSRError
from csr.core.extras import check_run as check_run_extras
from csr.core.extras import require_launcher

log = logging.getLogger("csr")
# Out of space, over quota, file too large, read-only file system: only a write fails this way.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# No permission: a write or a read (a prompt file, a checkpoint) may fail so.
ACCESS_ERRORS = {errno.EACCES, errno.EPERM}

# conf/ sits beside the package in the repository (installed with `pip install -e .`).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _quiet_libraries() -> None:
    """Keep the console for csr's own progress: Lightning's banners and tips, transformers' weight
    loading and shard writing bars, MLflow's database messages say nothing about the run (csr's own
    bars name the stage: csr/core/progress.py; library INFO logs are off in conf/hydra/default.yaml)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow's own handler, not the root logger's
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")  # csr.run.predict's choice
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def check_config(cfg: DictConfig) -> DictConfig:
    """Everything the config alone decides, before a directory is made or a model loads."""
    from csr.worlds import evaluators

    # Before validate(): a misspelt evaluator is the thing to name, not what the selection (eval.select)
    # then misses among the evaluators.
    known = evaluators()
    names = OmegaConf.select(cfg, "eval.evaluators")
    unknown = [name for name in (names if isinstance(names, ListConfig) else []) if name not in known]
    if unknown:
        raise CSRError(f"config key 'eval.evaluators': unknown evaluator {unknown[0]!r}; known: {sorted(known)}")
    typed = validate(cfg)
    check_run_extras(typed)
    check_trainer(typed.trainer)
    check_device(typed.trainer)
    check_tiny_files(typed)
    from csr.models.clip import check_activation

    check_activation(typed.reward.clip.arch, typed.reward.clip.weights)
    from csr.eval.harness import check_harnesses

    check_harnesses(typed.eval)
    return typed


def warn_if_over_device(cfg, loop) -> None:
    """One warning line at start when csr-plan's prediction for a stage exceeds the GPU this rank sees
    (csr/models/memory.py start_warning); on the CPU there is nothing to compare with. The plan is of the
    run's family, as the loop resolved it (loop.family)."""
    import torch

    if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available() or not is_global_zero():
        return
    from csr.models import memory as P
    from csr.models.planning import clip_dims, model_dims, plan

    try:
        dims, _ = model_dims(cfg.model.path, cfg.model.name, loop.family)
        clip = clip_dims(cfg.reward.clip.arch, cfg.reward.clip.config_json)
        devices = cfg.trainer.devices if cfg.trainer.devices > 0 else torch.cuda.device_count()
        stages = plan(cfg, loop.family, dims, clip, devices * cfg.trainer.num_nodes, prompt_tokens=64)
    except Exception as err:  # noqa: BLE001 - a plan that cannot be made must not stop the run
        log.warning("csr-plan could not plan this run (%s: %s); memory not checked", type(err).__name__, err)
        return
    stages.pop("merge")  # moves to the CPU by itself
    message = P.start_warning({stage: P.total(parts) for stage, parts in stages.items()},
                              torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    if message:
        log.warning("%s", message)


def allocator_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The CUDA allocator setting csr starts with unless the user chose one: expandable segments, so
    the search's buffers, whose sizes change at every depth, do not fragment the GPU's memory. torch
    reads PYTORCH_ALLOC_CONF (torch >= 2.9) or, under its older name, PYTORCH_CUDA_ALLOC_CONF (every
    version) at its first CUDA allocation; Lightning's ranks inherit it."""
    if "PYTORCH_ALLOC_CONF" in environ or "PYTORCH_CUDA_ALLOC_CONF" in environ:
        return {}
    return {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def check_device(trainer_cfg) -> None:
    """trainer=gpu where no GPU is visible: one line now, not Lightning's traceback later."""
    import torch

    if trainer_cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CSRError(f"config key 'trainer.accelerator': {trainer_cfg.accelerator}, but no CUDA GPU is visible "
                       "here (torch.cuda.is_available() is False): use trainer=cpu, or run on a machine with a GPU")


def check_tiny_files(cfg) -> None:
    """The tiny presets read what `csr-make-tiny` writes: say so instead of failing at the first model load."""
    tiny = os.environ.get("CSR_TINY_DIR")
    for key in ("model.path", "reward.clip.weights", "data.prompt_file"):
        value = OmegaConf.select(cfg, key)
        under_tiny = isinstance(value, str) and ("/.tiny/" in value or (tiny and value.startswith(tiny)))
        if under_tiny and not Path(value).exists():
            family = f" --family {cfg.model.family}" if key == "model.path" and cfg.model.family != "llava" else ""
            raise CSRError(f"config key {key!r}: {value} does not exist: build the tiny models and prompts first "
                           f"with `csr-make-tiny {tiny or '.tiny'}{family}` (it writes $CSR_TINY_DIR, else ./.tiny)")


def stopped_at(loop) -> str:
    """Where a stopped run is: the first stage without its marker (stages run in order)."""
    from csr.core.io import is_done
    from csr.loop import ITERATION_STAGES

    cfg = loop.cfg
    if cfg.stage != "all":
        return f"iteration {loop.stage_iteration(cfg.stage)}, stage {cfg.stage}"
    if cfg.eval.at_base and not is_done(loop.iter_dir(0), "eval"):
        return "iteration 0, stage eval (the starting model)"
    k = loop.first_unfinished()
    stage = next((s for s in ITERATION_STAGES if not is_done(loop.iter_dir(k), s)), None)
    return f"iteration {k}, stage {stage}" if stage else f"iteration {k}, after its last stage"


def close_runs(loop, status: str) -> None:
    """No MLflow run of this start stays RUNNING; iterations whose every stage is done stay FINISHED."""
    from csr.core.io import is_done
    from csr.loop import ITERATION_STAGES

    finished = {k for k in loop.tracker.ids["iterations"]
                if all(is_done(loop.iter_dir(int(k)), s) for s in ITERATION_STAGES)}
    try:
        loop.tracker.close_open_runs(status, finished)
    except Exception as err:  # noqa: BLE001 - the run's own failure is what the user must see
        log.warning("could not mark the MLflow runs %s: %s", status, err)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> float | None:
    _quiet_libraries()
    previous = signals.install()
    try:
        return _run(cfg)
    finally:
        signals.restore(previous)


def _run(cfg: DictConfig) -> float | None:
    from csr.loop import Loop

    loop = None
    try:
        typed = check_config(cfg)
        loop = Loop(typed)
        warn_if_over_device(typed, loop)
        result = loop.run()
        signals.check()  # a signal recorded but dropped where Python cannot raise (csr/core/signals.py) is no success
    except BaseException as err:
        signum = signals.closing()  # whatever a signal led to (ours, Lightning's SIGTERM exit), report it
        if loop is not None:
            close_runs(loop, "KILLED" if signum is not None else "FAILED")
        if signum is not None:
            if is_global_zero():
                where = stopped_at(loop) if loop is not None else "before the run started"
                detail = f", {err.detail}" if isinstance(err, signals.Interrupted) and err.detail else ""
                log.error("stopped by %s in %s%s; finished stages and whole batches are kept: to resume, rerun "
                          "the same command with run_dir=%s", signal.Signals(signum).name, where, detail,
                          loop.run_dir if loop is not None else cfg.run_dir)
            sys.exit(128 + signum)
        if isinstance(err, CSRError):
            # A user-facing problem: the message names the file, record or key; no traceback needed.
            log.error("%s", err)
            sys.exit(2)
        if store_full(err):  # MLflow's sqlite store found the disk full: a failed write like any other
            err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), loop.tracker.uri if loop is not None else None)
        if isinstance(err, OSError) and err.errno in WRITE_ERRORS | ACCESS_ERRORS:
            # Hydra's cli.log lies on the same full or read-only disk: its handler would follow the line with
            # logging's own traceback ("--- Logging error ---"); the console handler still prints it.
            logging.raiseExceptions = False
            log.error("cannot %s %s: %s. Finished stages are kept and no partial file is read as complete: "
                      "free space or fix the permissions, then rerun the same command to resume.",
                      "write" if err.errno in WRITE_ERRORS else "access", err.filename or cfg.run_dir, err.strerror)
            sys.exit(2)
        raise
    return objective(result)


def store_full(err: BaseException) -> bool:
    """Whether `err` comes from SQLite finding its disk full (MLflow's store), through any chain of causes."""
    import sqlite3

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError) and getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def objective(result) -> float | None:
    """Returned to Hydra sweepers (e.g. Optuna): the answer R_I of the iteration the run keeps, the
    selected one (eval.select) or else the last."""
    rows = result.get("rows") if isinstance(result, dict) else None
    if not rows:
        return None
    selection = result.get("selection")
    kept = [r for r in rows if selection and r["iteration"] == selection["iteration"]] or rows[-1:]
    return kept[0].get("answer R_I")


def _overrides(argv: list[str]) -> dict[str, str]:
    """key -> value of the plain `key=value` overrides (not options, not +added or ~deleted keys)."""
    return dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith(("-", "+", "~")))


def _path(value: str) -> Path:
    """An override's value as Hydra reads it (run_dir='/my runs/a' is the path without the quotes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with contextlib.suppress(Exception):  # not Hydra's grammar: Hydra itself says so in the app
        value = str(OverridesParser.create().parse_overrides([f"x={value}"])[0].value())
    return Path(value).resolve()


def _quoted(path: Path) -> str:
    """`path` as a Hydra override value: quoted, so that spaces, commas and brackets stay in it."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _schema_keys() -> tuple[set[str], set[str]]:
    """(leaf keys, inner nodes) of csr's schema (csr/config/schema.py)."""
    from csr.config.schema import RootConfig
    from csr.core.tracking import flatten

    leaves = set(flatten(OmegaConf.to_container(OmegaConf.structured(RootConfig))))
    nodes = {".".join(k.split(".")[:i]) for k in leaves for i in range(1, k.count(".") + 1)}
    groups = {d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()}  # experiment=smoke, hydra/launcher=...
    return leaves, nodes | groups


def unknown_key(key: str, leaves: set[str], nodes: set[str]) -> str | None:
    """The message (docs/troubleshooting.md) for a key the schema lacks, with the nearest known key; None if known.
    Keys below a free-form leaf (trainer.deepspeed.zero_optimization.stage) are known."""
    parts = key.split(".")
    if key in leaves or key in nodes or key.split("/")[0] in nodes or key.startswith("hydra.") \
            or any(".".join(parts[:i]) in leaves for i in range(1, len(parts))):
        return None
    close = difflib.get_close_matches(key, sorted(leaves | nodes), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"config key {key!r}: not a csr config key{hint} (`csr --help` lists the keys; +{key}=... adds one anyway)"


def check_override_grammar(argv: list[str]) -> None:
    """Each key=value as Hydra's override grammar reads it, or one line saying how to write it: an
    unquoted value with characters the grammar lacks (run_dir=/runs/ünï) ended in Hydra's lexer error,
    its traceback pointer and a HYDRA_FULL_ERROR hint."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            key, _, value = arg.partition("=")
            raise CSRError(f"override {arg!r}: Hydra's override grammar cannot read the value; quote it: "
                           f"{key}='{value}' (non-ASCII letters and most punctuation need the quotes)") from None


def stage_run_argv(argv: list[str]) -> list[str]:
    """A stage run alone on a csr run directory starts from that run's latest saved config, with the
    command line's overrides on top (csr/run/stage_run.py), unless a config group is named; any run_dir=
    keeps Hydra's log and .hydra/ there."""
    from csr.run.run_dir import CONFIG, changes, is_run_dir, read_saved_config

    given = _overrides(argv)
    if "run_dir" not in given or any(a in ("-m", "--multirun") for a in argv):
        return argv
    run_dir = _path(given["run_dir"])
    extra = [] if "hydra.run.dir" in given else [f"hydra.run.dir={_quoted(run_dir)}"]
    chosen = any(a.startswith(("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")) for a in argv)
    # A config group (experiment=smoke, model=...) exists only in conf/: then compose from there, as a
    # new run would; what differs from the saved config is still accepted and recorded.
    groups = {d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()}
    chosen = chosen or any(key.split("/")[0] in groups for key in given)
    if given.get("stage", "all") != "all" and is_run_dir(run_dir) and not chosen:
        entries = changes(run_dir)
        latest = (entries[-1]["config"] if entries else CONFIG).removesuffix(".yaml")
        read_saved_config(run_dir / f"{latest}.yaml")  # data only: refused before Hydra composes (and acts on) it
        extra += [f"--config-path={run_dir}", f"--config-name={latest}"]
    return [*argv, *extra]


def precheck(argv: list[str]) -> str | None:
    """Why this start is refused, or None: the config, and a run_dir that is someone else's directory, in
    use, or resumed under a changed config; found before Hydra writes its .hydra/ and log into run_dir,
    so a refused start writes nothing. The config is composed as the app composes it (Hydra's compose
    API writes nothing); what this cannot compose (multirun, Hydra's own options, Hydra's own errors) is
    left to the app, which checks everything again."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from csr.run.run_dir import check_not_in_use, check_resume, check_run_dir

    if not is_global_zero():  # another rank of a starting run (torchrun, Lightning's launcher): rank 0 checked
        return None           # the run directory and holds its lock
    dashed = [a for a in argv if a.startswith("-")]
    options = dict(a.split("=", 1) for a in dashed if "=" in a)
    if len(options) != len(dashed) or not options.keys() <= {"--config-path", "--config-name"}:
        return None
    try:
        config_dir = str(Path(options.get("--config-path", CONF_DIR)).resolve())
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(options.get("--config-name", "config"), overrides=[a for a in argv if not a.startswith("-")],
                          return_hydra_config=True)
        output_dir = Path(str(cfg.hydra.run.dir)).resolve()
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} resolves as in the app
        with open_dict(cfg):
            del cfg["hydra"]
        typed = check_config(cfg)
        run_dir = Path(typed.run_dir).resolve()
        # What an earlier start's Hydra wrote there (the job is named after this module): not a foreign file
        if check_run_dir(run_dir, {".hydra", "cli.log"} if run_dir == output_dir else set()):
            check_not_in_use(run_dir)
            check_resume(run_dir, OmegaConf.to_yaml(typed, resolve=True), list(typed.resume.allow_changes),
                         typed.stage != "all")
        if typed.stage != "all":  # a stage run alone reads what an earlier stage left
            from csr.run.stage_run import check_input, stage_iteration

            k = typed.iteration if typed.iteration is not None else stage_iteration(run_dir, typed.stage, typed.iterations)
            check_input(run_dir, str(typed.stage), k)
    except CSRError as err:
        return str(err)
    except Exception:  # noqa: BLE001 - not a refusal: the app reports it as it always has
        return None
    finally:
        HydraConfig.instance().cfg = None
    return None


def _quiet_before_imports() -> None:
    """Library chatter decided when the library is first imported, so set before it is: MLflow's
    database messages (its own logger, INFO by default) and DeepSpeed's "Setting accelerator to CPU"
    warning (accelerate imports DeepSpeed on a CPU machine; told the accelerator, it says nothing)."""
    import torch

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    os.environ.update(allocator_env(os.environ))  # before any CUDA allocation
    _quiet_before_imports()
    argv = sys.argv[1:]
    if not any(a in ("-h", "--help", "--hydra-help", "--info") or a.startswith("--info") for a in argv):
        leaves, nodes = _schema_keys()
        for key in _overrides(argv):
            message = unknown_key(key, leaves, nodes)
            if message:
                print(f"csr: error: {message}", file=sys.stderr)
                sys.exit(2)
        launcher = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")), None)
        try:
            check_override_grammar(argv)
            if launcher:
                require_launcher(launcher)
        except CSRError as err:
            print(f"csr: error: {err}", file=sys.stderr)
            sys.exit(2)
        from csr.run.run_dir import unwritable

        run_dir = _overrides(argv).get("run_dir")
        problem = unwritable(_path(run_dir)) if run_dir else None
        if problem:
            print(f"csr: error: {problem}", file=sys.stderr)
            sys.exit(2)
        try:
            sys.argv = [sys.argv[0], *stage_run_argv(argv)]
        except CSRError as err:  # before Hydra writes its .hydra/ and log into run_dir: a refusal writes nothing
            print(f"csr: error: {err}", file=sys.stderr)
            sys.exit(2)
        refused = precheck(sys.argv[1:])
        if refused:
            print(f"csr: error: {refused}", file=sys.stderr)
            sys.exit(2)
    app()


class PrepareTrackingStore(Callback):
    """Parallel sweeps share one MLflow store: create it and the experiment once, before the runs
    start, or concurrent runs race to create the sqlite schema and the experiment."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from csr.core.tracking import Tracker

        lg = config.logger
        if lg.enabled and lg.tracking_uri:  # null = a store per run: nothing shared
            Tracker(Path(config.hydra.sweep.dir), True, lg.tracking_uri, lg.experiment_name)
