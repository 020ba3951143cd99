"""What a user hands csr comes from a stranger (a colleague's run, an MLflow artifact, a downloaded
dataset): nothing in it may run code, reach the network or script the inspector's pages.

Each payload here is harmless but visible: it writes a marker file (or a page sets a flag) when it
runs, and each test fails on the csr before these checks (issue 28).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compose_config import compose_config
from csr_runs import run
from omegaconf import OmegaConf

from csr.config import validate
from csr.errors import CSRError
from csr.loop import Loop


def _run_dir(tmp_path: Path, marker: Path, where: str = "hydra") -> Path:
    """A csr run directory whose config.yaml someone appended a payload to: a Hydra callback (or an
    object to instantiate elsewhere) that opens `marker` for writing, so the file appears if it runs."""
    run_dir = tmp_path / "run"
    loop = Loop(validate(compose_config(f"run_dir={run_dir}")))
    with loop.open_run_dir():
        pass
    payload = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    saved = OmegaConf.load(run_dir / "config.yaml")
    if where == "hydra":
        saved.hydra = {"callbacks": {"evil": payload}}
    else:
        OmegaConf.update(saved, where, payload, force_add=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    return run_dir


def _env() -> dict:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# -- 1. a saved config is data ------------------------------------------------------------------------


def test_a_stage_run_never_instantiates_a_saved_hydra_callback(tmp_path):
    marker = tmp_path / "marker"
    run_dir = _run_dir(tmp_path, marker)
    before = (run_dir / "config.yaml").read_bytes()
    proc = run("csr", "stage=eval", "iteration=1", f"run_dir={run_dir}", env=_env(), cwd=tmp_path, check=False)
    assert not marker.exists(), "the saved config's hydra.callbacks ran"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{run_dir / 'config.yaml'}: holds a 'hydra' section" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.yaml", "run_info.json"]  # nothing written
    assert (run_dir / "config.yaml").read_bytes() == before


def test_csr_reproduce_never_instantiates_a_saved_hydra_callback(tmp_path):
    marker = tmp_path / "marker"
    run_dir = _run_dir(tmp_path, marker)
    out = tmp_path / "copy"
    proc = run("csr-reproduce", str(run_dir), "--run-dir", str(out), env=_env(), cwd=tmp_path, check=False)
    assert not marker.exists(), "the saved config's hydra.callbacks ran"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "holds a 'hydra' section" in proc.stderr
    assert not out.exists()  # a refusal leaves nothing behind


@pytest.mark.parametrize("where", ["hydra", "trainer.deepspeed", "model.extra"])
def test_a_resume_refuses_a_saved_config_with_keys_csr_does_not_know(tmp_path, where):
    run_dir = _run_dir(tmp_path, tmp_path / "marker", where)
    loop = Loop(validate(compose_config(f"run_dir={run_dir}")))
    with pytest.raises(CSRError) as err, loop.open_run_dir():
        pass
    message = str(err.value)
    assert str(run_dir / "config.yaml") in message
    if where == "hydra":
        assert "holds a 'hydra' section" in message
    else:
        assert f"'{where}._target_'" in message or f"'{where}'" in message
    assert not (tmp_path / "marker").exists()


def test_the_inspector_and_csr_compare_refuse_a_saved_config_with_a_payload(tmp_path):
    from csr.compare import run_from_dir
    from csr.inspect.site import write_site

    run_dir = _run_dir(tmp_path, tmp_path / "marker")
    (run_dir / "iter_0").mkdir()
    with pytest.raises(CSRError, match="holds a 'hydra' section"):
        write_site(run_dir, tmp_path / "site")
    assert not (tmp_path / "site").exists()
    with pytest.raises(CSRError, match="holds a 'hydra' section"):
        run_from_dir(run_dir)


def test_a_config_change_record_naming_a_path_outside_the_run_is_refused(tmp_path):
    run_dir = _run_dir(tmp_path, tmp_path / "marker", "model.extra")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(f"run_dir={run_dir}")))
    victim = tmp_path / "victim.yaml"
    victim.write_text("mine\n")
    (run_dir / "config_changes.json").write_text(json.dumps(
        [{"config": "../victim.yaml", "changes": {}, "finished": [], "started_at": "2026-01-01T00:00:00+00:00"}]))
    out = tmp_path / "copy"
    proc = run("csr-reproduce", str(run_dir), "--run-dir", str(out), env=_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config_changes.json: entry 1: 'config' must name config.<n>.yaml" in proc.stderr
    assert victim.read_text() == "mine\n" and not out.exists()


# -- 2. a CLIP config_json names no hub and no remote code ---------------------------------------------


def _evil_tokenizer(tmp_path: Path, marker: Path) -> Path:
    """A tokenizer directory whose own Python (trust_remote_code) writes `marker` when imported."""
    tok = tmp_path / "evil_tokenizer"
    tok.mkdir()
    (tok / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                 "from transformers import PreTrainedTokenizer\n"
                                 "class EvilTokenizer(PreTrainedTokenizer):\n    pass\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]},
                                                           "tokenizer_class": "EvilTokenizer"}))
    (tok / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilTokenizer"}}))
    return tok


@pytest.mark.parametrize("text_cfg", [
    {"tokenizer_kwargs": {"trust_remote_code": True}},  # hf_tokenizer_name set below
    {"hf_model_name": "some-org/some-model", "hf_model_pretrained": True},
])
def test_a_clip_config_json_naming_remote_code_or_the_hub_is_refused(tmp_path, tiny_models, text_cfg):
    from csr.models.clip import load_clip

    marker = tmp_path / "marker"
    config = json.loads(Path(tiny_models.clip_config).read_text())
    if "tokenizer_kwargs" in text_cfg:
        text_cfg = {**text_cfg, "hf_tokenizer_name": str(_evil_tokenizer(tmp_path, marker))}
    config["text_cfg"].update(text_cfg)
    path = tmp_path / "evil-clip.json"
    path.write_text(json.dumps(config))
    with pytest.raises(CSRError, match=r"evil-clip.json: text_cfg\.(hf_tokenizer_name|hf_model_name)\b.*local files only"):
        load_clip("evil-clip", "random", str(path))
    assert not marker.exists(), "the tokenizer directory's Python ran"


def test_a_builtin_clip_architecture_that_needs_the_hub_is_refused():
    from csr.models.clip import load_clip

    with pytest.raises(CSRError, match=r"reward.clip.arch='ViT-B-16-SigLIP': .*hf_tokenizer_name"):
        load_clip("ViT-B-16-SigLIP", "random")
