"""The coco_chair and pope evaluators run a model over the benchmarks' own file formats."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from csr.config import EvalConfig
from csr.eval.registry import EVALUATORS
from csr.models.llava import load_llava

FIXTURES = Path(__file__).parent / "fixtures" / "coco"


def _images(root: Path) -> Path:
    root.mkdir()
    for im in json.loads((FIXTURES / "instances.json").read_text())["images"]:
        Image.new("RGB", (48, 40), (30 * im["id"], 90, 120)).save(root / im["file_name"], format="JPEG")
    return root


def test_coco_chair_and_pope_evaluators_on_fixture_files(tiny_models, tmp_path):
    model, processor = load_llava(tiny_models.llava)
    images = _images(tmp_path / "val2014")
    cfg = OmegaConf.structured(EvalConfig)
    cfg.max_new_tokens, cfg.batch_size = 8, 4
    cfg.coco.instances, cfg.coco.captions = str(FIXTURES / "instances.json"), str(FIXTURES / "captions.json")
    cfg.coco.image_root = cfg.pope.image_root = str(images)
    cfg.pope.questions = str(FIXTURES / "questions.jsonl")
    common = {"model": model, "processor": processor, "scorer": None, "eval_cfg": cfg, "prompt_file": "",
              "image_root": "", "trainer_kwargs": {"accelerator": "cpu", "devices": 1}}
    (tmp_path / "c").mkdir()
    (tmp_path / "p").mkdir()
    chair = EVALUATORS["coco_chair"](out_dir=tmp_path / "c", **common)
    assert chair["n"] == 3 and 0.0 <= chair["chair_s"] <= 1.0
    assert len((tmp_path / "c" / "captions.jsonl").read_text().splitlines()) == 3
    pope = EVALUATORS["pope"](out_dir=tmp_path / "p", **common)
    n_questions = len((FIXTURES / "questions.jsonl").read_text().splitlines())
    assert pope["n"] == n_questions and 0.0 <= pope["yes_ratio"] <= 1.0
