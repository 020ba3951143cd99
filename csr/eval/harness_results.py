"""Reading an external harness's results files into flat metrics `<task>/<metric>`.

Two formats, each as its harness writes it (csr/eval/harness.py runs the harness):

`lmms_eval`: lmms-eval's EvaluationTracker writes `<output_path>/<model>/<date>_results.json`, whose
`results` maps each task (and group) to `"<metric>,<filter>": value` plus an `alias` and the
`<metric>_stderr*,<filter>` errors; `n-samples` maps each task to its `effective` count.

`vlmevalkit`: VLMEvalKit's run.py writes into `<work-dir>/<model>/<eval id T%Y%m%d-%H%M%S>/` one
`<model>_<dataset>_acc.csv` (multiple choice, VQA: a `split` column, then `Overall` and one column per
category) or `<model>_<dataset>_score.csv` (yes/no: MME's one row of perception, reasoning and the
categories; POPE's rows per split; judged datasets: `<model>_<dataset>_<judge>_score.csv`), and links
them into `<work-dir>/<model>/` (links are skipped here: the eval id's folder holds the files).

Both harnesses carry on past a failed task (lmms-eval even exits 0 when nothing ran), so every task
the run asked for must have results, or the read fails naming it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from csr.config.choices import HARNESS_RESULTS
from csr.core.errors import CSRError

# A VLMEvalKit metrics file: <model>_<dataset>[_<judge>]_acc.csv or ..._score.csv
VLMEVALKIT_SUFFIXES = ("_acc.csv", "_score.csv")
_EVAL_ID = re.compile(r"^T\d{8}-\d{6}")
# MLflow accepts metric names of these characters only (VLMEvalKit names columns "Relative Score (main)").
_UNSAFE = re.compile(r"[^\w.\- /]")


class MissingResults(CSRError):
    """The harness ran but did not write results for what it was asked."""


def metric_name(*parts: str) -> str:
    """"mme", "mme_perception_score" -> "mme/mme_perception_score", each part safe for MLflow."""
    return "/".join(_UNSAFE.sub("_", str(p)).strip() for p in parts)


def _number(value) -> float | int | None:
    """A finite number from a JSON value or a CSV cell; None for text ("N/A", a category name)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# -- lmms-eval ------------------------------------------------------------------------------------


def lmms_eval_results_file(output_dir: Path) -> Path:
    """The one `*_results.json` under output_dir (csr gives each evaluation a fresh one)."""
    found = sorted(output_dir.rglob("*_results.json"))
    if not found:
        raise MissingResults(f"{output_dir}: no <model>/<date>_results.json was written")
    return found[-1]  # date-named: the newest


def read_lmms_eval(path: Path, tasks: list[str]) -> dict:
    """`<task>/<metric>` for each task of `results` (a metric under another filter than `none`:
    `<task>/<metric>/<filter>`), `<task>/n_samples`; the standard errors are left out (the file keeps them)."""
    try:
        data = json.loads(path.read_text())
        results = data["results"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MissingResults(f"{path}: not an lmms-eval results file ({type(err).__name__}: {err})") from None
    missing = [t for t in tasks if t not in results]
    if missing:
        raise MissingResults(f"{path}: no results for task(s) {missing}; it has {sorted(results)}")
    metrics: dict = {}
    for task, values in sorted(results.items()):
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            number = _number(value)
            if key == "alias" or "_stderr" in metric or number is None:
                continue
            parts = (task, metric) if filter_name in ("", "none") else (task, metric, filter_name)
            metrics[metric_name(*parts)] = number
        samples = (data.get("n-samples") or {}).get(task) or {}
        if _number(samples.get("effective")) is not None:
            metrics[metric_name(task, "n_samples")] = samples["effective"]
    return metrics


# -- VLMEvalKit -----------------------------------------------------------------------------------


def vlmevalkit_results_files(output_dir: Path) -> dict[str, Path]:
    """`<dataset>[_<judge>]` -> its metrics file, for the files in `<model>/<eval id>/` folders."""
    found: dict[str, Path] = {}
    for path in sorted(output_dir.rglob("*.csv")):
        suffix = next((s for s in VLMEVALKIT_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or path.is_symlink() or not _EVAL_ID.match(path.parent.name):
            continue
        model = path.parent.parent.name
        if path.name.startswith(model + "_"):
            found[path.name[len(model) + 1 : -len(suffix)]] = path
    return found


def _assign(found: dict[str, Path], tasks: list[str]) -> dict[str, tuple[str, Path]]:
    """Each file's dataset: the longest requested name its stem starts with (MMBench_DEV_EN_V11 is not
    MMBench_DEV_EN with a judge named V11 when both were asked for); the rest is the judge."""
    assigned = {}
    for stem, path in found.items():
        names = [t for t in tasks if stem == t or stem.startswith(t + "_")]
        if names:
            dataset = max(names, key=len)
            judge = stem[len(dataset) + 1 :]
            assigned[stem] = (metric_name(dataset, judge) if judge else metric_name(dataset), path)
    return assigned


def read_vlmevalkit_csv(path: Path, prefix: str) -> dict:
    """One metrics CSV: `<prefix>/<column>` for a one-row file, `<prefix>/<split>/<column>` per row of a
    file with a `split` column (a split named `none`, report_acc's when the data has none, is left out)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    metrics: dict = {}
    for i, row in enumerate(rows):
        label = row.pop("split", None)
        if label is None and len(rows) > 1:
            label = str(i)
        for column, cell in row.items():
            number = _number(cell)
            if number is None or not column:
                continue
            parts = (prefix, column) if label in (None, "none") else (prefix, label, column)
            metrics[metric_name(*parts)] = number
    return metrics


def read_vlmevalkit(output_dir: Path, tasks: list[str]) -> dict:
    assigned = _assign(vlmevalkit_results_files(output_dir), tasks)
    missing = [t for t in tasks if not any(prefix.split("/")[0] == metric_name(t) for prefix, _ in assigned.values())]
    if missing:
        files = sorted(str(p.relative_to(output_dir)) for _, p in assigned.values())
        raise MissingResults(f"{output_dir}: no <model>_<dataset>_acc.csv or _score.csv for dataset(s) {missing}; "
                             f"found {files or 'none'}")
    metrics: dict = {}
    for prefix, path in sorted(assigned.values()):
        metrics.update(read_vlmevalkit_csv(path, prefix))
    return metrics


def read_results(fmt: str, output_dir: Path, tasks: list[str]) -> tuple[dict, list[Path]]:
    """(metrics, the files they came from) of a harness's output directory."""
    if fmt == "lmms_eval":
        path = lmms_eval_results_file(output_dir)
        return read_lmms_eval(path, tasks), [path]
    if fmt == "vlmevalkit":
        metrics = read_vlmevalkit(output_dir, tasks)
        return metrics, sorted(p for _, p in _assign(vlmevalkit_results_files(output_dir), tasks).values())
    raise CSRError(f"unknown harness results format {fmt!r}; known: {list(HARNESS_RESULTS)}")
