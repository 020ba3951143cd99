"""What a user hands csr comes from a stranger (a colleague's run, an MLflow artifact, a downloaded
dataset): nothing in it may run code, reach the network or script the inspector's pages.

Each payload here is harmless but visible: it writes a marker file (or a page sets a flag) when it
runs, and each test fails on the csr before these checks (issue 28).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compose_config import PATHS, compose_config
from csr_runs import run
from omegaconf import OmegaConf

from csr.config.schema import validate
from csr.core.errors import CSRError
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
    from csr.commands.compare_runs import run_from_dir
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


# -- 3. images: an allow-list of formats, so no file reaches an external program (Ghostscript) -------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def _fake_ghostscript(tmp_path: Path, marker: Path) -> dict:
    """PATH with a `gs` that only writes `marker`: Pillow's EPS plugin runs whatever `gs` it finds."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    return {**_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("opener", [
    "from csr.data.images import load_image; load_image(sys.argv[1], 'photo.png')",
    "from csr.models.chat import _image_size; print(_image_size(sys.argv[1], 'photo.png'))",
])
def test_an_eps_image_never_reaches_ghostscript(tmp_path, opener):
    import subprocess
    import sys

    marker, images = tmp_path / "marker", tmp_path / "images"
    images.mkdir()
    (images / "photo.png").write_bytes(EPS)  # named .png: Pillow goes by content
    proc = subprocess.run([sys.executable, "-c", f"import sys\n{opener}", str(images)], env=_fake_ghostscript(tmp_path, marker),
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "Pillow ran `gs` on the file"
    if "load_image" in opener:
        assert "not a recognised image file" in proc.stderr and "csr opens only" in proc.stderr


# -- 4. the inspector escapes everything a run directory holds -----------------------------------------

NAME = "\"'><img src=x onerror=window.__pwned=1>"  # a file name holds no "/"
XSS = NAME + "<script>window.__pwned=2</script>"


def _node(i: int, parent: int, text: str, **extra) -> dict:
    return {"id": i, "parent": parent, "depth": 0 if parent < 0 else 1, "text": text, "token_ids": [1], "r_t": -1.0 * i,
            "r_i": 2.0 * i, "reward": 0.1 * i, "path_reward": 0.0, "path_r_t": 0.0, "answer_tokens": 1,
            "finish": None, "final": False, "kept": parent < 0, **extra}


def crafted_run(tmp_path: Path) -> Path:
    """A run directory whose every key, value, id and file name a stranger chose: XSS payloads."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(images / f"{NAME}.png")
    run_dir = tmp_path / f"run{NAME}"
    cfg = OmegaConf.to_container(compose_config(f"data.image_root={images}"), resolve=True)
    cfg["run_dir"], cfg["model"]["path"] = str(run_dir), XSS
    (run_dir / "iter_1" / "eval" / NAME).mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run_dir / "summary.json").write_text(json.dumps([{"iteration": 1, XSS: XSS, "answer R_I": XSS}]))
    nodes = [_node(0, -1, ""), _node(1, 0, XSS, finish=XSS, final=True), _node(2, 0, XSS, finish="eos", final=True)]
    sentence = [{"text": XSS, "r_t": -1.0, "r_i": 2.0, "reward": 0.1}]
    records = {
        "search.jsonl": [{"id": XSS, "prompt": XSS, "image": f"{NAME}.png", "nodes": nodes},
                         {"id": XSS + "2", "prompt": XSS, "image": f"{NAME}.png", "skipped": XSS, "error": XSS}],
        "rewards.jsonl": [{"id": XSS, "answers": [{"node": 1, "text": XSS, "finish": XSS, "score": 0.9, "sentences": sentence},
                                                  {"node": 2, "text": XSS, "finish": "eos", "score": 0.5, "sentences": sentence}]}],
        f"eval/{NAME}/answers.jsonl": [{"id": XSS, "image": f"{NAME}.png", "prompt": XSS, "answer": XSS, "finish": XSS, "r_i": 1.0}],
    }
    for name, rows in records.items():
        (run_dir / "iter_1" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "iter_1" / "metrics.json").write_text(json.dumps({"pairs": {f"skipped/{XSS}": 1, "pairs": 0}}))
    return run_dir


@pytest.mark.skipif(__import__("csr.inspect.browser", fromlist=["chromium"]).chromium() is None,
                    reason="chromium is not installed (.ci/run installs it)")
def test_no_value_of_a_crafted_run_directory_runs_as_script_in_the_inspector(tmp_path):
    from csr.inspect.browser import Browser
    from csr.inspect.data import prompt_key
    from csr.inspect.site import write_site

    site = write_site(crafted_run(tmp_path), tmp_path / "site")
    ran = "[window.__pwned, document.querySelectorAll('img[src=\"x\"], script:not([src])').length]"
    with Browser() as b:
        b.goto((site / "index.html").as_uri())
        assert b.eval(ran) == [None, 0]
        assert b.eval("document.querySelectorAll('#prompts tbody tr').length") == 2
        assert XSS in b.eval("document.getElementById('summary').textContent")  # shown as text
        b.goto((site / "prompt.html").as_uri() + f"#p={prompt_key(XSS)}&it=1")
        b.click("#tree .node[data-id='1']")  # the side panel: depth, parent, finish, the calibration's name
        assert b.eval(ran) == [None, 0]
        assert b.eval("document.querySelector('#image').naturalWidth") == 8  # the image, by its content's name
        b.goto((site / "prompt.html").as_uri() + "#p=../../evil&it=1")
        assert "no prompt in the address" in b.eval("document.getElementById('main').textContent")
        b.goto((site / "eval.html").as_uri())
        assert b.eval(ran) == [None, 0]
        assert b.eval("document.querySelectorAll('#table tbody tr').length") == 1


# -- 5. csr-inspect --out replaces only a site it wrote ------------------------------------------------


def _small_run(tmp_path: Path, train: Path | None = None, evaluation: Path | None = None) -> Path:
    """A run directory with one searched prompt and one evaluation answer, both on image 0.png."""
    run_dir = tmp_path / "run"
    (run_dir / "iter_1" / "eval" / "generate").mkdir(parents=True)
    overrides = [f"data.image_root={train}"] if train else []
    overrides += [f"eval.image_root={evaluation}"] if evaluation else []
    cfg = OmegaConf.to_container(compose_config(*overrides), resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run_dir / "iter_1" / "search.jsonl").write_text(json.dumps(
        {"id": "p1", "prompt": "Describe.", "image": "0.png", "skipped": "missing_image"}) + "\n")
    (run_dir / "iter_1" / "eval" / "generate" / "answers.jsonl").write_text(json.dumps(
        {"id": "e1", "image": "0.png", "prompt": "Describe.", "answer": "A square.", "finish": "eos"}) + "\n")
    return run_dir


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in root.rglob("*")}


@pytest.mark.parametrize("target", ["user folder", "the run", "the run's parent", "a file"])
def test_csr_inspect_refuses_an_out_it_did_not_make_and_deletes_nothing(tmp_path, target):
    from csr.inspect.site import main

    run_dir = _small_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    user = tmp_path / "folder"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    out = {"user folder": user, "the run": run_dir, "the run's parent": tmp_path, "a file": tmp_path / "notes.txt"}[target]
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as err:
        main([str(run_dir), "--out", str(out)])
    assert str(err.value).startswith(f"csr-inspect: --out {out}") and "\n" not in str(err.value)
    assert _tree(tmp_path) == before  # nothing deleted, nothing written


def test_csr_inspect_writes_into_a_new_or_empty_directory_and_replaces_its_own_site(tmp_path):
    from csr.inspect.site import MARKER, write_site

    run_dir = _small_run(tmp_path)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "site", None):
        site = write_site(run_dir, out)
        assert (site / MARKER).is_file() and (site / "index.html").is_file()
        (site / "data" / "stale.js").write_text("from an earlier build")
        assert write_site(run_dir, out) == site and not (site / "data" / "stale.js").exists()  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new", "run"]  # no build leftovers


# -- 10, 16. inspector images: named by content; one csr cannot read is not shown ---------------------


def test_training_and_evaluation_images_of_one_name_stay_apart_in_the_site(tmp_path):
    from PIL import Image

    from csr.inspect.site import write_site

    train, evaluation = tmp_path / "train", tmp_path / "eval"
    for root, colour in ((train, (255, 0, 0)), (evaluation, (0, 0, 255))):
        root.mkdir()
        Image.new("RGB", (4, 4), colour).save(root / "0.png")
    site = write_site(_small_run(tmp_path, train, evaluation), tmp_path / "site")
    page = json.loads((site / "data" / "p" / "p1.js").read_text().split(",", 1)[1].rsplit(");", 1)[0])
    answers = json.loads((site / "data" / "eval_generate.js").read_text().split(",", 1)[1].rsplit(");", 1)[0])
    shown = {Image.open(site / page["image"]).getpixel((0, 0)), Image.open(site / answers[0]["image"]).getpixel((0, 0))}
    assert shown == {(255, 0, 0), (0, 0, 255)}


def test_an_unreadable_image_a_run_skipped_is_left_out_of_the_site(tmp_path):
    from csr.inspect.site import write_site

    images = tmp_path / "images"
    images.mkdir()
    (images / "0.png").write_bytes(b"")  # data.on_error=skip counted it; the site must still build
    site = write_site(_small_run(tmp_path, images), tmp_path / "site")
    page = json.loads((site / "data" / "p" / "p1.js").read_text().split(",", 1)[1].rsplit(");", 1)[0])
    assert page["image"] is None and page["image_name"] == "0.png"


# -- 6. a refused start writes nothing --------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_csr_refusing_another_apps_directory_leaves_its_hydra_files_alone(tmp_path):
    other = tmp_path / "other_app"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text("theirs: 1\n")
    (other / "main.py").write_text("print('mine')\n")
    before = _snapshot(other)
    proc = run("csr", f"run_dir={other}", env=_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not a csr run directory and is not empty" in proc.stderr
    assert _snapshot(other) == before


def test_a_refused_resume_leaves_the_runs_hydra_files_and_log_alone(tmp_path):
    run_dir = tmp_path / "run"
    start = Loop(validate(compose_config(f"run_dir={run_dir}", "reward.lam=0.5")))
    with start.open_run_dir():
        pass
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- reward.lam=0.5\n")
    (run_dir / "cli.log").write_text("the first start's log\n")
    before = _snapshot(run_dir)
    paths = [a for a in PATHS if not a.startswith("run_dir")]  # as the first start was composed
    proc = run("csr", f"run_dir={run_dir}", "reward.lam=0.9", *paths, env=_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "reward.lam: 0.5 -> 0.9" in proc.stderr and "Traceback" not in proc.stderr
    after = _snapshot(run_dir)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert after[".hydra/overrides.yaml"] == before[".hydra/overrides.yaml"] and after["cli.log"] == before["cli.log"]


# -- 7. csr-make-tiny writes only into a directory it made -----------------------------------------------


def test_csr_make_tiny_refuses_a_directory_it_did_not_make(tmp_path):
    from csr.models.tiny import main

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "prompts.json").write_text("[my own prompts]")
    for out in (project, tmp_path / "file.txt", tmp_path / "file.txt" / "sub"):
        (tmp_path / "file.txt").write_text("mine")
        with pytest.raises(SystemExit, match=f"csr-make-tiny: {out}"):
            main([str(out)])
    assert (project / "data" / "prompts.json").read_text() == "[my own prompts]"
    assert sorted(p.name for p in project.rglob("*")) == ["data", "prompts.json"]


def test_a_stage_run_beyond_the_run_is_refused_and_leaves_no_iteration_directory(tmp_path):
    run_dir = tmp_path / "run"
    start = Loop(validate(compose_config(f"run_dir={run_dir}")))
    with start.open_run_dir():
        pass
    before = _snapshot(run_dir)
    paths = [a for a in PATHS if not a.startswith("run_dir")]
    proc = run("csr", "stage=search", "iteration=5", f"run_dir={run_dir}", *paths, env=_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "reads iter_4/merge" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(run_dir) == before and not (run_dir / "iter_5").exists()


def test_a_run_dir_under_a_file_is_one_line_before_hydra(tmp_path):
    (tmp_path / "afile").write_text("mine")
    proc = run("csr", f"run_dir={tmp_path / 'afile' / 'sub'}", env=_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert "part of the path is a file, not a directory" in proc.stderr
