"""Tiny local benchmark tasks for a real lmms-eval, from ShapesWorld: the shipped ShapesWorld LLaVA
answers them, offline, in about half a minute on a CPU.

`mme_local` is lmms-eval's own `mme` task (its prompts, parser and MME score: accuracy + accuracy+ per
category, summed) on 6 ShapesWorld images with one yes and one no existence question each, as MME
pairs them; `pope_local` is its `pope` task on the same images' POPE questions. Each is a task YAML
that includes the installed lmms-eval's own and points `dataset_path` at a `datasets.save_to_disk`
folder (`load_from_disk: true`), the way docs/benchmarks.md runs the real benchmarks offline.

Where lmms-eval is: $CSR_LMMS_EVAL (its executable), else `lmms-eval` on PATH; .ci/run installs it
with tests/fixtures/harness/install_lmms_eval.sh. Recording tests/fixtures/harness/lmms_eval/:
    CSR_LMMS_EVAL=/tmp/lmms/bin/lmms-eval .venv/bin/python -m tests.harness_fixture /tmp/lmms_record
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from csr.config.schema import HarnessEvalConfig

SPLIT_IMAGES = 6
# Asked without lmms-eval's "Answer the question using a single word or phrase." suffix, which the
# ShapesWorld model never saw: it answers "Yes." / "No." to the bare question.
NO_PROMPT_SUFFIX = {"default": {"pre_prompt": "", "post_prompt": ""}}


def lmms_eval_executable() -> str | None:
    return os.environ.get("CSR_LMMS_EVAL") or shutil.which("lmms-eval")


def harness_python(executable: str) -> Path:
    """The Python of the harness's own environment (beside its executable)."""
    return Path(executable).resolve().parent / "python"


def lmms_eval_package(executable: str) -> Path:
    """The installed lmms_eval package, as the executable's own Python imports it."""
    out = subprocess.run([str(harness_python(executable)), "-c",
                          "import lmms_eval, os; print(os.path.dirname(lmms_eval.__file__))"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _pairs(split_dir: Path) -> list[dict]:
    """One yes and one no question per image (MME scores questions in such pairs)."""
    picked: dict[str, dict] = {}
    for line in (split_dir / "pope_random.jsonl").read_text().splitlines():
        q = json.loads(line)
        picked.setdefault(q["image"], {}).setdefault(q["label"], q)
    return [p[label] for p in picked.values() if len(p) == 2 for label in ("yes", "no")]


# Saved by the harness's own `datasets` (the one that reads them back): the test's environment needs none.
SAVE = """
import json, sys
import datasets
for name, columns in json.load(open(sys.argv[1])).items():
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": ds}).save_to_disk(sys.argv[2] + "/" + name + "_ds")
"""


def write_datasets(root: Path, executable: str) -> dict[str, Path]:
    """ShapesWorld val images and questions as lmms-eval's MME and POPE columns, saved to disk."""
    from csr.worlds.shapesworld.splits import write_split

    split = root / "shapesworld"
    write_split(split, "val", SPLIT_IMAGES)
    questions = _pairs(split)
    images = [str(split / "images" / q["image"]) for q in questions]
    texts = [q["text"] for q in questions]
    columns = {
        "mme": {"question_id": [q["image"] for q in questions], "question": texts,
                "answer": [q["label"].capitalize() for q in questions], "category": ["existence"] * len(questions),
                "image": images},
        "pope": {"question_id": [str(i) for i in range(len(questions))], "question": texts,
                 "answer": [q["label"] for q in questions], "category": ["random"] * len(questions), "image": images},
    }
    (root / "columns.json").write_text(json.dumps(columns))
    subprocess.run([str(harness_python(executable)), "-c", SAVE, str(root / "columns.json"), str(root)],
                   check=True, capture_output=True)
    return {name: root / f"{name}_ds" for name in columns}


def write_tasks(root: Path, executable: str) -> Path:
    """The task folder (lmms-eval's --include_path) with mme_local and pope_local."""
    data, package = write_datasets(root, executable), lmms_eval_package(executable)
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name in ("mme", "pope"):
        task = {"include": str(package / "tasks" / name / f"{name}.yaml"), "task": f"{name}_local",
                "dataset_path": str(data[name]), "dataset_kwargs": {"load_from_disk": True},
                "lmms_eval_specific_kwargs": NO_PROMPT_SUFFIX}
        (tasks / f"{name}_local.yaml").write_text(json.dumps(task, indent=2))  # JSON is YAML
    return tasks


def harness_config(executable: str, tasks_dir: Path, tasks: list[str], **changes):
    """conf/eval/harness/lmms_eval.yaml's block, on the CPU with the local tasks (--include_path)."""
    preset = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/eval/harness/lmms_eval.yaml")
    h = OmegaConf.merge(OmegaConf.structured(HarnessEvalConfig), preset)
    h.executable, h.tasks = executable, tasks
    h.extra_args = ["--include_path", str(tasks_dir)]
    for key, value in changes.items():
        h[key] = value
    return h


def main(out: str) -> None:
    """Run the real lmms-eval through csr's harness evaluator on the shipped ShapesWorld model: the
    recorded tests/fixtures/harness/lmms_eval/ come from here."""
    from csr.config.schema import ASSETS
    from csr.eval.harness import run_harness

    executable = lmms_eval_executable()
    if executable is None:
        sys.exit("set CSR_LMMS_EVAL to the lmms-eval executable")
    root = Path(out).resolve()
    tasks = write_tasks(root, executable)
    h = harness_config(executable, tasks, ["mme_local", "pope_local"])
    metrics, settings = run_harness("lmms_eval", h, str(ASSETS / "shapesworld" / "llava"), root / "eval", "cpu",
                                    "float32")
    print(json.dumps({"command": settings["command"], "results_files": settings["results_files"],
                      "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
