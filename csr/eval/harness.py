"""External benchmark harnesses (lmms-eval, VLMEvalKit) as csr evaluators.

Each harness evaluator (`lmms_eval`, `vlmevalkit`; its settings in `eval.<name>`, presets in
conf/eval/harness/) runs the harness's own command on the checkpoint an iteration evaluates, in a
process of its own, and reads the results files the harness wrote (csr/eval/harness_results.py).
Its metrics are `<task>/<metric>`, which the eval stage namespaces `<name>/<task>/<metric>` like any
evaluator's, so they reach metrics.json, the summary, `csr-compare` and MLflow the same way.

The command is `executable` then `args`, an argv list run without a shell (a path with spaces or
quotes stays one argument). Placeholders in args, env values and the strings of `config_file`:
{checkpoint} (the evaluated model's directory), {output_dir} (a fresh, empty folder for the harness's
outputs), {tasks} (eval.<name>.tasks joined by commas, lmms-eval's --tasks), {config_file} (the JSON
written from `config_file`, VLMEvalKit's --config), {device} (cuda, or cpu under trainer.accelerator=cpu) and
{dtype} (the model's, e.g. bfloat16); `{{` and `}}` are literal braces.

A harness that exits non-zero or leaves no results for an asked task fails with one error naming the
checkpoint, the log and the log's last lines (`HarnessFailed`). With `on_failure: raise` (the
default) the eval stage still runs the other evaluators and writes their metrics, then stops the run
(rerunning the same command resumes it); with `record` the run goes on and the evaluator's metrics
are `failed: 1` and the error.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import string
import subprocess
import time
from collections import deque
from pathlib import Path

from omegaconf import OmegaConf

from csr.core.errors import CSRError
from csr.core.io import atomic_write_json
from csr.eval.harness_results import MissingResults, read_results

log = logging.getLogger(__name__)

HARNESSES = ("lmms_eval", "vlmevalkit")  # the evaluators of this module, each with its block eval.<name>
PLACEHOLDERS = ("checkpoint", "output_dir", "tasks", "config_file", "device", "dtype")
LAST_LINES = 15  # of the harness's log, quoted in the error when it fails
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # lmms-eval's logger colours its lines even into a file
_ITERATION_DIR = re.compile(r"^iter_(\d+)$")


class HarnessFailed(CSRError):
    """An external harness failed on one checkpoint; the eval stage's other evaluators still run."""


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _templates(h) -> dict[str, str]:
    """key -> each template string of the block (args, env values, config_file's strings)."""
    found = {f"args[{i}]": a for i, a in enumerate(h.args)}
    found.update({f"extra_args[{i}]": a for i, a in enumerate(h.extra_args)})
    found.update({f"env.{k}": v for k, v in h.env.items()})

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str):
            found[where] = node

    if h.config_file is not None:
        walk(OmegaConf.to_container(h.config_file, resolve=True), "config_file")
    return found


def check_harness(name: str, h) -> None:
    """At start (csr/cli.py): the block of a harness the run names is complete and its templates known."""
    where = f"config key 'eval.{name}"
    if not h.executable:
        raise CSRError(f"{where}.executable' is not set: the harness's program (docs/benchmarks.md)")
    if shutil.which(h.executable) is None:
        raise CSRError(f"{where}.executable': {h.executable!r} is not an executable file nor found on PATH: "
                       "install the harness (docs/benchmarks.md) or set the key to its path")
    if not h.tasks:
        raise CSRError(f"{where}.tasks' is empty: name the harness's tasks (datasets) to run, e.g. [mme,pope]")
    data = (OmegaConf.to_container(h.config_file, resolve=True) or {}).get("data") if h.config_file else None
    if h.results == "vlmevalkit" and isinstance(data, dict) and sorted(data) != sorted(h.tasks):
        raise CSRError(f"{where}.tasks': {list(h.tasks)} must be the datasets of eval.{name}.config_file.data "
                       f"({sorted(data)}): each is run, and each must have results")
    for key, template in _templates(h).items():
        try:
            unknown = _fields(template) - set(PLACEHOLDERS)
        except ValueError as err:  # a lone { or }
            raise CSRError(f"{where}.{key}': {template!r}: {err} (write a literal brace as {{{{ or }}}})") from None
        if unknown:
            raise CSRError(f"{where}.{key}': unknown placeholder(s) {sorted(unknown)} in {template!r}; "
                           f"known: {list(PLACEHOLDERS)}")
        if "config_file" in _fields(template) and h.config_file is None:
            raise CSRError(f"{where}.{key}' uses {{config_file}} but eval.{name}.config_file is null")


def check_harnesses(eval_cfg) -> None:
    """Every harness that eval.evaluators names (the others' blocks are not read)."""
    for name in HARNESSES:
        if name in eval_cfg.evaluators:
            check_harness(name, eval_cfg[name])
            if eval_cfg[name].only_selected and eval_cfg.select is None:
                raise CSRError(f"config key 'eval.{name}.only_selected' is true but eval.select is null: no iteration "
                               "is selected; set an eval.select block, or only_selected=false (every checkpoint)")
            if eval_cfg[name].only_selected and eval_cfg[name].iterations is not None:
                raise CSRError(f"config keys 'eval.{name}.only_selected' and 'eval.{name}.iterations' both choose "
                               "the checkpoints: set one (iterations=null, or only_selected=false)")


def selected_only(eval_cfg) -> list[str]:
    """The harnesses of the run that evaluate only the selected checkpoint, at the end of the run."""
    return [name for name in HARNESSES if name in eval_cfg.evaluators and eval_cfg[name].only_selected]


def iteration_of(out_dir: Path) -> int | None:
    """The iteration whose evaluation writes into out_dir (run_dir/iter_<k>/eval/<name>), or None
    outside a run's layout."""
    for part in reversed(Path(out_dir).resolve().parts):
        found = _ITERATION_DIR.match(part)
        if found:
            return int(found.group(1))
    return None


def checkpoint_of(model) -> str:
    """The directory (or cached hub name) the evaluated model was loaded from: the harness loads it
    again in its own process."""
    path = getattr(model, "name_or_path", "") or ""
    if not path:
        raise CSRError("the evaluated model does not say where it was loaded from (name_or_path): "
                       "a harness evaluator needs a checkpoint on disk")
    return str(Path(path).resolve()) if Path(path).exists() else path


def harness_device(accelerator: str) -> str:
    """{device}: where the run's trainer.accelerator puts models (auto: a GPU when one is visible)."""
    if accelerator == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if accelerator == "cpu" else "cuda"


def fill(value, values: dict[str, str]):
    """value with its placeholders filled: a string, or every string in a dict/list tree."""
    if isinstance(value, str):
        return value.format_map(values)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


def last_lines(path: Path, n: int = LAST_LINES) -> str:
    with path.open(errors="replace") as handle:
        tail = deque((_ANSI.sub("", line.rstrip("\n")) for line in handle), maxlen=n)
    return "\n".join(f"    {line[:300]}" for line in tail if line.strip())


def run_harness(name: str, h, checkpoint: str, out_dir: Path, device: str, dtype: str) -> tuple[dict, dict]:
    """Run the harness on `checkpoint` into out_dir/output (emptied first: only this run's results
    count); (its metrics, the settings it ran with). Raises HarnessFailed."""
    output = out_dir / "output"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    values = {"checkpoint": checkpoint, "output_dir": str(output), "tasks": ",".join(h.tasks),
              "config_file": str(out_dir / "harness_config.json"), "device": device, "dtype": dtype}
    if h.config_file is not None:
        atomic_write_json(out_dir / "harness_config.json",
                          fill(OmegaConf.to_container(h.config_file, resolve=True), values))
    argv = [shutil.which(h.executable) or h.executable, *fill([*h.args, *h.extra_args], values)]
    env = {**os.environ, **fill(dict(h.env), values)}
    log_path = out_dir / "harness.log"
    log.info("%s: %s", name, " ".join(argv))
    start = time.time()
    with log_path.open("w") as handle:
        try:
            code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=out_dir, check=False).returncode
        except OSError as err:
            raise HarnessFailed(f"eval.{name} on checkpoint {checkpoint}: cannot start {argv[0]}: {err}") from None
    settings = {"harness": name, "command": argv, "tasks": list(h.tasks), "checkpoint": checkpoint,
                "log": str(log_path), "seconds": round(time.time() - start, 3), "exit_code": code}
    why = f"exited with code {code}" if code != 0 else None
    if why is None:
        try:
            metrics, files = read_results(h.results, output, list(h.tasks))
        except MissingResults as err:
            why = f"exited 0 but its results are incomplete: {err}"
    if why is not None:
        raise HarnessFailed(f"eval.{name} on checkpoint {checkpoint}: the harness {why}. Its log {log_path} "
                            f"ends:\n{last_lines(log_path)}")
    settings["results_files"] = [str(p) for p in files]
    return metrics, settings


def evaluate_harness(name: str, *, model, processor, family, scorer, eval_cfg, prompt_file: str, image_root: str,
                     out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
    """The evaluator of harness `name` (eval.<name>): its metrics on the model the stage evaluates."""
    from csr.core.distributed import is_global_zero, rank_zero_done

    h = eval_cfg[name]
    k = iteration_of(out_dir)
    if h.only_selected:  # the loop runs it on the selected checkpoint once the choice is made (evaluate_checkpoint)
        return {"ran": 0, "settings": {"harness": name, "skipped": f"eval.{name}.only_selected: run at the end of "
                                                                   "the run, on the selected iteration only"}}
    if h.iterations is not None and k is not None and k not in h.iterations:
        return {"ran": 0, "settings": {"harness": name, "skipped": f"iteration {k} is not in eval.{name}.iterations"}}
    # One harness process per checkpoint, from rank 0 (the loop writes rank 0's metrics only); the other
    # ranks wait for it without a collective's timeout, which a benchmark run can outlast.
    try:
        if not is_global_zero():
            return {}
        dtype = str(getattr(model, "dtype", "float32")).removeprefix("torch.")
        return evaluate_checkpoint(name, h, checkpoint_of(model), out_dir, trainer_kwargs.get("accelerator", "cpu"), dtype)
    finally:
        rank_zero_done(f"harness {name}")


def evaluate_checkpoint(name: str, h, checkpoint: str, out_dir: Path, accelerator: str, dtype: str) -> dict:
    """The harness's metrics on a checkpoint on disk (the eval stage's model, or the selected one)."""
    device = harness_device(accelerator)
    try:
        metrics, settings = run_harness(name, h, checkpoint, out_dir, device, dtype)
    except HarnessFailed as err:
        if h.on_failure == "raise":
            raise
        log.error("%s (recorded: eval.%s.on_failure=record)", err, name)
        return {"ran": 1, "failed": 1, "error": str(err), "settings": {"harness": name, "checkpoint": checkpoint}}
    log.info("%s: %d metrics from %s in %.0fs", name, len(metrics), settings["results_files"], settings["seconds"])
    return {**metrics, "ran": 1, "failed": 0, "settings": settings}


def summary(name: str, eval_cfg) -> tuple[tuple[str, str], ...]:
    """(column, metric key) of eval.<name>.summary: the harness metrics the run's summary table shows."""
    return tuple((f"{name} {key}", key) for key in eval_cfg[name].summary)
