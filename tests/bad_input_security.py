"""Troubleshooting-table cases for files that travel between people (issue 28): a run directory's saved
config, CLIP config files, image formats, output directories csr would replace, checkpoints whose
weights do not fit their config, and config values that used to pass. Merged into
tests/test_bad_input.py's CASES; tests/test_security.py holds the payload tests behind them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compose_config import compose_config
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from csr.cli import _path, check_config
from csr.commands.reproduce import check_target, stage_source
from csr.config.schema import validate
from csr.inspect.site import write_site
from csr.models.checkpoint import load_model
from csr.models.clip import load_clip
from csr.models.tiny import claim_out_dir
from csr.run.run_dir import read_changes, read_saved_config
from csr.run.stage_run import check_input

if TYPE_CHECKING:
    from scratch_prompts import Ctx


def _saved(ctx: Ctx, edit: Callable[[dict], object] | None = None, text: str | None = None) -> Path:
    """A run's config.yaml as csr writes it, then edited (or replaced by `text`); read as csr reads it."""
    path = ctx.tmp / "run" / "config.yaml"
    path.parent.mkdir()
    saved = OmegaConf.to_container(compose_config(), resolve=True)
    if edit is not None:
        edit(saved)
    path.write_text(text if text is not None else OmegaConf.to_yaml(OmegaConf.create(saved)))
    return read_saved_config(path)


def _changes(ctx: Ctx, entries: object) -> object:
    (ctx.tmp / "config_changes.json").write_text(json.dumps(entries))
    return read_changes(ctx.tmp)


def _clip_config(ctx: Ctx, edit: Callable[[dict], object] | None = None, raw: str | None = None) -> object:
    path = ctx.tmp / "evil-clip.json"
    config = json.loads(Path(ctx.tiny.clip_config).read_text())
    if edit is not None:
        edit(config)
    path.write_text(raw if raw is not None else json.dumps(config))
    return load_clip("evil-clip", "random", str(path))


def _truncated_clip(ctx: Ctx) -> object:
    weights = ctx.tmp / "clip.safetensors"
    shutil.copy(ctx.tiny.clip_weights, weights)
    os.truncate(weights, weights.stat().st_size // 2)
    return load_clip(ctx.tiny.clip_arch, str(weights), ctx.tiny.clip_config)


def _eps(ctx: Ctx) -> object:
    (ctx.images / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EOF\n")
    return ctx.image("eps.png")


def _run_with_iteration(ctx: Ctx) -> Path:
    (ctx.tmp / "run" / "iter_0").mkdir(parents=True)
    return ctx.tmp / "run"


def _inspect_into(ctx: Ctx, target: str) -> object:
    run_dir = _run_with_iteration(ctx)
    (ctx.tmp / "folder").mkdir()
    (ctx.tmp / "folder" / "notes.txt").write_text("mine")
    out = {"folder": ctx.tmp / "folder", "run": run_dir, "file": ctx.tmp / "folder" / "notes.txt"}[target]
    return write_site(run_dir, out)


def _weights(ctx: Ctx, change: Callable[[dict], object]) -> object:
    model = ctx.tmp / "model"
    shutil.copytree(ctx.tiny.llava, model)
    weights = load_file(model / "model.safetensors")
    change(weights)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return load_model(str(model))


def _drop(weights: dict) -> None:
    del weights[next(k for k in sorted(weights) if "down_proj" in k)]


def _add(weights: dict) -> None:
    weights["extra.weight"] = next(iter(weights.values())).clone()


def _reshape(weights: dict) -> None:
    key = next(k for k in sorted(weights) if "down_proj" in k)
    weights[key] = weights[key][:, :-1].contiguous()


def _not_empty(ctx: Ctx) -> None:
    (ctx.tmp / "folder").mkdir()
    (ctx.tmp / "folder" / "notes.txt").write_text("mine")


def _make_tiny_into(ctx: Ctx) -> object:
    _not_empty(ctx)
    return claim_out_dir(ctx.tmp / "folder")


def _make_tiny_onto_file(ctx: Ctx) -> object:
    (ctx.tmp / "file").write_text("mine")
    return claim_out_dir(ctx.tmp / "file")


def _reproduce_into(ctx: Ctx) -> object:
    _not_empty(ctx)
    return check_target(ctx.tmp / "folder")


def _reproduce_from(ctx: Ctx) -> object:
    (ctx.tmp / "source").mkdir()
    (ctx.tmp / "staging").mkdir()
    return stage_source(str(ctx.tmp / "source"), [], "sqlite:///x.db", ctx.tmp / "staging")


def _edited_split(ctx: Ctx) -> object:
    from csr.worlds.shapesworld.splits import ensure_split

    split = ensure_split(ctx.tmp / "shapesworld", "val", 2)
    truth = json.loads((split / "ground_truth.json").read_text())
    truth[next(iter(truth))]["objects"] = []  # an image now said to hold nothing
    (split / "ground_truth.json").write_text(json.dumps(truth))
    return ensure_split(ctx.tmp / "shapesworld", "val", 2)


def _checkpoint(ctx: Ctx, change: Callable[[Path], object]) -> object:
    model = ctx.tmp / "model"
    shutil.copytree(ctx.tiny.llava, model)
    change(model)
    return load_model(str(model))


def _pickled(model: Path) -> None:
    import torch

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()


def _without_processor(model: Path) -> None:
    for f in model.iterdir():
        if f.name.startswith(("tokenizer", "processor", "preprocessor", "chat_template", "special_tokens")):
            f.unlink()


def _without_model_type(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    del config["model_type"]
    (model / "config.json").write_text(json.dumps(config))


def _strip(ctx: Ctx) -> object:
    from PIL import Image

    Image.new("RGB", (20000, 1)).save(ctx.images / "strip.png")
    return ctx.image("strip.png")


def _bad_record_at_start(ctx: Ctx) -> object:
    """A run reads the whole prompt file at start, before the base model's evaluation (minutes)."""
    from csr.loop import Loop

    path = ctx.write([{"id": "r1", "image": "good.png", "input": "Describe the image."}])
    loop = Loop(validate(compose_config(f"run_dir={ctx.tmp / 'run'}", f"data.prompt_file={path}",
                                        f"data.image_root={ctx.images}", "data.shapesworld.split=null")))
    return loop.prepare_data()


def _rescored_changed_image(ctx: Ctx) -> object:
    """stage=reward scores the sentences the search pruned by R_T with the image: the search's, or refused."""
    from PIL import Image

    from csr.data.image_hash import image_sha256
    from csr.reward.module import RewardModule

    node = {"id": 0, "parent": -1, "depth": 0}
    record = {"id": "r1", "image": "good.png", "prompt": "Describe.", "input": "Describe.\n<image>",
              "image_sha256": image_sha256(str(ctx.images), "good.png"),
              "nodes": [node, {"id": 1, "parent": 0, "depth": 1, "text": " A cat.", "r_t": -1.0}]}
    Image.new("RGB", (8, 8), (200, 20, 30)).save(ctx.images / "good.png")  # same name, other pixels
    return RewardModule(None, 0.9, "rank", str(ctx.images)).score(record)  # refused before CLIP is needed


def _compare_onto_file(ctx: Ctx) -> object:
    from csr.commands.compare import Run, compare

    (ctx.tmp / "file").write_text("mine")
    return compare([Run("a", {"reward.lam": "0.5"}, {1: {"pairs/pairs": 3.0}}, None)], ctx.tmp / "file" / "out")


def _resumed_search(ctx: Ctx, edit: str) -> object:
    """A search stopped after one prompt, then resumed after the prompt file or the image was edited."""
    from PIL import Image

    from csr.data.image_hash import image_sha256
    from csr.data.prompts import load_prompts
    from csr.search.stage import check_resumed

    written = {"id": "ok", "image": "good.png", "prompt": "Describe.", "input": "Describe.\n<image>",
               "image_sha256": image_sha256(str(ctx.images), "good.png"), "nodes": []}
    (ctx.tmp / "search.jsonl").write_text(json.dumps(written) + "\n")
    if edit == "prompt":
        path = ctx.write([])  # rewritten: "ok" now asks something else
        Path(path).write_text(json.dumps([{"id": "ok", "image": "good.png", "input": "Count the shapes.\n<image>"}]))
    else:
        path = ctx.write([{"id": "r2", "image": "good.png", "input": "Describe.\n<image>"}])
        Image.new("RGB", (8, 8), (200, 20, 30)).save(ctx.images / "good.png")
    prompts, _ = load_prompts(path, str(ctx.images))
    return check_resumed(ctx.tmp / "search.jsonl", prompts, str(ctx.images), path)


def _config(*overrides: str) -> Callable[[Ctx], object]:
    return lambda ctx: check_config(compose_config(*overrides))


def _put(key: str, value: object) -> Callable[[dict], None]:
    def edit(saved: dict) -> None:
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(saved.get(part), dict):
                saved[part] = {}
            saved = saved[part]
        saved[leaf] = value
    return edit


CASES: dict[tuple[str, str], Callable[[Ctx], object]] = {
    ("run config.yaml", "a hydra: section (callbacks, launchers)"): lambda ctx: _saved(ctx, _put("hydra.callbacks.x._target_", "builtins.open")),
    ("run config.yaml", "_target_ or another key csr does not know"): lambda ctx: _saved(ctx, _put("trainer.deepspeed._target_", "torch.load")),
    ("run config.yaml", "a key missing that no recorded upgrade explains"): lambda ctx: _saved(ctx, lambda s: s.pop("search")),
    ("run config.yaml", "not valid YAML"): lambda ctx: _saved(ctx, text="search: [unclosed\n"),
    ("run config.yaml", "an interpolation ${...}"): lambda ctx: _saved(ctx, _put("model.path", "${oc.env:HOME}")),
    ("config_changes.json", "names a file outside the run directory"): lambda ctx: _changes(ctx, [{"config": "../../x.yaml", "changes": {}, "finished": []}]),
    ("config_changes.json", "not a list of changes"): lambda ctx: _changes(ctx, {"config": "config.1.yaml"}),
    ("CLIP config_json", "a hub model or tokenizer, or trust_remote_code"): lambda ctx: _clip_config(ctx, lambda c: c["text_cfg"].update(hf_tokenizer_name="org/tok")),
    ("CLIP config_json", "not JSON"): lambda ctx: _clip_config(ctx, raw="{not json"),
    ("CLIP config_json", "not an open_clip model config"): lambda ctx: _clip_config(ctx, raw="[1, 2]"),
    ("CLIP weights", "truncated safetensors file"): _truncated_clip,
    ("image", "EPS, PDF or another format outside csr's list"): _eps,
    ("csr-inspect --out", "a non-empty folder it did not write"): lambda ctx: _inspect_into(ctx, "folder"),
    ("csr-inspect --out", "the run directory or a folder holding it"): lambda ctx: _inspect_into(ctx, "run"),
    ("csr-inspect --out", "a file"): lambda ctx: _inspect_into(ctx, "file"),
    ("csr-inspect", "a directory without iter_<k>/"): lambda ctx: write_site(ctx.tmp),
    ("csr-make-tiny", "a non-empty folder it did not make"): _make_tiny_into,
    ("csr-make-tiny", "a file"): _make_tiny_onto_file,
    ("csr-reproduce --run-dir", "a non-empty folder"): _reproduce_into,
    ("csr-reproduce", "a source without config.yaml"): _reproduce_from,
    ("checkpoint", "a weight missing"): lambda ctx: _weights(ctx, _drop),
    ("checkpoint", "a tensor the model does not use"): lambda ctx: _weights(ctx, _add),
    ("checkpoint", "a tensor of another shape"): lambda ctx: _weights(ctx, _reshape),
    ("ShapesWorld split", "ground_truth.json or a prompt file edited after csr wrote it"): _edited_split,
    ("checkpoint", "no config.json"): lambda ctx: _checkpoint(ctx, lambda m: (m / "config.json").unlink()),
    ("checkpoint", "config.json not JSON"): lambda ctx: _checkpoint(ctx, lambda m: (m / "config.json").write_text("{not json")),
    ("checkpoint", "config.json without model_type"): lambda ctx: _checkpoint(ctx, _without_model_type),
    ("checkpoint", "pickle weights (pytorch_model.bin)"): lambda ctx: _checkpoint(ctx, _pickled),
    ("checkpoint", "no tokenizer or image processor"): lambda ctx: _checkpoint(ctx, _without_processor),
    ("prompt file", "JSON nested 100000 deep"): lambda ctx: ctx.prompts(None, raw=b"[" * 100_000 + b"]" * 100_000),
    ("prompt file", "a 5000-digit number as an id"): lambda ctx: ctx.prompts(None, raw=b'[{"id": ' + b"9" * 5000 + b"}]"),
    ("image", "20000x1 pixels (within max_pixels)"): _strip,
    ("prompt file", "a bad record, found at start (before the base evaluation)"): _bad_record_at_start,
    ("stage run", "its input not done (stage=merge before DPO, stage=search beyond the run)"): lambda ctx: check_input(
        ctx.tmp, "search", 5),
    ("run config.yaml", "a list, not a mapping"): lambda ctx: _saved(ctx, text="- 1\n- 2\n"),
    ("config_changes.json", "finished stages not written as iter_<k>/<stage>"): lambda ctx: _changes(
        ctx, [{"config": "config.1.yaml", "changes": {}, "finished": ["iter_1/search; rm -rf ~"]}]),
    ("CLIP config_json", "file name other than the architecture"): lambda ctx: load_clip("other-arch", "random", ctx.tiny.clip_config),
    ("CLIP config_json", "missing"): lambda ctx: load_clip("evil-clip", "random", str(ctx.tmp / "evil-clip.json")),
    ("CLIP arch", "a built-in architecture whose tokenizer is on the hub"): lambda ctx: load_clip("ViT-B-16-SigLIP", "random"),
    ("config", 'eval.limit 0'): _config('eval.limit=0'),
    ("config", 'iterations 0'): _config('iterations=0'),
    ("config", 'dpo.lr 0'): _config('dpo.lr=0'),
    ("config", 'dpo.beta 0'): _config('dpo.beta=0'),
    ("config", 'search.decoding.top_p 0'): _config('search.decoding.top_p=0'),
    ("config", 'dpo.lora.dropout 1'): _config('dpo.lora.dropout=1'),
    ("config", 'dpo.warmup_ratio 1'): _config('dpo.warmup_ratio=1'),
    ("config", 'model.dtype unknown'): _config('model.dtype=float8'),
    ("config", 'trainer.strategy unknown'): _config('trainer.strategy=bogus'),
    ("config", 'data.on_error unknown'): _config('data.on_error=ignore'),
    ("config", 'reward.calibration unknown'): _config('reward.calibration=bogus'),
    ("config", 'pairs.filters names an unknown filter'): _config('pairs.filters=[emptyy]'),
    ("config", 'search.candidates_per_step 0'): _config('search.candidates_per_step=0'),
    ("config", 'dpo.reference adapter_disabled with dpo.train_projector'): _config('dpo.reference=adapter_disabled', 'dpo.train_projector=true'),
    ("run_dir", "a quoted path with a space (run_dir='/my runs/a')"): lambda ctx: str(_path("'/my runs/a'")),
    ("image", "changed on disk after the search, re-scored by stage=reward"): _rescored_changed_image,
    ("csr-compare --out", "not writable (read-only storage, a file in the path)"): _compare_onto_file,
    ("prompt file", "edited while a search was stopped, then resumed"): lambda ctx: _resumed_search(ctx, "prompt"),
    ("image", "edited while a search was stopped, then resumed"): lambda ctx: _resumed_search(ctx, "image"),
    ("config", "trainer.precision unknown"): _config("trainer.precision=bogus"),
    ("config", "trainer.accelerator unknown (tpu)"): _config("trainer.accelerator=tpu"),
    ("config", "model.attn_implementation unknown"): _config("model.attn_implementation=bogus"),
    ("config", "seed 1e20"): _config("seed=1e20"),
    ("config", "logger.tracking_uri of another scheme"): _config("logger.tracking_uri=bogus://x"),
    ("config", "search.keep_top and search.keep_bottom both 0"): lambda ctx: validate(
        compose_config("search.keep_top=0", "search.keep_bottom=0")),
}
