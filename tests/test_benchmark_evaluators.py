"""The coco_chair and pope evaluators run a model over the benchmarks' own file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from csr.config.schema import EvalConfig
from csr.core.errors import CSRError
from csr.core.io import read_jsonl
from csr.eval.generate import image_set, set_digest
from csr.eval.pope import pope_metrics, yes_no
from csr.eval.registry import BENCHMARKS
from csr.models.checkpoint import load_model
from csr.models.families import get_family

FIXTURES = Path(__file__).parent / "fixtures" / "coco"


def _images(root: Path) -> Path:
    root.mkdir()
    for im in json.loads((FIXTURES / "instances.json").read_text())["images"]:
        Image.new("RGB", (48, 40), (30 * im["id"], 90, 120)).save(root / im["file_name"], format="JPEG")
    return root


def _setup(tiny_models, tmp_path: Path):
    model, processor = load_model(tiny_models.llava)
    images = _images(tmp_path / "val2014")
    cfg = OmegaConf.structured(EvalConfig)
    cfg.max_new_tokens, cfg.batch_size = 8, 4
    cfg.coco.instances, cfg.coco.captions = str(FIXTURES / "instances.json"), str(FIXTURES / "captions.json")
    cfg.coco.image_root = cfg.pope.image_root = str(images)
    cfg.pope.questions = str(FIXTURES / "questions.jsonl")
    common = {"model": model, "processor": processor, "family": get_family("llava"), "scorer": None, "eval_cfg": cfg,
              "prompt_file": "", "image_root": "", "trainer_kwargs": {"accelerator": "cpu", "devices": 1}}
    return cfg, common


IMAGES = [f"COCO_val2014_00000000000{i}.jpg" for i in (1, 2, 3)]


def test_coco_chair_evaluator_on_fixture_files(tiny_models, tmp_path):
    cfg, common = _setup(tiny_models, tmp_path)
    (tmp_path / "c").mkdir()
    chair = BENCHMARKS["coco_chair"].run(out_dir=tmp_path / "c", **common)
    assert chair["n"] == 3 and 0.0 <= chair["chair_s"] <= 1.0 and chair["skipped"] == 0
    assert len((tmp_path / "c" / "captions.jsonl").read_text().splitlines()) == 3
    assert chair["settings"] == {"prompt": "Please describe this image in detail.", "decoding": "greedy",
                                 "max_new_tokens": 8, "chair_variant": "original", **image_set(IMAGES)}


def test_pope_evaluator_on_fixture_files(tiny_models, tmp_path):
    cfg, common = _setup(tiny_models, tmp_path)
    (tmp_path / "p").mkdir()
    pope = BENCHMARKS["pope"].run(out_dir=tmp_path / "p", **common)
    questions = [json.loads(line) for line in (FIXTURES / "questions.jsonl").read_text().splitlines()]
    assert pope["n"] == len(questions) and 0.0 <= pope["yes_ratio"] <= 1.0 and pope["skipped"] == 0
    answers = {r["id"]: r["answer"] for r in read_jsonl(tmp_path / "p" / "answers.jsonl")}
    said = [yes_no(answers[str(q["question_id"])], "official") for q in questions]
    assert {k: v for k, v in pope.items() if k not in ("settings", "skipped")} == pope_metrics(
        said, [q["label"] == "yes" for q in questions])
    assert pope["settings"] == {
        "prompt": "per question (questions)", "questions": str(FIXTURES / "questions.jsonl"),
        "questions_sha256": set_digest(f"{q['question_id']}\t{q['text']}\t{q['label']}" for q in questions),
        "decoding": "greedy", "max_new_tokens": 8, "parser": "official", **image_set(IMAGES)}


# Planted answers (answers.jsonl is resumed, so these are scored as if the model had said them) to
# labels yes, yes, yes, no, no, no. Official: yes, yes, yes, no, yes, yes -> TP 3, FP 2, TN 1, FN 0:
# accuracy 4/6, precision 3/5, recall 1, f1 2 * 0.6 / 1.6 = 0.75, yes_ratio 5/6.  Robust: yes, no,
# no, no, no, yes -> TP 1, FN 2, TN 2, FP 1: accuracy 3/6, precision 1/2, recall 1/3,
# f1 2 * (1/2)(1/3) / (5/6) = 0.4, yes_ratio 2/6.
PLANTED = ["Yes.", "NO!", "Not sure.", "No.", "No!", "Yes"]


@pytest.mark.parametrize(("parser", "expected"), [
    ("official", {"accuracy": 4 / 6, "precision": 0.6, "recall": 1.0, "f1": 0.75, "yes_ratio": 5 / 6, "n": 6}),
    ("robust", {"accuracy": 0.5, "precision": 0.5, "recall": 1 / 3, "f1": 0.4, "yes_ratio": 2 / 6, "n": 6}),
])
def test_pope_evaluator_reads_answers_with_the_configured_parser(tiny_models, tmp_path, parser, expected):
    cfg, common = _setup(tiny_models, tmp_path)
    cfg.pope.parser = parser
    out = tmp_path / "p"
    out.mkdir()
    questions = [json.loads(line) for line in (FIXTURES / "questions.jsonl").read_text().splitlines()]
    (out / "answers.jsonl").write_text("".join(json.dumps(
        {"id": str(q["question_id"]), "image": q["image"], "prompt": q["text"], "answer": a, "answer_tokens": 2,
         "finish": "eos"}) + "\n" for q, a in zip(questions, PLANTED, strict=True)))
    pope = BENCHMARKS["pope"].run(out_dir=out, **common)
    assert {k: v for k, v in pope.items() if k not in ("settings", "skipped")} == pytest.approx(expected)
    assert pope["settings"]["parser"] == parser


def test_pope_evaluator_skips_a_bad_question_with_on_error_skip(tiny_models, tmp_path):
    cfg, common = _setup(tiny_models, tmp_path)
    lines = (FIXTURES / "questions.jsonl").read_text().splitlines()
    bad = json.loads(lines[1]) | {"label": "maybe"}
    (tmp_path / "q.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    cfg.pope.questions = str(tmp_path / "q.jsonl")
    with pytest.raises(CSRError, match=r"q\.jsonl: line 2: label should be 'yes' or 'no'"):
        BENCHMARKS["pope"].run(out_dir=tmp_path, **common)
    (tmp_path / "p").mkdir()
    pope = BENCHMARKS["pope"].run(out_dir=tmp_path / "p", on_error="skip", **common)
    assert pope["n"] == 5 and pope["skipped"] == 1 and pope["skipped/bad_record"] == 1
