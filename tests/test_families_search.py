"""The search engine is exact on every family: each node's R_T from a batched, padded search equals an
uncached full forward of the same text (float32, 1e-5), and a one-candidate search is greedy decoding.

What this catches, seen on tiny random models of these families: 1-D positions on Qwen's multimodal
RoPE (off by ~1e-3 while greedy still agrees: why every node's R_T is compared), Gemma 3's image token
types and sliding windows counted in cache columns (the engine's right-padded answers put holes inside
the window), processors that want one image list per prompt."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from csr.config.choices import FAMILIES
from csr.models.checkpoint import load_model, special_token_ids
from csr.models.families import get_family
from csr.reward.tree import Node, path_to
from csr.search.decode import DecodeSettings
from csr.search.engine import SearchSettings, TreeSearch

PROMPTS = ["Describe the image.", "What is in the picture? Describe it in detail, please."]


def _images() -> list[Image.Image]:
    """Two sizes, so tiling and dynamic-resolution families give the prompts different image token counts."""
    a, b = Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 40, 220))
    a.paste((0, 200, 0), (5, 5, 20, 20))
    b.paste((250, 250, 0), (30, 10, 60, 40))
    return [a, b]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tiny_family):
    name = request.param
    model, processor = load_model(tiny_family(name), family=name)
    return get_family(name), model, processor


def _engine(family, model, processor, candidates: int, beam: int) -> TreeSearch:
    search = SearchSettings(
        beam_width=beam, candidates_per_step=candidates, keep_top=1, keep_bottom=beam - 1, max_sentences=3,
        max_answer_tokens=14, prune_by="lm", lam=0.9, calibration="rank", text_score="mean_logprob",
        max_batch_rows=1024, max_batch_tokens=10**9,
    )
    end_ids = family.end_token_ids(processor, model)
    tok = processor.tokenizer
    # With random weights '.' hardly ever comes, so a fifth of the vocabulary ends a sentence: rows then
    # finish at different steps and answers differ in length (holes in the decode batch).
    decode = DecodeSettings(strategy="diverse_greedy", end_ids=frozenset(end_ids),
                            delimiter_ids=frozenset(range(0, len(tok), 5)) - end_ids,
                            suppress_ids=special_token_ids(processor, end_ids), max_new_tokens=5)
    return TreeSearch(model, processor, family, search, decode, relevance=None)


def _full_logprobs(family, model, processor, prompt: str, image: Image.Image, answer: list[int]) -> torch.Tensor:
    """log-softmax of an uncached forward over one unpadded (image, prompt + answer), the model's own
    positions: [answer tokens, vocab], row i predicting answer[i]."""
    inputs = family.encode(processor, [family.chat_prompt(processor, prompt)], [image])
    n = inputs["input_ids"].shape[1]
    extra = torch.tensor([answer])
    full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], extra], 1),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(extra)], 1)}
    for key in family.token_keys:  # answer tokens are text
        full[key] = torch.cat([inputs[key], torch.zeros_like(extra)], 1)
    full.update(family.image_inputs(inputs, model.dtype))
    with torch.no_grad():
        logits = model(**full, use_cache=False).logits[0].float()
    return logits[n - 1 : n - 1 + len(answer)].log_softmax(-1)


def test_every_node_r_t_equals_an_uncached_forward(family_model):
    family, model, processor = family_model
    images = _images()
    trees = _engine(family, model, processor, candidates=3, beam=2).search(PROMPTS, images, ["a", "b"])
    # Nodes continued together whose answers differ in length: the decode batch has holes.
    assert any(len({n.answer_tokens for n in t if n.kept and n.depth == d}) > 1 for t in trees for d in (1, 2))
    checked = 0
    for prompt, image, nodes in zip(PROMPTS, images, trees, strict=True):
        for leaf in (n for n in nodes if n.final or not any(c.parent == n.id for c in nodes)):
            path = [n for n in path_to(nodes, leaf.id) if n.token_ids]
            answer = [t for n in path for t in n.token_ids]
            logps = _full_logprobs(family, model, processor, prompt, image, answer)
            at = 0
            for node in path:
                k = len(node.token_ids)
                expected = logps[torch.arange(at, at + k), torch.tensor(node.token_ids)].mean().item()
                assert node.r_t == pytest.approx(expected, abs=1e-5), (family.name, node.id)
                at += k
                checked += 1
    assert checked >= 10


def test_one_candidate_search_is_greedy_decoding(family_model):
    family, model, processor = family_model
    images = _images()
    engine = _engine(family, model, processor, candidates=1, beam=1)
    engine.decode.delimiter_ids = frozenset()  # one sentence of max_new_tokens, cut and continued
    trees = engine.search(PROMPTS, images, ["a", "b"])
    inputs = family.encode(processor, [family.chat_prompt(processor, p) for p in PROMPTS], images)
    inputs.update(family.image_inputs(inputs, model.dtype))
    end_ids = family.end_token_ids(processor, model)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=engine.s.max_answer_tokens,
                             suppress_tokens=special_token_ids(processor, end_ids), eos_token_id=sorted(end_ids),
                             pad_token_id=processor.tokenizer.pad_token_id)
    for nodes, row in zip(trees, out[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
        final: Node = next(n for n in nodes if n.final)
        searched = [t for n in path_to(nodes, final.id) for t in n.token_ids]
        end = next((i for i, t in enumerate(row) if t in end_ids), len(row))
        assert searched == row[:end], family.name
