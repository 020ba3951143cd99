"""The CLIP scorer: image embeddings keyed by content (not by a name that repeats across roots), the
scorer placed with the Lightning module that uses it, and the text tower run on real token lengths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from csr.config.schema import RootConfig
from csr.core.errors import CSRError
from csr.data.images import load_image
from csr.data.prompts import load_prompts
from csr.data.tiny import write_tiny_prompts
from csr.eval.generate import GenerateModule
from csr.models.checkpoint import load_model
from csr.models.clip import ClipScorer, encode_text_prefix, load_clip, real_length, text_prefix_is_exact
from csr.models.families import get_family
from csr.reward.module import RewardModule
from csr.search.stage import build_module

LLAVA = get_family("llava")  # the tiny model's family

SHAPESWORLD_CLIP = Path(__file__).resolve().parent.parent / "csr" / "assets" / "shapesworld" / "clip"
TEXTS = [" A red circle.", " There is a small blue square in the top left corner of the picture.", " x"]


def _tiny_clip(tiny_models):
    return load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config)


def _clips(tiny_models) -> dict:
    return {
        "tiny": _tiny_clip(tiny_models),
        "shapesworld": load_clip("shapesworld-clip", str(SHAPESWORLD_CLIP / "shapesworld-clip.safetensors"),
                                 str(SHAPESWORLD_CLIP / "shapesworld-clip.json")),
    }


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A training and an eval root whose images have the same names (000000.png, ...) but differ."""
    base = tmp_path_factory.mktemp("roots")
    train = write_tiny_prompts(base / "train", n=2, seed=0)
    evals = write_tiny_prompts(base / "eval", n=2, seed=1)
    return {name: (str(path), str(path.parent / "images")) for name, path in (("train", train), ("eval", evals))}


def _fresh(tiny_models, root: str, name: str, texts: list[str]) -> list[float]:
    """The score a scorer that has never seen another image gives."""
    return ClipScorer(_tiny_clip(tiny_models)).relevance(name, load_image(root, name), texts)


def test_same_names_in_two_roots_each_stage_scores_its_own_image(tiny_models, roots) -> None:
    model, processor = load_model(tiny_models.llava)
    scorer = ClipScorer(_tiny_clip(tiny_models))  # one scorer for the whole run, as Loop.scorer() gives
    (train_file, train_root), (eval_file, eval_root) = roots["train"], roots["eval"]
    train_prompts, _ = load_prompts(train_file, train_root)
    eval_prompts, _ = load_prompts(eval_file, eval_root)
    assert [p.image for p in train_prompts] == [p.image for p in eval_prompts]

    def evaluate() -> None:
        for record in GenerateModule(model, processor, LLAVA, eval_root, 8, scorer=scorer).predict_step(eval_prompts):
            assert record["answer"].strip()
            expected = _fresh(tiny_models, eval_root, record["image"], [record["answer"]])
            assert record["r_i"] == pytest.approx(expected[0], abs=1e-4)

    evaluate()  # eval.at_base: the eval images are scored first, under the training images' names
    cfg = OmegaConf.structured(RootConfig)
    cfg.data.image_root = train_root
    cfg.search.max_sentences, cfg.search.max_new_tokens_per_sentence, cfg.search.max_answer_tokens = 2, 4, 8
    assert cfg.search.prune_by == "calibrated"  # the search itself scores with CLIP
    searched = build_module(model, processor, LLAVA, scorer, cfg).predict_step(train_prompts)
    reward = RewardModule(scorer, lam=0.9, calibration="rank", image_root=train_root)
    for record in searched:
        texts = [n["text"] for n in record["nodes"][1:]]
        expected = _fresh(tiny_models, train_root, record["image"], texts)
        other = _fresh(tiny_models, eval_root, record["image"], texts)
        assert max(abs(a - b) for a, b in zip(expected, other, strict=True)) > 1e-3  # the bug would show
        assert [n["r_i"] for n in record["nodes"][1:]] == pytest.approx(expected, abs=1e-4)
        unscored = {**record, "nodes": [{**n, "r_i": None} for n in record["nodes"]]}
        rewarded = reward.score(unscored)  # the reward stage scores what the search pruned unseen
        by_text = dict(zip(texts, expected, strict=True))  # a repeated sentence has one score per image
        for sentence in (s for answer in rewarded["answers"] for s in answer["sentences"]):
            assert sentence["r_i"] == pytest.approx(by_text[sentence["text"]], abs=1e-4)
    evaluate()  # and after the search, the eval images again


def test_cache_is_keyed_by_content(tiny_models) -> None:
    scorer = ClipScorer(_tiny_clip(tiny_models))
    red, blue = Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 200))
    first = scorer.relevance("000000.png", red, TEXTS)
    assert scorer.relevance("000000.png", blue, TEXTS) != first  # same name, other image: encoded anew
    assert scorer.relevance("elsewhere/red.png", red.copy(), TEXTS) == pytest.approx(first, abs=1e-6)
    assert scorer.image_encodes == 2  # same content under another name and object: cached


def test_scorer_is_a_submodule_of_every_module_that_scores(tiny_models, tmp_path) -> None:
    model, processor = load_model(tiny_models.llava)
    scorer = ClipScorer(_tiny_clip(tiny_models))
    cfg = OmegaConf.structured(RootConfig)
    cfg.data.image_root = str(tmp_path)
    modules = {
        "search": build_module(model, processor, LLAVA, scorer, cfg),
        "reward": RewardModule(scorer, 0.9, "rank", str(tmp_path)),
        "eval": GenerateModule(model, processor, LLAVA, str(tmp_path), 8, scorer=scorer),
    }
    for stage, module in modules.items():
        assert any(m is scorer for m in module.modules()), stage
        assert not any(p.requires_grad for p in scorer.parameters())
        module.train()
        assert not scorer.training  # frozen: Lightning's mode switches leave it in eval mode
    cfg.search.prune_by = "lm"  # no CLIP during the search: nothing to place there
    assert not any(m is scorer for m in build_module(model, processor, LLAVA, scorer, cfg).modules())


def test_weights_and_cached_embeddings_follow_the_module(tiny_models) -> None:
    scorer = ClipScorer(_tiny_clip(tiny_models))
    image = Image.new("RGB", (32, 32), (0, 120, 40))
    expected = scorer.relevance("a.png", image, TEXTS)
    module = RewardModule(scorer, 0.9, "rank", "/unused")
    module.double()  # what Lightning's precision plugins do; pixels must follow the weights' dtype
    assert scorer.relevance("a.png", image, TEXTS) == pytest.approx(expected, abs=1e-4)  # cached embedding
    scorer.clear_cache()
    assert scorer.relevance("a.png", image, TEXTS) == pytest.approx(expected, abs=1e-4)  # a float64 forward
    module.to("meta")  # stands for cuda:<rank>: a device change on a CPU-only machine
    assert {p.device.type for p in scorer.parameters()} == {"meta"}
    assert {e.device.type for e in scorer._images.values()} == {"meta"}
    assert scorer.image_embedding(image).device.type == "meta"


@pytest.mark.parametrize("name", ["tiny", "shapesworld"])
def test_text_tower_on_the_real_length_equals_the_full_context(tiny_models, name: str) -> None:
    clip = _clips(tiny_models)[name]
    assert text_prefix_is_exact(clip.model)
    tokens = clip.tokenizer(TEXTS)
    n = real_length(tokens)
    assert n < tokens.shape[1] and n == int((tokens != 0).sum(dim=1).max())  # up to the longest text's EOT
    with torch.no_grad():
        full = clip.model.encode_text(tokens, normalize=True)
        prefix = encode_text_prefix(clip.model, tokens[:, :n])
        one = encode_text_prefix(clip.model, tokens[2:, : real_length(tokens[2:])])  # 3 positions
    torch.testing.assert_close(prefix, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(one, full[2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(ClipScorer(clip).text_embeddings(TEXTS), full, atol=1e-5, rtol=0)


def test_full_context_where_a_prefix_would_not_be_exact(tiny_models) -> None:
    clip = _tiny_clip(tiny_models)
    clip.model.text_pool_type = "last"  # reads the last position: it moves with the length
    assert not text_prefix_is_exact(clip.model)
    clip = _tiny_clip(tiny_models)
    clip.model.attn_mask.zero_()  # bidirectional: later (pad) positions reach the EOT
    assert not text_prefix_is_exact(clip.model)
    scorer = ClipScorer(clip)
    assert not scorer.prefix_exact
    tokens = clip.tokenizer(TEXTS)
    with torch.no_grad():
        full = clip.model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(scorer.text_embeddings(TEXTS), full, atol=1e-6, rtol=0)


def test_non_finite_relevance_names_the_image(tiny_models) -> None:
    clip = _tiny_clip(tiny_models)
    with torch.no_grad():
        clip.model.text_projection.fill_(float("nan"))
    with pytest.raises(CSRError, match=r"image 000000\.png: CLIP relevance is not finite"):
        ClipScorer(clip).relevance("000000.png", Image.new("RGB", (8, 8)), TEXTS)
