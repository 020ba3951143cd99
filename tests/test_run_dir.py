"""Which directories a run may use, and the one-config rule of a resume (csr/run/run_dir.py).

The rules are checked before any model loads, so most tests open the run directory in-process
(`Loop.open_run_dir`, no model); the last ones run `csr` and `csr-reproduce` on the tiny models.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from compose_config import compose_config
from csr_runs import run, tiny_env
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from csr.cli import CONF_DIR
from csr.config.schema import validate
from csr.core.errors import CSRError
from csr.core.io import read_json
from csr.core.tracking import Tracker, sqlite_path, sqlite_uri
from csr.loop import Loop
from csr.run.run_dir import EXEMPT, check_run_dir, config_diff, hydra_outputs

USER_FILES = ("project/.draft.tmp", "project/src/.main.py.tmp", ".cache/.x.tmp", "notes.txt")


def start(run_dir: Path, *overrides: str) -> Loop:
    """Open run_dir as `csr run_dir=... overrides` would, up to where the models would load."""
    loop = Loop(validate(compose_config(f"run_dir={run_dir}", *overrides)))
    with loop.open_run_dir():
        pass
    return loop


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def user_dir(root: Path) -> Path:
    for name in USER_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("mine")
    return root


def test_a_directory_holding_other_files_is_refused_and_left_untouched(tmp_path):
    project = user_dir(tmp_path / "project_root")
    before = snapshot(project)
    with pytest.raises(CSRError) as err:
        start(project)
    assert f"run_dir {project} is not a csr run directory" in str(err.value)
    assert "(it holds .cache, notes.txt, project)" in str(err.value) and "pass another run_dir" in str(err.value)
    assert snapshot(project) == before  # no .lock, no config: nothing written, nothing deleted


def test_what_hydra_and_csr_put_there_first_is_no_foreign_file(tmp_path):
    (tmp_path / ".hydra").mkdir()  # Hydra's own, when run_dir is its output directory
    (tmp_path / "cli.log").write_text("")
    (tmp_path / "reproduced_from").mkdir()  # csr-reproduce's copy of the source's config
    (tmp_path / ".config.yaml.csr-tmp-7-abcdefgh").write_text("")  # a first start killed mid-write
    assert check_run_dir(tmp_path, {".hydra", "cli.log"}) is False  # a new run, not a resume
    with pytest.raises(CSRError, match=r"\(it holds \.hydra, cli\.log\)"):  # not this start's Hydra output
        check_run_dir(tmp_path)


def test_hydra_outputs_are_those_of_this_start(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["run_dir=/tmp/x", f"hydra.run.dir={tmp_path}/outputs/d/t"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir
        cfg.hydra.job.name = "cli"
    HydraConfig.instance().set_config(cfg)
    try:
        assert hydra_outputs(tmp_path / "outputs" / "d" / "t") == {".hydra", "cli.log"}
        assert hydra_outputs(tmp_path) == {"outputs"}  # `cd run && csr run_dir=.`: Hydra's dir inside the run's
        assert hydra_outputs(tmp_path / "elsewhere") == set()
    finally:
        HydraConfig.instance().cfg = None


def test_run_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CSRError, match="is a file, not a directory"):
        start(tmp_path / "f")
    with pytest.raises(CSRError, match="part of the path is a file"):
        start(tmp_path / "f" / "run")


def test_an_empty_directory_becomes_a_run_directory_and_resumes(tmp_path):
    start(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.yaml", "run_info.json"]
    # Later: the user keeps notes in the run, and a killed write left a temp file of csr's.
    (tmp_path / "iter_1").mkdir()
    stale = tmp_path / "iter_1" / ".pairs.jsonl.csr-tmp-4242-abcd1234"
    stale.write_text("{")
    user_dir(tmp_path / "iter_1")
    config = (tmp_path / "config.yaml").read_text()
    start(tmp_path, "iterations=5", "stage=search", "iteration=1", "logger.run_name=again")  # exempt keys
    assert not stale.exists() and all((tmp_path / "iter_1" / n).read_text() == "mine" for n in USER_FILES)
    assert (tmp_path / "config.yaml").read_text() == config
    assert not (tmp_path / "config_changes.json").exists() and not list(tmp_path.glob("config.*.yaml"))


def test_a_changed_result_key_is_refused_with_the_diff_and_nothing_written(tmp_path):
    start(tmp_path, "reward.lam=0.5")
    before = snapshot(tmp_path)
    with pytest.raises(CSRError) as err:
        start(tmp_path, "reward.lam=0.9", "search.beam_width=4")
    message = str(err.value)
    assert "reward.lam: 0.5 -> 0.9; search.beam_width: 5 -> 4" in message
    assert "pass a new run_dir, or accept the change with resume.allow_changes=[reward.lam,search.beam_width]" in message
    with pytest.raises(CSRError, match=r"allow_changes=\[reward.lam,search.beam_width\]"):  # one is not enough
        start(tmp_path, "reward.lam=0.9", "search.beam_width=4", "resume.allow_changes=[reward.lam]")
    with pytest.raises(CSRError, match="'reward.lamb' is not a config key"):
        start(tmp_path, "reward.lam=0.9", "resume.allow_changes=[reward.lamb]")
    assert snapshot(tmp_path) == before


def test_allowed_changes_are_recorded_and_become_the_config_to_resume(tmp_path):
    start(tmp_path, "reward.lam=0.5")
    for stage in ("search", "reward"):  # as if iteration 1 had searched and scored at 0.5
        (tmp_path / "iter_1").mkdir(exist_ok=True)
        (tmp_path / "iter_1" / f"{stage}.done.json").write_text('{"stage": "x", "stats": {}}')
    loop = start(tmp_path, "reward.lam=0.9", "resume.allow_changes=[reward.lam]")
    assert loop.change["config"] == "config.1.yaml"
    (entry,) = read_json(tmp_path / "config_changes.json")
    assert entry["changes"] == {"reward.lam": [0.5, 0.9]} and entry["finished"] == ["iter_1/search", "iter_1/reward"]
    assert "lam: 0.9" in (tmp_path / "config.1.yaml").read_text() and "lam: 0.5" in (tmp_path / "config.yaml").read_text()
    start(tmp_path, "reward.lam=0.9")  # the same again, allow_changes no longer needed: nothing new
    assert len(read_json(tmp_path / "config_changes.json")) == 1 and not (tmp_path / "config.2.yaml").exists()
    with pytest.raises(CSRError, match=r"reward.lam: 0.9 -> 0.5"):  # going back is a change too
        start(tmp_path, "reward.lam=0.5")


def test_a_run_refused_by_the_lock_writes_nothing(tmp_path):
    start(tmp_path, "reward.lam=0.5")
    child = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from csr.core.lock import run_lock\n"
         f"with run_lock(Path({str(tmp_path)!r})):\n    print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        with pytest.raises(CSRError, match="in use by another csr run"):
            start(tmp_path, "reward.lam=0.9", "resume.allow_changes=[reward.lam]")
        assert snapshot(tmp_path) == before  # no config.1.yaml in the running run's directory
    finally:
        child.communicate("\n", timeout=30)


def test_exempt_keys_change_nothing_but_their_own():
    assert config_diff({"run_dir": "/a", "logger": {"run_name": "x"}, "reward": {"lam": 0.5}},
                       {"run_dir": "/b", "logger": {"run_name": "y"}, "reward": {"lam": 0.5}}) == {}
    assert config_diff({"reward": {"lam": 0.5}}, {"reward": {"lam": 0.5, "new": 1}}) == {"reward.new": ("<absent>", 1)}
    assert "search.prompts_per_batch" not in EXEMPT and "trainer.devices" not in EXEMPT


def test_two_starts_in_one_second_get_two_directories():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["run_dir=/tmp/x"], return_hydra_config=True)
    run_dir, sweep_dir = cfg.hydra.run.dir, cfg.hydra.sweep.dir
    assert run_dir.count("-") == 5 and len(run_dir.rsplit("-", 1)[1]) == 6  # outputs/<date>/<H-M-S-microseconds>
    assert len(sweep_dir.rsplit("-", 1)[1]) == 6


def test_a_question_mark_in_the_path_keeps_the_store_where_it_belongs(tmp_path):
    run_dir = tmp_path / "what?x=1%41" / "run"
    run_dir.mkdir(parents=True)
    uri = sqlite_uri(run_dir / "mlflow.db")
    assert uri == f"sqlite:///{tmp_path}/what%3Fx=1%2541/run/mlflow.db" and sqlite_path(uri) == run_dir / "mlflow.db"
    tracker = Tracker(run_dir, True, None, "csr")  # the default store: null = inside the run directory
    tracker.parent("r", {"a": 1})
    assert (run_dir / "mlflow.db").stat().st_size > 0 and not (tmp_path / "what").exists()
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (run_dir / "mlartifacts").as_uri()


# -- end to end: `csr` and `csr-reproduce` on the tiny models -----------------------------------------

TINY = ["experiment=smoke", "data.limit=2", "search.prompts_per_batch=2", "iterations=1"]


@pytest.fixture(scope="module")
def changed(tiny_models, tmp_path_factory):
    """A run searched at lam 0.5, its resume refused at 0.9, then scored at 0.9 with the change allowed."""
    base = tmp_path_factory.mktemp("changed")
    env, src = tiny_env(tiny_models), base / "run"
    common = [f"run_dir={src}", f"logger.tracking_uri={sqlite_uri(base / 'mlflow.db')}", *TINY]
    run("csr", "stage=search", "iteration=1", "reward.lam=0.5", *common, env=env, cwd=base)
    before = snapshot(src)
    # A whole-run resume under a changed key is refused; a stage run alone may change it (csr/run/stage_run.py).
    refused = run("csr", "reward.lam=0.9", *common, env=env, cwd=base, check=False)
    after_refusal = snapshot(src)
    run("csr", "stage=reward", "iteration=1", "reward.lam=0.9", "resume.allow_changes=[reward.lam]", *common,
        env=env, cwd=base)
    # Hydra records every start, a refused one too, in run_dir's .hydra/ and cli.log: not csr's outputs.
    changed = {k: v for k, v in after_refusal.items() if before.get(k) != v}
    return base, env, src, refused, {k: v for k, v in changed.items() if k != "cli.log" and not k.startswith(".hydra")}


@pytest.mark.slow
def test_csr_refuses_a_changed_resume_in_one_line_with_exit_2(changed):
    _, _, _, refused, untouched = changed
    assert refused.returncode == 2 and untouched == {}
    out = refused.stdout + refused.stderr
    assert "reward.lam: 0.5 -> 0.9" in out and "resume.allow_changes=[reward.lam]" in out and "Traceback" not in out


@pytest.mark.slow
def test_an_allowed_change_is_logged_to_mlflow(changed):
    from mlflow.tracking import MlflowClient

    base, _, src, _, _ = changed
    client = MlflowClient(sqlite_uri(base / "mlflow.db"))
    parent = client.get_run(read_json(src / "mlflow_runs.json")["parent"])
    assert parent.data.tags["csr.config.1"] == "reward.lam: 0.5 -> 0.9 (after iter_1/search)"
    assert parent.data.params["reward.lam"] == "0.5"  # the first start's; the tag says what changed
    assert {"config.1.yaml", "config_changes.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_csr_reproduce_replays_each_config_where_it_ran(changed, tmp_path):
    base, env, src, _, _ = changed
    out = tmp_path / "copy"
    proc = run("csr-reproduce", str(src), "logger.tracking_uri=null", "--run-dir", str(out), env=env, cwd=tmp_path)
    assert "--config-name=config stage=search iteration=1" in proc.stderr
    assert "--config-name=config.1 " in proc.stderr
    for name in ("iter_1/search.jsonl", "iter_1/rewards.jsonl"):  # search at 0.5, reward at 0.9, as the source
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    (entry,) = read_json(out / "config_changes.json")
    assert entry["changes"] == {"reward.lam": [0.5, 0.9]} and entry["finished"] == ["iter_1/search"]
