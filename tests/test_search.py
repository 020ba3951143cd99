"""The tree search on the tiny LLaVA: KV-cache reuse is exact, batching changes nothing, text is whole."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from csr.config.schema import RootConfig
from csr.data.images import load_image
from csr.data.prompts import load_prompts
from csr.data.tiny import write_tiny_prompts
from csr.models.chat import generation_prompt
from csr.models.checkpoint import load_model, special_token_ids
from csr.models.clip import ClipScorer, load_clip
from csr.models.families import get_family
from csr.reward.tree import Node, path_to
from csr.search.stage import build_module

LLAVA = get_family("llava")  # the tiny model's family


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    write_tiny_prompts(data, n=4)
    cfg = OmegaConf.structured(RootConfig)
    cfg.model.path = tiny_models.llava
    cfg.data.prompt_file, cfg.data.image_root = str(data / "prompts.json"), str(data / "images")
    cfg.search.max_sentences, cfg.search.max_new_tokens_per_sentence, cfg.search.max_answer_tokens = 3, 4, 10
    model, processor = load_model(tiny_models.llava)
    scorer = ClipScorer(load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config))
    prompts, _ = load_prompts(cfg.data.prompt_file, cfg.data.image_root)
    return cfg, model, processor, scorer, prompts


def trees(records):
    return [[Node(**n) for n in r["nodes"]] for r in records]


def test_batched_search_equals_one_prompt_at_a_time(setup):
    cfg, model, processor, scorer, prompts = setup
    # The prompts differ in length, so the batch is left-padded and answers right-padded.
    assert len({len(p.prompt) for p in prompts}) > 1
    module = build_module(model, processor, LLAVA, scorer, cfg)
    together = module.predict_step(prompts)
    alone = [module.predict_step([p])[0] for p in prompts]
    for a, b in zip(trees(together), trees(alone), strict=True):
        assert [n.token_ids for n in a] == [n.token_ids for n in b]
        assert [n.parent for n in a] == [n.parent for n in b]
        for x, y in zip(a[1:], b[1:], strict=True):
            assert x.r_t == pytest.approx(y.r_t, abs=1e-5)
            assert x.r_i == pytest.approx(y.r_i, abs=1e-4)


def test_small_batch_rows_give_the_same_tree(setup):
    cfg, model, processor, scorer, prompts = setup
    wide = build_module(model, processor, LLAVA, scorer, cfg).predict_step(prompts[:2])
    cfg2 = cfg.copy()
    cfg2.search.max_batch_rows = 5  # one node (5 candidates) at a time
    narrow = build_module(model, processor, LLAVA, scorer, cfg2).predict_step(prompts[:2])
    assert [[n.token_ids for n in t] for t in trees(wide)] == [[n.token_ids for n in t] for t in trees(narrow)]


def test_cached_sentence_scores_equal_a_full_recompute(setup):
    cfg, model, processor, scorer, prompts = setup
    prompt = prompts[0]
    (record,) = build_module(model, processor, LLAVA, scorer, cfg).predict_step([prompt])
    nodes = [Node(**n) for n in record["nodes"]]
    deep = next(n for n in nodes if n.depth == 3)
    answer = [t for n in path_to(nodes, deep.id) for t in n.token_ids]
    image = load_image(cfg.data.image_root, prompt.image)
    inputs = processor(images=[image], text=[generation_prompt(processor, prompt.prompt)], return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0].float()
    logps = logits.log_softmax(-1)
    n_prompt, k = inputs["input_ids"].shape[1], len(deep.token_ids)
    start = n_prompt + len(answer) - k  # where the deepest sentence begins
    expected = sum(logps[start + i - 1, deep.token_ids[i]].item() for i in range(k)) / k
    assert deep.r_t == pytest.approx(expected, abs=1e-4)


def test_sentences_concatenate_to_the_decoded_answer(setup):
    cfg, model, processor, scorer, prompts = setup
    tok = processor.tokenizer
    for nodes in trees(build_module(model, processor, LLAVA, scorer, cfg).predict_step(prompts)):
        for final in (n for n in nodes if n.final):
            path = path_to(nodes, final.id)
            ids = [t for n in path for t in n.token_ids]
            assert "".join(n.text for n in path) == tok.decode(ids, skip_special_tokens=True)


def test_budget_specials_and_pruning(setup):
    cfg, model, processor, scorer, prompts = setup
    specials = set(special_token_ids(processor)) | {processor.tokenizer.eos_token_id}
    for nodes in trees(build_module(model, processor, LLAVA, scorer, cfg).predict_step(prompts)):
        for n in nodes[1:]:
            assert n.answer_tokens <= cfg.search.max_answer_tokens  # answer tokens only: the prompt is ~49
            assert not specials & set(n.token_ids)
            assert (n.finish == "answer_budget") == (n.answer_tokens == cfg.search.max_answer_tokens)
        for depth in (1, 2):
            kept = [n for n in nodes if n.depth == depth and n.kept]
            open_children = [n for n in nodes if n.depth == depth and not n.final]
            if len(open_children) >= cfg.search.beam_width:
                assert len(kept) == cfg.search.keep_top + cfg.search.keep_bottom


def test_clip_encodes_each_image_once(setup, tiny_models):
    cfg, model, processor, _, prompts = setup
    scorer = ClipScorer(load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config))
    build_module(model, processor, LLAVA, scorer, cfg).predict_step(prompts)
    assert scorer.image_encodes == len(prompts)

