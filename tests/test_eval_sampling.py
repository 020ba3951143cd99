"""Sampled evaluation (eval.temperature > 0): seeded, so a run samples the same answers again; greedy
stays the default; the caller's random state is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compose_config import compose_config
from omegaconf import OmegaConf
from PIL import Image

from csr.config.schema import EvalConfig, validate
from csr.core.errors import CSRError
from csr.core.io import read_jsonl
from csr.data.prompts import load_prompts
from csr.eval.generate import GenerateModule, batch_seed, decoding
from csr.eval.registry import BENCHMARKS
from csr.models.checkpoint import load_model
from csr.models.families import get_family

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def llava(tiny_models):
    return load_model(tiny_models.llava)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sampling")
    (root / "images").mkdir()
    records = []
    for i in range(6):
        Image.new("RGB", (32, 32), (40 * i, 90, 120)).save(root / "images" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "input": "<image>\nDescribe the image."})
    (root / "prompts.json").write_text(json.dumps(records))
    return root / "prompts.json", root / "images"


def _answers(llava, prompts, out: Path, temperature: float, seed: int = 0) -> tuple[list[str], dict]:
    model, processor = llava
    cfg = OmegaConf.structured(EvalConfig)
    cfg.max_new_tokens, cfg.batch_size, cfg.temperature, cfg.sample_seed = 12, 4, temperature, seed
    out.mkdir()
    metrics = BENCHMARKS["generate"].run(model=model, processor=processor, family=get_family("llava"), scorer=None, eval_cfg=cfg,
                                         prompt_file=str(prompts[0]), image_root=str(prompts[1]), out_dir=out,
                                         trainer_kwargs=CPU)
    return [r["answer"] for r in read_jsonl(out / "answers.jsonl")], metrics["settings"]


def test_decoding_names_how_the_answers_were_chosen() -> None:
    assert decoding(0.0, 5) == "greedy"
    assert decoding(0.7, 3) == "sampled (temperature 0.7, seed 3)"


def test_batch_seed_depends_on_the_seed_and_the_records_only() -> None:
    assert batch_seed(0, ["a", "b"]) == batch_seed(0, ["a", "b"])
    assert len({batch_seed(0, ["a", "b"]), batch_seed(1, ["a", "b"]), batch_seed(0, ["a", "c"])}) == 3
    assert 0 <= batch_seed(7, ["x"]) < 2**63


def test_sampled_answers_are_seeded_and_differ_from_greedy(llava, prompts, tmp_path: Path) -> None:
    greedy, settings = _answers(llava, prompts, tmp_path / "greedy", 0.0)
    assert settings["decoding"] == "greedy"
    first, settings = _answers(llava, prompts, tmp_path / "first", 1.0)
    again, _ = _answers(llava, prompts, tmp_path / "again", 1.0)
    other, _ = _answers(llava, prompts, tmp_path / "other", 1.0, seed=1)
    assert settings["decoding"] == "sampled (temperature 1.0, seed 0)"
    assert first == again  # same seed, same records: the same answers
    assert first != greedy and first != other  # a random tiny model at temperature 1 rarely repeats itself
    assert len(first) == len(greedy) == 6


def test_sampling_leaves_the_callers_random_state_as_it_was(llava, prompts) -> None:
    model, processor = llava
    records, _ = load_prompts(str(prompts[0]), str(prompts[1]))
    module = GenerateModule(model, processor, get_family("llava"), str(prompts[1]), 12, temperature=1.0)
    before = torch.random.get_rng_state()
    sampled = module.predict_step(records)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [r["answer"] for r in module.predict_step(records)] == [r["answer"] for r in sampled]


def test_a_negative_temperature_is_refused() -> None:
    with pytest.raises(CSRError, match=r"eval\.temperature"):
        validate(compose_config("eval.temperature=-0.5"))
