"""External benchmark harnesses as evaluators (csr/eval/harness.py, harness_results.py).

The results readers are held to files the real harnesses wrote (tests/fixtures/harness/, each with the
command that wrote it). The real lmms-eval runs on a tiny local MME/POPE made of ShapesWorld images
(tests/harness_fixture.py) when it is installed ($CSR_LMMS_EVAL; .ci/run installs it); a failing harness
is a real process that fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from compose_config import RUN, compose_config
from csr_runs import run, tiny_env
from harness_fixture import harness_config, lmms_eval_executable, write_tasks
from omegaconf import OmegaConf

from csr.config.schema import ASSETS, EvalConfig, HarnessEvalConfig, validate
from csr.core.errors import CSRError
from csr.core.io import read_json
from csr.eval.harness import (
    HarnessFailed,
    check_harness,
    check_harnesses,
    harness_device,
    iteration_of,
    run_harness,
)
from csr.eval.harness_results import (
    MissingResults,
    lmms_eval_results_file,
    read_lmms_eval,
    read_vlmevalkit,
    read_vlmevalkit_csv,
)
from csr.eval.registry import BENCHMARKS, summary_columns
from csr.loop import Loop
from csr.run.run_dir import check_resume

FIXTURES = Path(__file__).parent / "fixtures" / "harness"
SHAPESWORLD_LLAVA = str(ASSETS / "shapesworld" / "llava")
# The recorded run (tests/fixtures/harness/README.md): lmms-eval's own table printed these.
RECORDED = {"mme_local/mme_perception_score": 91.66666666666667, "mme_local/n_samples": 12,
            "pope_local/pope_accuracy": 0.0, "pope_local/pope_precision": 0, "pope_local/pope_recall": 0,
            "pope_local/pope_f1_score": 0, "pope_local/pope_yes_ratio": 0.5, "pope_local/n_samples": 12}
LMMS_EVAL = lmms_eval_executable()
needs_lmms_eval = pytest.mark.skipif(LMMS_EVAL is None, reason="lmms-eval is not installed: "
                                     "bash tests/fixtures/harness/install_lmms_eval.sh DIR, then CSR_LMMS_EVAL=DIR/bin/lmms-eval")


def _block(**changes):
    h = OmegaConf.structured(HarnessEvalConfig)
    h.executable, h.tasks = sys.executable, ["t"]
    for key, value in changes.items():
        h[key] = value
    return h


# -- reading what the harnesses wrote -----------------------------------------------------------------


def test_lmms_eval_results_as_the_real_lmms_eval_wrote_them():
    path = lmms_eval_results_file(FIXTURES / "lmms_eval")
    assert path.name == "20261207_220122_results.json"
    assert read_lmms_eval(path, ["mme_local", "pope_local"]) == RECORDED  # no alias, no stderr, no "N/A"


def test_lmms_eval_results_missing_a_task_or_the_file_is_an_error(tmp_path):
    path = lmms_eval_results_file(FIXTURES / "lmms_eval")
    with pytest.raises(MissingResults, match=r"no results for task\(s\) \['mmbench'\]"):
        read_lmms_eval(path, ["mme_local", "mmbench"])
    with pytest.raises(MissingResults, match="no <model>/<date>_results.json"):
        lmms_eval_results_file(tmp_path)


def test_lmms_eval_metric_under_another_filter_keeps_the_filter(tmp_path):
    path = tmp_path / "m" / "2026_results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"results": {"gqa": {"alias": "gqa", "exact_match,none": 0.5,
                                                    "exact_match,flexible-extract": 0.6, "exact_match_stderr,none": 0.1,
                                                    "relative score (main),none": float("nan")}}}))
    assert read_lmms_eval(path, ["gqa"]) == {"gqa/exact_match": 0.5, "gqa/exact_match/flexible-extract": 0.6}


VLMEVAL_RUN = "T20261207-140000"


def _vlmeval_tree(root: Path) -> Path:
    """VLMEvalKit's layout: <work-dir>/<model>/<eval id>/ holding the files, links in <model>/."""
    run_dir = root / "csr" / VLMEVAL_RUN
    run_dir.mkdir(parents=True)
    for name in (FIXTURES / "vlmevalkit").glob("*.csv"):
        (run_dir / name.name).write_bytes(name.read_bytes())
        (root / "csr" / name.name).symlink_to(Path(VLMEVAL_RUN) / name.name)
    return root


def test_vlmevalkit_mme_score_file():
    metrics = read_vlmevalkit_csv(FIXTURES / "vlmevalkit" / "csr_MME_score.csv", "MME")
    assert metrics["MME/perception"] == pytest.approx(sum(metrics[f"MME/{c}"] for c in (
        "OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position", "posters", "scene")))
    assert metrics["MME/perception"] == 1150.0 and metrics["MME/reasoning"] == 650.0
    assert metrics["MME/existence"] == 200.0 and metrics["MME/count"] == 0.0 and len(metrics) == 16


def test_vlmevalkit_results_by_dataset_and_split(tmp_path):
    metrics = read_vlmevalkit(_vlmeval_tree(tmp_path), ["MME", "POPE", "MMBench_DEV_EN"])
    # POPE: rows per split, F1 as `Overall`; 7 of 8 made-up answers right (record_vlmevalkit.py)
    assert metrics["POPE/Overall/acc"] == pytest.approx(87.5)
    assert metrics["POPE/random/Overall"] == pytest.approx(100 * 2 * 0.8 / 1.8)
    # MMBench: report_acc's row of split dev; a column name MLflow would refuse is made safe
    assert metrics["MMBench_DEV_EN/dev/Overall"] == pytest.approx(4 / 6)
    assert metrics["MMBench_DEV_EN/dev/fine-grained_perception _instance-level_"] == pytest.approx(0.75)
    assert {k.split("/")[0] for k in metrics} == {"MME", "POPE", "MMBench_DEV_EN"}
    assert not any("split" in k for k in metrics)  # the split column names rows; it is not a metric
    with pytest.raises(MissingResults, match=r"dataset\(s\) \['SEEDBench_IMG'\]"):
        read_vlmevalkit(tmp_path, ["MME", "SEEDBench_IMG"])


# -- config -------------------------------------------------------------------------------------------


def test_the_presets_compose_and_their_summary_columns_reach_the_table():
    cfg = validate(compose_config())
    for name in ("lmms_eval", "vlmevalkit"):
        block = cfg.eval[name]
        check_harness(name, OmegaConf.merge(block, {"executable": sys.executable}))
    columns = summary_columns(BENCHMARKS, ["generate", "lmms_eval"], cfg.eval)
    assert ("lmms_eval mme/mme_perception_score", "lmms_eval/mme/mme_perception_score") in columns
    assert summary_columns(BENCHMARKS, ["generate", "lmms_eval"]) == [
        ("generated R_I", "generate/mean_r_i"), ("generated tokens", "generate/mean_answer_tokens")]


@pytest.mark.parametrize(("changes", "message"), [
    ({"executable": "no-such-harness"}, "not an executable file nor found on PATH"),
    ({"tasks": []}, "tasks' is empty"),
    ({"args": ["--out", "{outdir}"]}, r"unknown placeholder\(s\) \['outdir'\]"),
    ({"env": {"X": "{"}}, "literal brace"),
    ({"args": ["{config_file}"]}, "config_file is null"),
    ({"results": "vlmevalkit", "config_file": {"data": {"MME": {}}}}, "must be the datasets of"),
])
def test_a_wrong_harness_block_is_refused_naming_its_key(changes, message):
    with pytest.raises(CSRError, match=message):
        check_harness("lmms_eval", _block(**changes))


def test_a_harness_choice_is_checked_at_validation():
    with pytest.raises(CSRError, match=r"'eval.vlmevalkit.on_failure': 'ignore' is not one of \['raise', 'record'\]"):
        validate(compose_config("eval.vlmevalkit.on_failure=ignore"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.select=null", "eval.lmms_eval.only_selected=true"], "only_selected' is true but eval.select is null"),
    (["eval.lmms_eval.only_selected=true", "eval.lmms_eval.iterations=[1]"], "both choose the checkpoints"),
])
def test_only_the_selected_checkpoint_needs_a_selection_and_no_iteration_list(overrides, message):
    cfg = validate(compose_config("eval.evaluators=[shapesworld,lmms_eval]", f"eval.lmms_eval.executable={sys.executable}",
                                  *overrides))
    with pytest.raises(CSRError, match=message):
        check_harnesses(cfg.eval)


def test_a_run_saved_before_only_selected_resumes_without_a_change(tmp_path):
    text = OmegaConf.to_yaml(compose_config(), resolve=True)
    saved = OmegaConf.to_container(OmegaConf.create(text))
    del saved["eval"]["lmms_eval"]["only_selected"], saved["eval"]["vlmevalkit"]["only_selected"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    assert check_resume(tmp_path, text, []) == {}


def test_a_run_saved_before_the_harness_blocks_resumes_without_a_change(tmp_path):
    text = OmegaConf.to_yaml(compose_config(), resolve=True)
    saved = OmegaConf.to_container(OmegaConf.create(text))
    del saved["eval"]["lmms_eval"], saved["eval"]["vlmevalkit"]  # as csr wrote it before the keys
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    assert check_resume(tmp_path, text, []) == {}


def test_the_device_placeholder_follows_the_trainer():
    import torch

    assert (harness_device("cpu"), harness_device("gpu")) == ("cpu", "cuda")
    assert harness_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_iteration_comes_from_the_run_layout(tmp_path):
    assert iteration_of(tmp_path / "run" / "iter_2" / "eval" / "lmms_eval") == 2
    assert iteration_of(tmp_path / "elsewhere") is None


# -- running: no shell, failures -----------------------------------------------------------------------

PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:])); sys.exit({code})"


def test_the_command_is_an_argv_list_run_without_a_shell(tmp_path):
    checkpoint = tmp_path / "my model's; $(touch pwned) `id` dir"
    checkpoint.mkdir()
    h = _block(args=["-c", PRINT_ARGV.format(code=0), "{checkpoint}", "{tasks}", "{device}/{dtype}", "{{x}}"],
               tasks=["mme", "pope"])
    with pytest.raises(HarnessFailed, match="exited 0 but its results are incomplete"):
        run_harness("lmms_eval", h, str(checkpoint), tmp_path / "out", "cpu", "float32")
    printed = json.loads((tmp_path / "out" / "harness.log").read_text().splitlines()[0])
    assert printed == [str(checkpoint), "mme,pope", "cpu/float32", "{x}"]
    assert not list(tmp_path.rglob("pwned"))


def test_a_failing_harness_names_the_checkpoint_and_its_last_lines(tmp_path):
    code = "import sys\nfor i in range(40): print('line', i)\nprint('Error during evaluation: no dataset mme')\nsys.exit(3)"
    h = _block(args=["-c", code])
    with pytest.raises(HarnessFailed) as err:
        run_harness("lmms_eval", h, "/ckpt/iter_1/merged", tmp_path / "out", "cpu", "float32")
    text = str(err.value)
    assert "eval.lmms_eval on checkpoint /ckpt/iter_1/merged" in text and "exited with code 3" in text
    assert "Error during evaluation: no dataset mme" in text and "line 39" in text and "line 20" not in text


# -- in a run: the other evaluators' metrics are kept ----------------------------------------------------


def _loop(tiny_models, tmp_path: Path, on_failure: str) -> Loop:
    root = Path(tiny_env(tiny_models)["CSR_TINY_DIR"])  # tiny_env also writes the tiny prompts there
    cfg = compose_config("experiment=smoke", f"run_dir={tmp_path / 'run'}", f"model.path={tiny_models.llava}",
                         f"reward.clip.weights={tiny_models.clip_weights}",
                         f"reward.clip.config_json={tiny_models.clip_config}",
                         f"data.prompt_file={root / 'data' / 'prompts.json'}", f"data.image_root={root / 'data' / 'images'}",
                         "logger.enabled=false", "eval.evaluators=[generate,lmms_eval]", "eval.limit=2",
                         f"eval.lmms_eval.executable={sys.executable}", f"eval.lmms_eval.on_failure={on_failure}",
                         paths=RUN)
    cfg.eval.lmms_eval.args = ["-c", "import sys; print('CUDA out of memory'); sys.exit(1)"]
    return Loop(validate(cfg))


def test_a_failing_harness_keeps_the_other_evaluators_metrics_and_stops_the_run(tiny_models, tmp_path):
    loop = _loop(tiny_models, tmp_path, "raise")
    with loop.open_run_dir(), pytest.raises(HarnessFailed, match="CUDA out of memory") as err:
        loop.base_eval()
    partial = tmp_path / "run" / "iter_0" / "eval" / "partial_metrics.json"
    assert str(partial) in str(err.value) and f"checkpoint {tiny_models.llava}" in str(err.value)
    assert read_json(partial)["generate/answers"] == 2


def test_a_failing_harness_recorded_as_failed_lets_the_run_go_on(tiny_models, tmp_path):
    loop = _loop(tiny_models, tmp_path, "record")
    with loop.open_run_dir():
        metrics = loop.base_eval()["eval"]
    assert metrics["generate/answers"] == 2
    assert metrics["lmms_eval/failed"] == 1 and "CUDA out of memory" in metrics["lmms_eval/error"]


def test_with_only_selected_the_eval_stage_leaves_the_harness_to_the_end_of_the_run(tmp_path):
    out = tmp_path / "run" / "iter_1" / "eval" / "lmms_eval"
    cfg = OmegaConf.structured(EvalConfig)
    cfg.lmms_eval = _block(args=["-c", "raise SystemExit(1)"], only_selected=True)
    result = BENCHMARKS["lmms_eval"].run(model=None, processor=None, family=None, scorer=None, eval_cfg=cfg, prompt_file="",
                                         image_root="", out_dir=out, trainer_kwargs={"accelerator": "cpu"})
    assert result["ran"] == 0 and "only_selected" in result["settings"]["skipped"] and not out.exists()


def test_an_iteration_outside_eval_iterations_is_not_run(tmp_path):
    out = tmp_path / "run" / "iter_1" / "eval" / "lmms_eval"
    cfg = OmegaConf.structured(EvalConfig)
    cfg.lmms_eval = _block(args=["-c", "raise SystemExit(1)"], iterations=[0, 3])
    result = BENCHMARKS["lmms_eval"].run(model=None, processor=None, family=None, scorer=None, eval_cfg=cfg, prompt_file="",
                                         image_root="", out_dir=out, trainer_kwargs={"accelerator": "cpu"})
    assert result["ran"] == 0 and not (out / "harness.log").exists()


# -- the real lmms-eval ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lmms_tasks(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("lmms_tasks"), LMMS_EVAL)


@needs_lmms_eval
def test_the_real_lmms_eval_on_a_checkpoint_matches_the_recorded_run(lmms_tasks, tmp_path):
    """The evaluator as the eval stage calls it, on the shipped ShapesWorld model: lmms-eval runs its own
    MME task on the local fixture, and the metrics are the recorded run's."""
    from csr.models.checkpoint import load_model
    from csr.models.families import get_family

    model, processor = load_model(SHAPESWORLD_LLAVA)
    cfg = OmegaConf.structured(EvalConfig)
    cfg.lmms_eval = harness_config(LMMS_EVAL, lmms_tasks, ["mme_local"])
    out = tmp_path / "run" / "iter_0" / "eval" / "lmms_eval"
    result = BENCHMARKS["lmms_eval"].run(model=model, processor=processor, family=get_family("llava"), scorer=None, eval_cfg=cfg, prompt_file="",
                                         image_root="", out_dir=out, trainer_kwargs={"accelerator": "cpu"})
    assert result["mme_local/mme_perception_score"] == RECORDED["mme_local/mme_perception_score"]
    assert result["mme_local/n_samples"] == 12 and result["failed"] == 0
    assert result["settings"]["checkpoint"] == SHAPESWORLD_LLAVA
    assert "pretrained=" + SHAPESWORLD_LLAVA + ",dtype=float32,device_map=cpu" in result["settings"]["command"]


@needs_lmms_eval
@pytest.mark.slow
def test_a_run_with_the_real_lmms_eval_reports_its_metrics_everywhere(tiny_models, lmms_tasks, tmp_path):
    """`csr` with [generate, lmms_eval]: the harness's metrics of the base model and iteration 1 reach
    metrics.json, summary.md, csr-compare and MLflow."""
    env = tiny_env(tiny_models)
    run_dir = tmp_path / "run"
    run("csr", "experiment=smoke", "iterations=1", f"run_dir={run_dir}", "eval.evaluators=[generate,lmms_eval]",
        f"eval.lmms_eval.executable={LMMS_EVAL}", "eval.lmms_eval.tasks=[mme_local]",
        f"eval.lmms_eval.extra_args=[--include_path,{lmms_tasks}]",
        "eval.lmms_eval.summary=[mme_local/mme_perception_score]", env=env, cwd=tmp_path)
    key = "lmms_eval/mme_local/mme_perception_score"
    for k in (0, 1):
        assert isinstance(read_json(run_dir / f"iter_{k}" / "metrics.json")["eval"][key], float)
    assert "lmms_eval mme_local/mme_perception_score" in (run_dir / "summary.md").read_text()
    run("csr-compare", str(run_dir), "--out", str(tmp_path / "cmp"), env=env)
    assert f"eval/{key}" in (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # the store of csr's cwd
    parent = read_json(run_dir / "mlflow_runs.json")["parent"]
    history = client.get_metric_history(parent, f"eval/{key}")
    assert sorted(m.step for m in history) == [0, 1]


# ShapesWorld's evaluator on the tiny models selects on val (mean_r_i differs between the tiny models).
SELECTING = ["experiment=smoke", "logger.tracking_uri=null", "eval.evaluators=[shapesworld,lmms_eval]",
             "eval.shapesworld.pope_images=2", "eval.batch_size=2",
             "eval.select={metric: shapesworld/mean_r_i, mode: max, split: val, patience: null, "
             "overrides: {shapesworld: {pope_images: 0}}}"]


@needs_lmms_eval
@pytest.mark.slow
def test_only_the_selected_iteration_is_run_through_the_harness(tiny_models, lmms_tasks, tmp_path):
    """eval.lmms_eval.only_selected: the eval stage of each iteration leaves the harness out; once the run
    has chosen, lmms-eval runs on the selected checkpoint only, and its metrics reach that iteration's
    metrics.json, the selection's reported metrics in run_info.json and the summary."""
    run_dir = tmp_path / "run"
    run("csr", *SELECTING, "iterations=1", f"run_dir={run_dir}", f"eval.shapesworld.root={tmp_path / 'data'}",
        f"eval.lmms_eval.executable={LMMS_EVAL}", "eval.lmms_eval.tasks=[mme_local]", "eval.lmms_eval.only_selected=true",
        f"eval.lmms_eval.extra_args=[--include_path,{lmms_tasks}]",
        "eval.lmms_eval.summary=[mme_local/mme_perception_score]", env=tiny_env(tiny_models), cwd=tmp_path)
    selection = read_json(run_dir / "run_info.json")["selection"]
    chosen, other = selection["iteration"], 1 - selection["iteration"]
    key = "lmms_eval/mme_local/mme_perception_score"
    assert isinstance(read_json(run_dir / f"iter_{chosen}" / "metrics.json")["eval"][key], float)
    assert isinstance(selection["reported"][key], float)
    assert key not in read_json(run_dir / f"iter_{other}" / "metrics.json")["eval"]
    assert read_json(run_dir / f"iter_{other}" / "metrics.json")["eval"]["lmms_eval/ran"] == 0
    assert (run_dir / f"iter_{chosen}" / "eval" / "lmms_eval" / "harness.log").exists()
    assert not (run_dir / f"iter_{other}" / "eval" / "lmms_eval" / "harness.log").exists()
    assert "lmms_eval mme_local/mme_perception_score" in (run_dir / "summary.md").read_text()
