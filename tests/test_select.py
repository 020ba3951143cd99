"""Gated iterations (csr/run/selection.py): the choice and its checks alone, then `csr` runs on the tiny models
that select on ShapesWorld's val split while reporting test: training is untouched by it, a crash in it
resumes to the same files, a stage run redoes it, csr-reproduce makes the same choice, patience stops."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compose_config import compose_config
from csr_runs import run, tiny_env
from omegaconf import OmegaConf, open_dict

from csr.config.schema import validate
from csr.config.upgrade import upgrade
from csr.core.errors import CSRError
from csr.core.io import done_stats, read_json
from csr.inspect.browser import Browser, chromium
from csr.run.report import markdown, selection_note, table_rows
from csr.run.run_info import record_selection, started_as
from csr.run.selection import best_iteration, patience_spent, selection_eval_cfg, selection_record

# -- the choice, pure -------------------------------------------------------------------------------------


def test_the_best_iteration_by_mode_ties_to_the_earlier_and_never_a_nan():
    values = {0: 0.342, 1: 0.174, 2: 0.158, 3: 0.156}  # explore.md, seed 0 on val
    assert best_iteration(values, "min") == 3
    assert best_iteration(values, "max") == 0
    assert best_iteration({0: 0.3, 1: 0.2, 2: 0.2}, "min") == 1  # the less-trained of two equals
    assert best_iteration({1: math.nan, 2: 0.5}, "min") == 2
    assert best_iteration({1: math.nan, 2: 0.5}, "max") == 2


def test_patience_counts_the_iterations_since_the_best():
    seed1 = {0: 0.342, 1: 0.238, 2: 0.162, 3: 0.190, 4: 0.206}  # explore.md, 5 iterations, seed 1 on val
    assert not patience_spent({k: seed1[k] for k in (0, 1, 2)}, "min", 1)
    assert patience_spent({k: seed1[k] for k in (0, 1, 2, 3)}, "min", 1)
    assert not patience_spent({k: seed1[k] for k in (0, 1, 2, 3)}, "min", 2)
    assert patience_spent(seed1, "min", 2)
    assert not patience_spent(seed1, "min", None)  # no patience: every iteration runs
    assert patience_spent({0: 0.3, 1: 0.3}, "min", 1)  # an equal score is no improvement


def test_the_record_points_to_the_selected_checkpoint():
    cfg = OmegaConf.create({"metric": "shapesworld/chair_s", "mode": "min", "split": "val", "patience": 1})
    record = selection_record({0: 0.3, 1: 0.2, 2: 0.25}, cfg, {"shapesworld/chair_s": 0.13}, "test", "/base", True)
    assert (record["iteration"], record["value"], record["checkpoint"]) == (1, 0.2, "iter_1/merged")
    assert record["values"] == {"0": 0.3, "1": 0.2, "2": 0.25} and record["stopped_early"]
    assert (record["reported_split"], record["reported"]) == ("test", {"shapesworld/chair_s": 0.13})
    base = selection_record({0: 0.1, 1: 0.2}, cfg, {}, "test", "/base", True)
    assert base["checkpoint"] == "/base"  # no iteration beat the starting model


def test_a_sweeper_optimises_the_kept_iteration_not_the_last():
    from csr.cli import objective

    rows = [{"iteration": 0, "answer R_I": 0.1}, {"iteration": 1, "answer R_I": 0.3}, {"iteration": 2, "answer R_I": 0.2}]
    assert objective({"rows": rows, "selection": {"iteration": 1}}) == 0.3
    assert objective({"rows": rows, "selection": None}) == 0.2
    assert objective({}) is None and objective(None) is None


# -- config -------------------------------------------------------------------------------------------------


def test_the_shapesworld_default_selects_on_val_and_reports_test():
    typed = validate(compose_config())
    assert (typed.eval.select.metric, typed.eval.select.mode, typed.eval.select.split) == ("shapesworld/chair_s", "min", "val")
    assert typed.eval.shapesworld.split == "test" and typed.iterations == 3
    chosen = selection_eval_cfg(typed)
    assert (chosen.shapesworld.split, chosen.shapesworld.pope_images) == ("val", 0)
    assert (typed.eval.shapesworld.split, typed.eval.shapesworld.pope_images) == ("test", 200)  # the reported one's untouched
    assert validate(compose_config("eval.select=null")).eval.select is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.select.split=test"], "'test' is the split the run reports (eval.shapesworld.split)"),
    (["eval.shapesworld.split=val"], "'val' is the split the run reports"),
    (["eval.select.split=csr"], "'csr' is the split the run trains on (data.shapesworld.split)"),
    (["eval.select.metric=chair_s"], "must be '<evaluator>/<metric>'"),
    (["eval.select.metric=pope/f1"], "evaluator 'pope' is not in eval.evaluators ['shapesworld']"),
    (["eval.evaluators=[shapesworld,generate]", "eval.select.metric=generate/mean_r_i"],
     "evaluator 'generate' has no held-out split besides the one it reports"),
    (["eval.select.mode=best"], "'eval.select.mode': 'best' is not one of ['min', 'max']"),
    (["eval.select.patience=0"], "'eval.select.patience': 0 must be >= 1 or null"),
    (["eval.select.split=nope"], "'eval.select.split': 'nope' is not one of"),
])
def test_a_selection_on_the_reported_or_training_split_is_refused_at_start(overrides, message):
    with pytest.raises(CSRError, match=re.escape(message)):
        validate(compose_config(*overrides))


def test_the_selection_overrides_are_eval_keys():
    cfg = compose_config()
    with open_dict(cfg):
        cfg.eval.select.overrides = {"shapesworld": {"pope_imgs": 0}}
    with pytest.raises(CSRError, match="'eval.select.overrides'.*pope_imgs"):
        validate(cfg)


def test_an_old_saved_config_reads_as_no_selection():
    saved = OmegaConf.to_container(compose_config("eval.select=null"))
    del saved["eval"]["select"]  # written before the key existed
    assert upgrade(saved)["eval"]["select"] is None
    assert validate(OmegaConf.create(upgrade(saved))).eval.select is None


# -- where it is recorded -------------------------------------------------------------------------------------

SELECTION = {"iteration": 2, "metric": "shapesworld/chair_s", "mode": "min", "split": "val", "patience": 1,
             "value": 0.158, "values": {"0": 0.342, "1": 0.174, "2": 0.158, "3": 0.190}, "checkpoint": "iter_2/merged",
             "stopped_early": False, "reported_split": "test", "reported": {"shapesworld/chair_s": 0.130}}


def test_the_table_shows_the_selection_score_and_the_selected_row():
    metrics = {k: {"eval": {"shapesworld/chair_s": c}, "select": {"shapesworld/chair_s": v}}
               for k, c, v in ((0, 0.326, 0.342), (1, 0.174, 0.174), (2, 0.130, 0.158), (3, 0.144, 0.190))}
    rows = table_rows(metrics, [("CHAIR_S", "shapesworld/chair_s")], SELECTION)
    assert [r["val CHAIR_S"] for r in rows] == [0.342, 0.174, 0.158, 0.190]
    assert [r["selected"] for r in rows] == [None, None, "yes", None]
    assert [r["CHAIR_S"] for r in rows] == [0.326, 0.174, 0.130, 0.144]  # each iteration's own test figures
    table = markdown(rows)
    assert "| 2 | 0.130 | 0.158 | yes |" in table and "| 3 | 0.144 | 0.190 | - |" in table
    note = selection_note(SELECTION, [("CHAIR_S", "shapesworld/chair_s")])
    assert "selected: iteration 2, the lowest val CHAIR_S (0.158) of iterations 0, 1, 2, 3" in note
    assert "checkpoint iter_2/merged" in note and "evaluation on test" in note
    assert table_rows(metrics, [("CHAIR_S", "shapesworld/chair_s")])[0].keys() == {"iteration", "CHAIR_S"}  # off: as before


def test_run_info_gains_the_selection_and_still_reads_as_its_start_wrote_it(tmp_path):
    path = tmp_path / "run_info.json"
    text = json.dumps({"overrides": [], "csr_version": "1", "libraries": {}}, indent=2) + "\n"
    path.write_text(text)
    record_selection(path, SELECTION)
    assert read_json(path)["selection"] == SELECTION
    assert started_as(path) == text  # a resume does not take it for another start's run_info
    record_selection(path, None)
    assert path.read_text() == text


# -- the loop, on the tiny models -----------------------------------------------------------------------------

INJECT = Path(__file__).resolve().parent / "fault_inject.py"
# ShapesWorld's evaluator on the tiny models: test reported, val selects. mean_r_i varies between the
# tiny models (CHAIR does not: they name no shapes), so the choice is not a tie.
SHAPES = ["experiment=smoke", "logger.tracking_uri=null", "eval.evaluators=[shapesworld]",
          "eval.shapesworld.pope_images=2", "eval.batch_size=2"]
SELECT = "eval.select={metric: shapesworld/mean_r_i, mode: max, split: val, patience: null, " \
         "overrides: {shapesworld: {pope_images: 0}}}"


def _shapes(tmp: Path) -> list[str]:
    return [*SHAPES, f"eval.shapesworld.root={tmp / 'data'}"]


def _numbers(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, int | float) and k != "seconds"}


@pytest.fixture(scope="module")
def env(tiny_models) -> dict:
    return tiny_env(tiny_models)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("select")


@pytest.fixture(scope="module")
def crashed(env, base) -> Path:
    """A selecting run killed (SIGKILL) inside iteration 1's selection, then rerun with the same command."""
    run_dir = base / "crashed"
    args = [f"run_dir={run_dir}", "iterations=2", *_shapes(base), SELECT, "report.inspect=true"]
    proc = subprocess.run([sys.executable, str(INJECT), "record:iter_1/eval/select/shapesworld/answers.jsonl:2", *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=base)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (run_dir / "iter_1" / "eval.done.json").exists() and not (run_dir / "iter_1" / "eval" / "select.done.json").exists()
    run("csr", *args, env=env, cwd=base)
    return run_dir


@pytest.fixture(scope="module")
def plain(env, base) -> Path:
    run_dir = base / "plain"
    run("csr", f"run_dir={run_dir}", "iterations=2", *_shapes(base), env=env, cwd=base)
    return run_dir


@pytest.fixture(scope="module")
def reproduced(env, base, crashed) -> Path:
    out = base / "reproduced"
    run("csr-reproduce", str(crashed), "--run-dir", str(out), env=env, cwd=base)
    return out


@pytest.mark.slow
def test_scoring_on_val_changes_no_training_output_and_no_test_figure(crashed, plain):
    for name in ("iter_1/search.jsonl", "iter_1/pairs.jsonl", "iter_2/search.jsonl", "iter_2/pairs.jsonl",
                 "iter_1/merged/model.safetensors", "iter_2/merged/model.safetensors",
                 "iter_0/eval/shapesworld/answers.jsonl", "iter_2/eval/shapesworld/answers.jsonl"):
        assert (crashed / name).read_bytes() == (plain / name).read_bytes(), name
    for k in (0, 1, 2):
        a, b = read_json(crashed / f"iter_{k}" / "metrics.json"), read_json(plain / f"iter_{k}" / "metrics.json")
        assert set(a) - set(b) == {"select"}
        assert _numbers(a["eval"]) == _numbers(b["eval"])
    assert "selection" not in read_json(plain / "run_info.json")
    assert "selected" not in read_json(plain / "summary.json")[0]


@pytest.mark.slow
def test_the_run_records_the_selected_iteration_everywhere(crashed):
    scores = {k: done_stats(crashed / f"iter_{k}" / "eval", "select") for k in (0, 1, 2)}
    values = {k: s["shapesworld/mean_r_i"] for k, s in scores.items()}
    assert all(s["shapesworld/settings"]["split"]["split"] == "val" for s in scores.values())
    assert all("pope_f1" not in s and "shapesworld/pope_f1" not in s for s in scores.values())  # overrides: no POPE
    assert len(set(values.values())) == 3  # a real choice, not a tie
    k = max(values, key=values.get)
    record = read_json(crashed / "run_info.json")["selection"]
    assert (record["iteration"], record["value"], record["split"], record["reported_split"]) == (k, values[k], "val", "test")
    assert record["reported"] == read_json(crashed / f"iter_{k}" / "metrics.json")["eval"]  # its test figures
    assert record["reported"]["shapesworld/settings"]["split"]["split"] == "test"
    checkpoint = Path(record["checkpoint"]) if k == 0 else crashed / record["checkpoint"]
    assert (checkpoint / "config.json").exists()
    rows = read_json(crashed / "summary.json")
    assert [r["selected"] for r in rows] == ["yes" if r["iteration"] == k else None for r in rows]
    assert [r["val answer R_I"] for r in rows] == [values[r["iteration"]] for r in rows]
    assert f"selected: iteration {k}, the highest val answer R_I" in (crashed / "summary.md").read_text()
    site = (crashed / "inspect" / "data" / "run.js").read_text()
    assert '"selection"' in site and f'"iteration":{k}' in site.replace(" ", "")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{crashed / 'mlflow.db'}")
    parent = client.get_run(read_json(crashed / "mlflow_runs.json")["parent"])
    assert parent.data.tags["csr.selected_iteration"] == str(k)
    assert parent.data.tags["csr.selected_checkpoint"] == record["checkpoint"]
    assert parent.data.metrics["selected/shapesworld/mean_r_i"] == pytest.approx(record["reported"]["shapesworld/mean_r_i"])
    assert len(client.get_metric_history(parent.info.run_id, "select/shapesworld/mean_r_i")) == 3


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_inspectors_run_page_says_which_iteration_was_selected(crashed):
    k = read_json(crashed / "run_info.json")["selection"]["iteration"]
    with Browser() as b:
        b.goto((crashed / "inspect" / "index.html").as_uri())
        said = b.eval("document.querySelector('main section p').textContent")
        header = json.loads(b.eval("JSON.stringify([...document.querySelectorAll('#summary th')].map(t => t.textContent))"))
    assert said.startswith(f"Selected: iteration {k} (val shapesworld/mean_r_i highest") and "evaluation on test" in said
    assert header[-2:] == ["val answer R_I", "selected"]


@pytest.mark.slow
def test_a_crash_inside_the_selection_resumes_to_what_an_uninterrupted_run_writes(crashed, reproduced):
    # csr-reproduce ran the same config without a crash
    for k in (0, 1, 2):
        name = f"iter_{k}/eval/select/shapesworld/answers.jsonl"
        assert (crashed / name).read_bytes() == (reproduced / name).read_bytes(), name
        a = done_stats(crashed / f"iter_{k}" / "eval", "select")
        assert _numbers(a) == _numbers(done_stats(reproduced / f"iter_{k}" / "eval", "select"))
    a, b = read_json(crashed / "run_info.json")["selection"], read_json(reproduced / "run_info.json")["selection"]
    assert {k: v for k, v in a.items() if k != "reported"} == {k: v for k, v in b.items() if k != "reported"}
    assert _numbers(a["reported"]) == _numbers(b["reported"])


@pytest.mark.slow
def test_a_stage_run_redoes_the_selection_with_its_evaluation(env, base, crashed):
    copy = base / "stage_run"
    shutil.copytree(crashed, copy)
    run("csr", "stage=eval", "iteration=1", f"run_dir={copy}", "eval.limit=3", env=env, cwd=base)
    assert len((copy / "iter_1" / "eval" / "select" / "shapesworld" / "answers.jsonl").read_text().splitlines()) == 3
    assert done_stats(copy / "iter_1" / "eval", "select")["shapesworld/answers"] == 3
    values = {k: done_stats(copy / f"iter_{k}" / "eval", "select")["shapesworld/mean_r_i"] for k in (0, 1, 2)}
    record = read_json(copy / "run_info.json")["selection"]
    assert record["values"] == {str(k): v for k, v in values.items()}  # chosen again over the new score
    assert record["iteration"] == max(values, key=values.get)


@pytest.mark.slow
def test_an_allowed_change_adds_a_selection_to_a_run_that_had_none(env, base, plain):
    copy = base / "added"
    shutil.copytree(plain, copy)
    stamp = {p: p.stat().st_mtime_ns for p in copy.glob("iter_*/**/*.jsonl")}
    refused = run("csr", f"run_dir={copy}", "iterations=2", *_shapes(base), SELECT, env=env, cwd=base, check=False)
    assert refused.returncode == 2 and "eval.select: null -> <absent>; eval.select.metric: <absent> -> " \
        "shapesworld/mean_r_i" in refused.stderr + refused.stdout  # a change like any other
    keys = "eval.select,eval.select.metric,eval.select.mode,eval.select.overrides.shapesworld.pope_images," \
           "eval.select.patience,eval.select.split"
    proc = run("csr", f"run_dir={copy}", "iterations=2", *_shapes(base), SELECT, f"resume.allow_changes=[{keys}]",
               env=env, cwd=base)
    assert "selected: iteration" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing redone but the selection's own scores
    assert all((copy / f"iter_{k}" / "eval" / "select.done.json").exists() for k in (0, 1, 2))


@pytest.mark.slow
def test_patience_stops_the_loop_and_the_base_model_can_be_the_one_kept(env, base):
    run_dir = base / "patience"
    # The answer count is the same for every model: no iteration beats the base, so patience 1 stops after one.
    run("csr", f"run_dir={run_dir}", "iterations=3", *_shapes(base), "eval.select={metric: shapesworld/answers, "
        "mode: max, split: val, patience: 1, overrides: {}}", env=env, cwd=base)
    assert (run_dir / "iter_1" / "metrics.json").exists() and not (run_dir / "iter_2").exists()
    record = read_json(run_dir / "run_info.json")["selection"]
    assert (record["iteration"], record["stopped_early"]) == (0, True)
    assert record["checkpoint"] == OmegaConf.load(run_dir / "config.yaml").model.path
    proc = run("csr", f"run_dir={run_dir}", "iterations=3", *_shapes(base), "eval.select={metric: shapesworld/answers, "
               "mode: max, split: val, patience: 1, overrides: {}}", env=env, cwd=base)
    assert not (run_dir / "iter_2").exists() and "stopped early" in proc.stdout  # a rerun stops where it stopped
