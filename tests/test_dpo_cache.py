"""Reference log-probs are cached by content (pair, image bytes, reference model, settings), and DPO
refuses an image that changed since the search read it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from bad_input_dpo import CASES, dpo_pair, logged_reference_pass
from PIL import Image
from scratch_prompts import Ctx

from csr.core.errors import CSRError
from csr.core.identity import file_sha256
from csr.data.image_hash import image_sha256
from csr.data.prompts import PromptRecord
from csr.dpo.data import check_images
from csr.dpo.reference import model_fingerprint, pair_key, reference_settings
from csr.pairs.build import make_pair
from csr.run.predict import RecordPredictor
from csr.search.module import SearchModule


@pytest.fixture
def ctx(tmp_path: Path, tiny_models) -> Ctx:
    return Ctx(tmp_path, tiny_models, "raise")


def _cache(ctx: Ctx) -> dict:
    return json.loads((ctx.tmp / "ref_logps.json").read_text())


def _values(ctx: Ctx) -> list[tuple[float, float]]:
    return [(e["chosen"], e["rejected"]) for e in _cache(ctx)["pairs"]]


def _pairs(ctx: Ctx, chosen: list[str]) -> list[dict]:
    return [dpo_pair(ctx.images, chosen=c, rid=f"p{i}") for i, c in enumerate(chosen)]


FOUR = [" A red square.", " A blue star.", " Two circles.", " A green cross."]


# --------------------------------------------------------------------------- the table's rows


def test_troubleshooting_rows(ctx: Ctx) -> None:
    with pytest.raises(CSRError) as info:
        CASES[("image", "changed on disk after the search")](ctx)
    message = str(info.value)
    assert "pair id='p1'" in message and str(ctx.images.resolve() / "good.png") in message
    assert "changed on disk since the search read it" in message
    rebuilt = CASES[("ref_logps.json", "pairs rebuilt with other content under the same ids")](Ctx(ctx.tmp / "b", ctx.tiny, "raise"))
    assert rebuilt == "1 of 1 reference log-probs recomputed: pairs changed"
    changed = CASES[("ref_logps.json", "reference model or its dtype changed")](Ctx(ctx.tmp / "c", ctx.tiny, "raise"))
    assert changed == "1 of 1 reference log-probs recomputed: reference model or settings changed (dtype)"


# --------------------------------------------------------------------------- reference log-probs cache


def test_unchanged_pairs_are_reused(ctx: Ctx) -> None:
    assert logged_reference_pass(ctx, _pairs(ctx, FOUR)) == f"4 reference log-probs computed into {ctx.tmp / 'ref_logps.json'}"
    first = _cache(ctx)
    assert logged_reference_pass(ctx, _pairs(ctx, FOUR)) == f"4 reference log-probs reused from {ctx.tmp / 'ref_logps.json'}"
    assert _cache(ctx) == first  # nothing rewritten


def test_pairs_rebuilt_under_the_same_ids_are_recomputed(ctx: Ctx) -> None:
    # The case: other answers under the same ids used to be served the old log-probs.
    logged_reference_pass(ctx, _pairs(ctx, FOUR))
    before = _values(ctx)
    rebuilt = [FOUR[0], " A yellow moon.", FOUR[2], " Nothing at all."]
    assert logged_reference_pass(ctx, _pairs(ctx, rebuilt)) == "2 of 4 reference log-probs recomputed: pairs changed"
    after = _values(ctx)
    assert [e["id"] for e in _cache(ctx)["pairs"]] == ["p0", "p1", "p2", "p3"]
    assert after[0] == before[0] and after[2] == before[2]  # unchanged pairs keep their values
    assert after[1][0] != before[1][0] and after[3][0] != before[3][0]  # the new chosen texts score differently
    assert after[1][1] == pytest.approx(before[1][1], abs=1e-5)  # same rejected text, recomputed alone
    assert logged_reference_pass(ctx, _pairs(ctx, rebuilt)).startswith("4 reference log-probs reused")


def test_an_old_cache_keyed_by_id_is_recomputed(ctx: Ctx) -> None:
    (ctx.tmp / "ref_logps.json").write_text(json.dumps([{"id": "p0", "chosen": -1.0, "rejected": -2.0}]))
    line = logged_reference_pass(ctx, _pairs(ctx, FOUR[:1]))
    assert line == "1 of 1 reference log-probs recomputed: the cache was written by an older csr (keyed by pair id only)"
    assert _values(ctx)[0] != (-1.0, -2.0)


def test_the_key_holds_every_input_of_the_reference_pass(ctx: Ctx) -> None:
    pair = dpo_pair(ctx.images)
    key = pair_key(pair, "a" * 64)
    for field, value in [("prompt", "Describe it."), ("image", "other.png"), ("chosen", " A cat."), ("rejected", " A dog.")]:
        assert pair_key({**pair, field: value}, "a" * 64) != key, field
    assert pair_key(pair, "b" * 64) != key  # same path, other image bytes
    assert pair_key({**pair, "id": "other", "chosen_score": 0.3}, "a" * 64) == key  # bookkeeping is not content


def test_reference_model_files_are_fingerprinted(ctx: Ctx, monkeypatch) -> None:
    model = ctx.tmp / "model"
    shutil.copytree(ctx.tiny.llava, model)
    weights = next(model.glob("*.safetensors"))
    settings = reference_settings(str(model), "float32", "sdpa", "32-true")
    assert settings["model_dir"] == str(model.resolve())
    assert set(settings) == {"format", "model_dir", "dtype", "attn_implementation", "precision", "model_files"}
    assert settings["model_files"]["config.json"] == [os.path.getsize(model / "config.json"), file_sha256(model / "config.json")]
    # Files up to 256 MiB (all of the tiny model's) by content: one flipped byte of the weights shows.
    before = model_fingerprint(str(model))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(model))[weights.name] != before[weights.name]
    # Larger ones by size and mtime: a rewritten weight file (a merge rewrites the next iteration's
    # reference) changes the fingerprint.
    monkeypatch.setattr("csr.dpo.reference.SMALL_FILE", 1000)
    before = model_fingerprint(str(model))
    assert before[weights.name] == [weights.stat().st_size, weights.stat().st_mtime_ns]
    os.utime(weights, ns=(1, 1))
    assert model_fingerprint(str(model))[weights.name] == [weights.stat().st_size, 1]
    (model / "config.json").write_text((model / "config.json").read_text().replace("}", ' , "x": 1}', 1))
    assert reference_settings(str(model), "float32", "sdpa", "32-true") != settings


# --------------------------------------------------------------------------- image hashes


def test_check_images_returns_the_current_hashes_and_refuses_a_changed_one(ctx: Ctx) -> None:
    pairs = [dpo_pair(ctx.images)]
    digest = pairs[0]["image_sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert check_images(pairs, str(ctx.images)) == [digest]
    Image.new("RGB", (8, 8), (0, 0, 0)).save(ctx.images / "good.png")
    with pytest.raises(CSRError, match=r"pair id='p1': image .*good\.png changed on disk since the search read it "
                                       rf"\(sha256 {digest[:12]}\.\.\., now {image_sha256(str(ctx.images), 'good.png')[:12]}"):
        check_images(pairs, str(ctx.images))
    (ctx.images / "good.png").unlink()
    with pytest.raises(CSRError, match=r"pair id='p1': image .*good\.png: file not found"):
        check_images(pairs, str(ctx.images))


def test_pairs_without_a_hash_are_checked_for_presence_and_said_once(ctx: Ctx, caplog) -> None:
    pairs = [{**dpo_pair(ctx.images, rid=r), "image_sha256": None} for r in ("a", "b")]
    with caplog.at_level(logging.WARNING, logger="csr.dpo.data"):
        digests = check_images(pairs, str(ctx.images))
    assert digests == [file_sha256(ctx.images / "good.png")] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "2 of 2 pairs carry no image hash (written before csr hashed images): their images are not checked "
        "against the search's"]


class _Engine:
    """Stands in for TreeSearch: the record, not the tree, is under test."""

    decode = type("Decode", (), {"generator": None})()

    def search(self, prompts, images, names):
        return [[] for _ in prompts]


def test_search_records_the_hash_of_the_image_it_read_and_pairs_carry_it(ctx: Ctx) -> None:
    module = SearchModule.__new__(SearchModule)
    RecordPredictor.__init__(module)
    module.engine, module.image_root, module.on_error, module.seed = _Engine(), str(ctx.images), "raise", 0
    prompt = PromptRecord(id="r1", image="good.png", prompt="Describe.", raw="Describe.\n<image>")
    [record] = module.predict_step([prompt])
    assert record["image_sha256"] == file_sha256(ctx.images / "good.png")
    answers = [{"text": t, "score": s, "sentences": []} for t, s in ((" A cat.", 0.9), (" A dog.", 0.1))]
    pair, _ = make_pair({**{k: record[k] for k in ("id", "image", "image_sha256", "prompt", "input")},
                         "answers": answers}, [])
    assert pair["image_sha256"] == record["image_sha256"]
    assert make_pair({**{k: record[k] for k in ("id", "image", "prompt", "input")}, "answers": answers},
                     [])[0]["image_sha256"] is None  # reward records of older runs


def test_reference_values_do_not_depend_on_the_cache(ctx: Ctx) -> None:
    # A value served from the cache is the one a fresh pass computes (same batch of one).
    logged_reference_pass(ctx, _pairs(ctx, FOUR[:2]))
    cached = _values(ctx)
    (ctx.tmp / "ref_logps.json").unlink()
    logged_reference_pass(ctx, _pairs(ctx, FOUR[:2]))
    torch.testing.assert_close(torch.tensor(_values(ctx)), torch.tensor(cached))
