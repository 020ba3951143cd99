"""One vision tower for both models: open_clip's ViT weights as a Hugging Face CLIPVisionModel.

LLaVA-1.5 sees through the same CLIP ViT that scores its sentences; ShapesWorld does the same by
training the tower once (in open_clip) and copying it into LLaVA's vision tower.
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig


def hf_vision_config(vision_cfg: dict) -> CLIPVisionConfig:
    width = vision_cfg["width"]
    return CLIPVisionConfig(
        image_size=vision_cfg["image_size"],
        patch_size=vision_cfg["patch_size"],
        hidden_size=width,
        intermediate_size=int(width * vision_cfg.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision_cfg["layers"],
        num_attention_heads=width // vision_cfg.get("head_width", 64),
        hidden_act="gelu",  # open_clip's default (not OpenAI's quick_gelu)
        layer_norm_eps=1e-5,
    )


def open_clip_visual_to_hf(visual: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict of a HF CLIPVisionModel (keys under `prefix`) from an open_clip VisionTransformer."""
    sd = visual.state_dict()
    out = {
        "embeddings.patch_embedding.weight": sd["conv1.weight"],
        "embeddings.class_embedding": sd["class_embedding"],
        "embeddings.position_embedding.weight": sd["positional_embedding"],
        "pre_layrnorm.weight": sd["ln_pre.weight"],
        "pre_layrnorm.bias": sd["ln_pre.bias"],
        "post_layernorm.weight": sd["ln_post.weight"],
        "post_layernorm.bias": sd["ln_post.bias"],
    }
    layers = len(visual.transformer.resblocks)
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        q, k, v = sd[src + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = sd[src + "attn.in_proj_bias"].chunk(3)
        out.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k, dst + "self_attn.k_proj.bias": kb,
            dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": sd[src + "attn.out_proj.weight"],
            dst + "self_attn.out_proj.bias": sd[src + "attn.out_proj.bias"],
            dst + "layer_norm1.weight": sd[src + "ln_1.weight"], dst + "layer_norm1.bias": sd[src + "ln_1.bias"],
            dst + "layer_norm2.weight": sd[src + "ln_2.weight"], dst + "layer_norm2.bias": sd[src + "ln_2.bias"],
            dst + "mlp.fc1.weight": sd[src + "mlp.c_fc.weight"], dst + "mlp.fc1.bias": sd[src + "mlp.c_fc.bias"],
            dst + "mlp.fc2.weight": sd[src + "mlp.c_proj.weight"], dst + "mlp.fc2.bias": sd[src + "mlp.c_proj.bias"],
        })
    return {prefix + k: v.clone() for k, v in out.items()}
