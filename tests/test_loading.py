"""Real-checkpoint loading: a tiny checkpoint saved in HF format goes through `model=... model.path=...`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from csr.cli import CONF_DIR
from csr.config.schema import validate
from csr.models.chat import generation_prompt
from csr.models.checkpoint import load_model


def test_llava15_config_loads_a_saved_checkpoint(tiny_models, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=llava15_7b", f"model.path={tiny_models.llava}", f"run_dir={tmp_path}",
            "data.prompt_file=/p.json", "data.image_root=/i", "reward.clip.weights=/w", "reward.clip.config_json=null",
            "logger.tracking_uri=null", "data.shapesworld.root=/sw", "eval.shapesworld.root=/sw",
        ])
    cfg = validate(cfg)
    assert cfg.model.dtype == "bfloat16"
    model, processor = load_model(cfg.model.path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    assert next(model.parameters()).dtype == torch.bfloat16
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=[generation_prompt(processor, "Describe it.")],
                       return_tensors="pt")
    with torch.no_grad():
        logits = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size
    assert torch.isfinite(logits.float()).all()


def test_chat_template_keeps_the_raw_prompt_once(tiny_models):
    _, processor = load_model(tiny_models.llava)
    text = generation_prompt(processor, "Describe the image.")
    assert text == "USER: <image>\nDescribe the image. ASSISTANT:"


def test_no_unsafe_loading_in_the_package():
    """No pickle, no torch.load without weights_only=True, never trust_remote_code=True."""
    package = Path(__file__).resolve().parent.parent / "csr"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), path
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if name.endswith("torch.load"):
                    assert kwargs.get("weights_only") == "True", f"{path}: {ast.unparse(node)}"
                assert kwargs.get("trust_remote_code") not in ("True",), f"{path}: {ast.unparse(node)}"


def test_every_mlflow_server_the_docs_suggest_listens_on_localhost_only():
    """MLflow's UI/server has no authentication: a command in the docs must not expose it."""
    root = Path(__file__).resolve().parent.parent
    commands = []
    for doc in [root / "README.md", *root.glob("docs/*.md"), *root.glob("experiments/*/README.md")]:
        commands += re.findall(r"mlflow (?:ui|server)\b[^`\n]*", doc.read_text())
    assert commands, "the docs should say how to look at the runs"
    for command in commands:
        assert "--host 127.0.0.1" in command, command
