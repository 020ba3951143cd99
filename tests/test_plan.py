"""csr/plan.py against hand-computed numbers; csr-plan's config reading against the models themselves."""

from __future__ import annotations

import torch

from csr import plan as P
from csr.plan_cli import PUBLIC, clip_dims, llava_dims, main, model_dims

# vocab 10, hidden 4, MLP 6, 2 layers, 2 query heads sharing 1 KV head of width 2: q = 4, kv = 2.
TOY = P.LMDims(vocab=10, hidden=4, intermediate=6, layers=2, heads=2, kv_heads=1, head_dim=2)
TOY_VIT = P.ViTDims(image_size=4, patch_size=2, width=2, layers=1, mlp=3)  # 4 patches
TOY_LLAVA = P.LlavaDims(TOY, TOY_VIT, image_tokens=4)


def test_lm_params_by_hand() -> None:
    # per layer: q 4x4 + k, v 2 x 4x2 + o 4x4 = 48; MLP 3 x 4x6 = 72; two norms 8 -> 128
    # embeddings 40 + 2 layers 256 + final norm 4 + lm_head 40
    assert P.lm_params(TOY) == 340
    assert P.lm_params(P.LMDims(**{**TOY.__dict__, "tied": True})) == 300
    # biases: q, k, v, o (4 + 2 + 2 + 4) and MLP (6 + 6 + 4), per layer
    assert P.lm_params(P.LMDims(**{**TOY.__dict__, "attention_bias": True, "mlp_bias": True})) == 340 + 2 * (12 + 16)


def test_vision_and_projector_params_by_hand() -> None:
    # block: attention 4 (2x2 + 2) = 24, MLP (2x3 + 3) + (3x2 + 2) = 17, two LayerNorms 8 -> 49
    assert P.block_params(2, 3) == 49
    # patch conv 3x2x2x2 = 24, class 2, positions 5x2 = 10, pre/post LayerNorm 8, one block 49
    assert P.hf_vision_params(TOY_VIT) == 93
    # projector 2x4 + 4 + 4x4 + 4 = 32
    assert P.llava_params(TOY_LLAVA) == 340 + 93 + 32


def test_public_presets_match_the_published_counts() -> None:
    assert P.llava_params(PUBLIC["llava15_7b"]) == 7_063_427_072  # llava-hf/llava-1.5-7b-hf
    assert P.llava_params(PUBLIC["llava15_13b"]) == 13_351_494_656
    # open_clip's own table: ViT-L-14-336 427.94 M, ViT-B-32 151.28 M
    assert P.clip_params(clip_dims("ViT-L-14-336", None)) == 427_944_193
    assert P.clip_params(clip_dims("ViT-B-32", None)) == 151_277_313


def test_shapesworld_counts_equal_the_built_models() -> None:
    import open_clip
    from transformers import AutoConfig, LlavaForConditionalGeneration

    from csr.config import ASSETS

    config = AutoConfig.from_pretrained(str(ASSETS / "shapesworld/llava"), local_files_only=True)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    dims = llava_dims(config)
    assert P.llava_params(dims) == sum(p.numel() for p in model.parameters()) == 2_948_800
    assert dims.image_tokens == 16 and dims.lm.head_dim == 48
    clip_json = str(ASSETS / "shapesworld/clip/shapesworld-clip.json")
    open_clip.add_model_config(clip_json)
    clip = open_clip.create_model("shapesworld-clip", pretrained=None)
    assert P.clip_params(clip_dims("shapesworld-clip", clip_json)) == sum(p.numel() for p in clip.parameters())


def test_lora_and_kv_by_hand() -> None:
    # r (in + out): q 4+4, k 4+2, v 4+2, o 4+4, gate 4+6, up 4+6, down 6+4 = 58 per layer, r = 2, 2 layers
    assert P.lora_params(TOY, 2) == 232
    assert P.lora_params(TOY, 2, ("q_proj", "v_proj")) == 2 * 2 * (8 + 6)
    assert P.kv_bytes_per_token(TOY, 2) == 2 * 2 * 2 * 2  # k and v, 2 layers, 1 head x 2, bf16


def test_saved_activations_by_hand() -> None:
    # bf16, r 2, no dropout: norms 2 x 4 B x 4 = 32; SDPA q, k, v, out 2 (4 + 2 + 2 + 4) + lse 4 x 2 heads = 32;
    # MLP gate, SiLU, up 2 x 3 x 6 = 36; LoRA inputs: two normed inputs 2 x 2 x 4 = 16, o's copy 8, the
    # product 12; LoRA A outputs 7 x 2 x 2 = 28
    assert P.saved_per_token_layer(TOY, 2, 2, dropout=False) == 32 + 32 + 36 + 16 + 8 + 12 + 28
    # with dropout each LoRA input is a copy + a bool mask: 3 x (4 + 4 + 4 + 4 + 4 + 4 + 6) = 90
    assert P.saved_per_token_layer(TOY, 2, 2, dropout=True) == 32 + 32 + 36 + 90 + 28
    assert P.saved_per_token_layer(TOY, 2, 2, dropout=True, mask_bytes=2) == 32 + 32 + 36 + 4 * 30 + 28


def test_logits_peak_by_hand() -> None:
    assert P.logits_peak(10, 100, 2) == 12 * 1000  # backward: saved log-probs, their grad, its result
    assert P.logits_peak(10, 100, 4) == 12 * 1000


def test_optimizer_states_per_strategy() -> None:
    t = P.Training(pairs=1, lora_r=2, lora_dropout=False, bucket=100, devices=8)
    assert P.lora_state_bytes(1000, t) == 16_000
    assert P.lora_state_bytes(1000, P.Training(**{**t.__dict__, "strategy": "ddp"})) == 20_000
    # ZeRO-2: bf16 weights whole 2000, (2 + 12) x 1000 / 8 = 1750, a bf16 bucket 200
    assert P.lora_state_bytes(1000, P.Training(**{**t.__dict__, "strategy": "zero2"})) == 3950
    assert P.lora_state_bytes(1000, P.Training(**{**t.__dict__, "strategy": "zero3"})) == 2200
    assert P.lora_state_bytes(1000, P.Training(**{**t.__dict__, "strategy": "zero3_offload"})) == 200


SHAPE = P.SearchShape(prompts_per_batch=2, beam_width=3, candidates=2, keep_top=1, keep_bottom=2, max_sentences=3,
                      sentence_tokens=4, answer_tokens=100, max_batch_rows=1000, max_batch_tokens=10**9)


def test_search_caps_by_hand() -> None:
    assert P.live_nodes(SHAPE) == 3  # 1 best + 2 worst (>= beam_width - 1 = 2)
    # depth 0: 2 roots, their 2 x 2 children of 4 tokens cached; depth 1: 6 nodes of 4 tokens, paths 4 +
    # children 8 each; depth 2 (last): 6 nodes of 8 tokens, only their paths
    assert P.cap_steps(SHAPE) == [P.Step(2, 0, 16), P.Step(6, 4, 72), P.Step(6, 8, 48)]
    kvt = P.kv_bytes_per_token(TOY, 2)
    parts = P.search_peak(TOY_LLAVA, SHAPE, prompt_tokens=6, act=2)
    # the worst step is the last: 12 rows x (8 + 4) tokens decoding, 48 tokens of sentence caches
    assert parts["decode_kv"] == 144 * kvt and parts["sentence_kv"] == 48 * kvt
    assert parts["prefix_kv"] == 2 * (4 + 6) * kvt  # one copy per prompt (image + text tokens)
    # scores 12 rows x 2 heads x (10 + 12) x (4 + 4 + 2) B, and one layer's row-selection copy
    assert parts["decode_work"] == 12 * 2 * 22 * 10 + 144 * kvt // 2
    # max_batch_rows 4: 2 nodes of 2 candidates per decode batch
    narrow = P.search_peak(TOY_LLAVA, P.SearchShape(**{**SHAPE.__dict__, "max_batch_rows": 4}), 6, 2)
    assert narrow["decode_kv"] == 4 * 12 * kvt


def test_dpo_switches_lower_memory() -> None:
    t = P.Training(pairs=1, lora_r=2, lora_dropout=False)
    full = P.dpo_peak(TOY_LLAVA, t, prompt_tokens=6, answer_tokens=9, act=2)
    # 2 rows of 4 + 6 + 9 + 1 = 20 tokens; the log-softmax over every position or the 2 x 10 answer ones
    assert full["logits_and_backward"] == max(12 * 40 * 10, 40 * 2 * (3 * 6 + 4))
    answer = P.dpo_peak(TOY_LLAVA, P.Training(**{**t.__dict__, "answer_logits": True}), 6, 9, 2)
    assert answer["logits_and_backward"] == max(12 * 20 * 10, 40 * 2 * (3 * 6 + 4))
    checkpointed = P.dpo_peak(TOY_LLAVA, P.Training(**{**t.__dict__, "checkpointing": True}), 6, 9, 2)
    per_layer = P.saved_per_token_layer(TOY, 2, 2, False)
    mask = 2 * 20 * 20
    assert full["activations"] == 2 * (40 * per_layer + mask * 2) + mask
    assert checkpointed["activations"] == 40 * 2 * 4 * 2 + 40 * per_layer + mask * 2 + mask
    frozen = P.dpo_peak(TOY_LLAVA, P.Training(**{**t.__dict__, "reference": "frozen_copy"}), 6, 9, 2)
    assert frozen["weights"] == 2 * full["weights"]


def test_public_table_without_the_checkpoint() -> None:
    dims, source = model_dims("llava-hf/llava-1.5-13b-hf", "llava15_13b")
    assert dims == PUBLIC["llava15_13b"] and "public" in source


def test_csr_plan_prints_the_paper_preset(capsys) -> None:
    main(["experiment=paper_llava15_7b", "--devices", "1,8", "--gpu-gib", "80"])
    out = capsys.readouterr().out
    assert "7.063 B params" in out and "DPO zero2" in out and "LoRA r=128: 319.8 M params" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"search", "reward", "reference", "dpo", "eval"} <= set(rows)
    assert rows["reward"].split("|")[2].strip() == "1.59 ok"  # CLIP ViT-L/14-336: 427,944,193 x 4 B = 1.59 GiB
    # overrides after the options too; the 200-token answers shrink the search's decode batch and DPO
    main(["--devices", "8", "--answer-tokens", "200", "experiment=paper_llava15_7b", "dpo.gradient_checkpointing=true"])
    short = capsys.readouterr().out
    assert "gradient checkpointing on" in short and "answers up to 200 tokens" in short
    total = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in short.splitlines() if line.startswith("| ")
             and line.split("|")[1].strip() in ("search", "dpo")}
    assert total["search"] < float(rows["search"].split("|")[2].split()[0])
    assert total["dpo"] < float(rows["dpo"].split("|")[3].split()[0])
