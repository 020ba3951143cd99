"""Optional parts are optional: a run that does not need an extra runs without it installed, and one
that needs it stops at start with one line naming the extra (csr/core/extras.py)."""

from __future__ import annotations

import pytest
from csr_runs import SMOKE, run, tiny_env

from csr.core.errors import CSRError
from csr.core.extras import installed, missing_message, needed_extras, require, require_launcher


def _hiding(env: dict, tmp_path, modules: list[str]) -> dict:
    """`env` with `modules` made uninstalled in every Python it starts: a sitecustomize sets them to None
    in sys.modules, so `import` fails and importlib.util.find_spec answers None, as for a missing one."""
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {**env, "PYTHONPATH": f"{site}:{env.get('PYTHONPATH', '')}".rstrip(":")}


def test_what_each_setting_needs():
    assert needed_extras(False, "auto", ["shapesworld"], "original") == {}
    assert set(needed_extras(True, "auto", ["generate"], "original")) == {"mlflow"}
    assert set(needed_extras(False, "deepspeed", ["generate"], "fixed")) == {"deepspeed"}
    # Only coco_chair reads the variant; `fixed` is csr's own reading and needs no nltk.
    assert set(needed_extras(False, "ddp", ["coco_chair", "pope"], "original")) == {"chair-original"}
    assert needed_extras(False, "ddp", ["coco_chair"], "fixed") == {}


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    assert installed("json") and not installed("csr_no_such_module") and not installed("csr_no_such.sub")
    monkeypatch.setattr("csr.core.extras.installed", lambda module: module != "nltk")
    with pytest.raises(CSRError) as err:
        require("chair-original", "eval.chair.variant=original")
    assert str(err.value) == missing_message("chair-original", "nltk", "eval.chair.variant=original")
    assert "pip install 'csr[chair-original]'" in str(err.value)
    monkeypatch.setattr("csr.core.extras.installed", lambda module: False)
    with pytest.raises(CSRError, match=r"hydra/launcher=parallel needs hydra_joblib_launcher.*csr\[sweeps\]"):
        require_launcher("parallel")
    require_launcher("sequential")  # Hydra's own basic launcher needs nothing


@pytest.mark.slow  # the compatibility matrix's end-to-end run (.ci/run)
def test_runs_without_mlflow_when_tracking_is_off(tiny_models, tmp_path):
    env = _hiding(tiny_env(tiny_models), tmp_path, ["mlflow"])
    run_dir = tmp_path / "run"
    run("csr", *SMOKE, f"run_dir={run_dir}", "logger.enabled=false", env=env, cwd=tmp_path)
    assert (run_dir / "iter_1" / "metrics.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (run_dir / "mlflow.db").exists()


@pytest.mark.parametrize(("hidden", "args", "extra"), [
    (["mlflow"], [], "mlflow"),
    (["deepspeed"], ["trainer=deepspeed_zero2"], "deepspeed"),
    (["nltk"], ["eval.evaluators=[coco_chair]", "eval.chair.variant=original"], "chair-original"),
    (["hydra_plugins.hydra_joblib_launcher"], ["-m", "hydra/launcher=parallel"], "sweeps"),
])
def test_a_run_that_needs_a_missing_extra_stops_at_start(tiny_models, tmp_path, hidden, args, extra):
    env = _hiding(tiny_env(tiny_models), tmp_path, hidden)
    run_dir = tmp_path / "run"
    proc = run("csr", *SMOKE, f"run_dir={run_dir}", *args, env=env, check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "pip install" in line]
    assert len(lines) == 1 and f"pip install 'csr[{extra}]'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "iter_1").exists()
