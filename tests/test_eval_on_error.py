"""Evaluation honours data.on_error and records the settings it ran with.

With on_error=skip a bad prompt record, an over-long prompt or an unreadable image is left out,
counted under `skipped/<reason>`, and the rest is scored; with on_error=raise the error names the
file and the record, as the search stage's do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from csr.config.schema import EvalConfig
from csr.core.errors import CSRError
from csr.core.io import read_jsonl
from csr.eval.generate import image_set, set_digest, skip_counts
from csr.eval.registry import BENCHMARKS
from csr.models.checkpoint import load_model
from csr.models.families import get_family

CPU = {"accelerator": "cpu", "devices": 1}
GOOD = [{"id": "a", "image": "a.png", "input": "<image>\nDescribe the image."},
        {"id": "b", "image": "b.png", "input": "<image>\nWhat is in the image?"}]
MISSING = {"id": "gone", "image": "gone.png", "input": "<image>\nDescribe the image."}
LONG = {"id": "long", "image": "a.png", "input": "word " * 600 + "<image>"}
CORRUPT = {"id": "junk", "image": "junk.png", "input": "<image>\nDescribe the image."}


def test_set_digest_is_the_sha256_of_the_sorted_distinct_items() -> None:
    # printf 'a.png\nb.png\n' | sha256sum
    want = "06c1456d50bf5df64266930fe5cb927e986068972c7704ab3b0d4d8a5b86f696"
    assert set_digest(["b.png", "a.png", "b.png"]) == want
    assert image_set(["b.png", "a.png", "a.png"]) == {"n_images": 2, "image_ids_sha256": want}


def test_skip_counts() -> None:
    assert skip_counts({}) == {"skipped": 0}
    assert skip_counts({"too_long": 2, "bad_image": 1, "missing_image": 0}) == {
        "skipped": 3, "skipped/bad_image": 1, "skipped/too_long": 2}


@pytest.fixture(scope="module")
def llava(tiny_models):
    return load_model(tiny_models.llava)


def _root(tmp_path: Path, records: list[dict]) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        Image.new("RGB", (32, 32), (40 * i, 90, 120)).save(images / name)
    (images / "junk.png").write_bytes(b"not an image at all")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(records))
    return prompts, images


def _generate(llava, prompts: Path, images: Path, out: Path, on_error: str) -> dict:
    model, processor = llava
    cfg = OmegaConf.structured(EvalConfig)
    cfg.max_new_tokens, cfg.batch_size = 6, 4
    out.mkdir()
    return BENCHMARKS["generate"].run(model=model, processor=processor, family=get_family("llava"), scorer=None, eval_cfg=cfg,
                                  prompt_file=str(prompts), image_root=str(images), out_dir=out,
                                  trainer_kwargs=CPU, on_error=on_error)


def test_generate_skips_and_counts_bad_records_and_scores_the_rest(llava, tmp_path: Path) -> None:
    prompts, images = _root(tmp_path, [GOOD[0], MISSING, LONG, CORRUPT, GOOD[1]])
    metrics = _generate(llava, prompts, images, tmp_path / "out", "skip")
    assert metrics["answers"] == 2
    assert {k: v for k, v in metrics.items() if k.startswith("skipped")} == {
        "skipped": 3, "skipped/bad_image": 1, "skipped/missing_image": 1, "skipped/too_long": 1}
    written = read_jsonl(tmp_path / "out" / "answers.jsonl")
    assert [(r["id"], r.get("skipped")) for r in written] == [("a", None), ("junk", "bad_image"), ("b", None)]
    settings = metrics["settings"]
    assert settings == {
        "prompt": "per record (prompt_file)", "prompt_file": str(prompts),
        "prompts_sha256": set_digest(["a\tDescribe the image.", "b\tWhat is in the image?"]),
        "decoding": "greedy", "max_new_tokens": 6, **image_set(["a.png", "b.png"])}


def test_generate_without_bad_records_is_unchanged_by_skip_mode(llava, tmp_path: Path) -> None:
    prompts, images = _root(tmp_path, GOOD)
    skip = _generate(llava, prompts, images, tmp_path / "skip", "skip")
    strict = _generate(llava, prompts, images, tmp_path / "raise", "raise")
    assert skip == strict and skip["skipped"] == 0 and skip["answers"] == 2
    assert (tmp_path / "skip" / "answers.jsonl").read_text() == (tmp_path / "raise" / "answers.jsonl").read_text()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (MISSING, r"prompts\.json: record 1 \(id='gone'\): image file .*gone\.png not found"),
        (LONG, r"prompts\.json: record id='long': prompt is \d+ tokens"),
        (CORRUPT, r"prompts\.json: record id='junk': image .*junk\.png: not a recognised image file"),
    ],
)
def test_generate_with_raise_names_the_file_and_record(llava, tmp_path: Path, bad: dict, message: str) -> None:
    prompts, images = _root(tmp_path, [GOOD[0], bad])
    with pytest.raises(CSRError, match=message):
        _generate(llava, prompts, images, tmp_path / "out", "raise")
