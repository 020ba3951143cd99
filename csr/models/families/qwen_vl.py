"""Qwen2-VL (`qwen2_vl`), Qwen2.5-VL (`qwen2_5_vl`), Qwen3-VL (`qwen3_vl`): dynamic resolution, multimodal RoPE.

An image is resized to a multiple of patch_size * merge_size (between the processor's min and max pixel
counts), cut into patches, and merged 2x2 into one token each: its token count depends on its size.
`pixel_values` is one flat [all patches of the batch, C*T*P*P] tensor and `image_grid_thw` [images, 3]
says how many patches (temporal, height, width) each image has: DPO concatenates both, never pads.

Positions are multimodal RoPE: three ids per token (temporal, height, width). Text tokens have all
three equal and counting on; an image's tokens share the temporal id and count their row and column
from where the image starts, and the text after the image resumes at the largest id used + 1. So the
positions of a prompt come from the model's own `get_rope_index` (the grids and `mm_token_type_ids`,
the processor's map of which tokens are image tokens), and a token decoded after the prompt is at
its count of real tokens + the prompt's delta (get_rope_index's second output), the same id thrice.
1-D positions on these models are off by ~1e-3 in the logits, and greedy decoding still agrees.

Qwen2-VL: a ViT with 2-D RoPE, an MLP `merger`; Qwen2.5-VL: window attention in most vision layers,
an RMSNorm merger; Qwen3-VL: learned position embeddings plus 2-D RoPE, "deepstack" features of some
vision layers added to the first LM layers' hidden states at the image tokens (why its precomputed
features carry more than `pooler_output`), interleaved mRoPE sections, Qwen3 LM (q/k norms). All three:
a ChatML template ending turns with <|im_end|>, grouped-query attention in the real sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from csr.models.families.base import Family

# The Qwen2-VL / Qwen2.5-VL instruct template, less its video and tool branches: a default system turn,
# <|vision_start|><|image_pad|><|vision_end|> where the image goes (the processor expands the pad to
# the image's tokens), every turn closed by "<|im_end|>\n".
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ content['text'] }}{% endgeneration %}"
    "{% else %}{{ content['text'] }}{% endif %}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen3-VL's template writes no default system turn.
QWEN3_CHAT_TEMPLATE = QWEN2_CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}", "")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

TINY_PATCH_SIZE = 8
TINY_MERGE_SIZE = 2  # 2x2 patches per token, as the real models
# Images are resized to 16-px multiples within [16x16, 64x64] px: the test images (40x30, 64x64) give
# 6 and 16 tokens, so one batch mixes token counts as real images of different sizes do.
TINY_MIN_PIXELS = 16 * 16
TINY_MAX_PIXELS = 64 * 64
# head_dim 16: RoPE's 8 frequency pairs split over (temporal, height, width) as the real 16/24/24 of 64.
TINY_MROPE_SECTION = [2, 3, 3]


class Qwen2VL(Family):
    model_types = ("qwen2_vl",)
    model_class = Qwen2VLForConditionalGeneration
    image_keys = ("pixel_values", "image_grid_thw")
    forward_keys = ("image_grid_thw",)  # the forward builds the mRoPE positions from the grids
    token_keys = ("mm_token_type_ids",)  # 1 on image tokens: which tokens take 3-D positions
    projector = "visual.merger"
    turn_end = "<|im_end|>"
    chat_template = QWEN2_CHAT_TEMPLATE
    processor_class: Any = Qwen2VLProcessor
    video_processor_class: Any = Qwen2VLVideoProcessor

    def prefill_positions(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own multimodal RoPE ids [3, B, L] for the left-padded batch, and each prompt's delta."""
        position, delta = model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        return position, delta.reshape(-1).to(torch.long)

    def decode_positions(self, text_positions: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Text after the prompt has its three ids equal: [3, R, q]."""
        return (text_positions + offset[:, None]).unsqueeze(0).expand(3, -1, -1)

    def build_tiny(self, out_dir: str, seed: int) -> None:
        from csr.models.checkpoint import save_model
        from csr.models.tiny import build_chatml_tokenizer

        tokenizer = build_chatml_tokenizer(SPECIAL_TOKENS)
        ids = tokenizer.convert_tokens_to_ids
        text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2,  # grouped-query: 2 queries per key
                    max_position_embeddings=2048, bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                    pad_token_id=tokenizer.pad_token_id,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": TINY_MROPE_SECTION})
        tokens = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                      vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        config = self.tiny_config(text, tokens)
        torch.manual_seed(seed)
        model = self.model_class(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]  # as the instruct models
        save_model(model, self.make_processor(tokenizer), out_dir)

    def tiny_config(self, text: dict, tokens: dict) -> Any:
        return Qwen2VLConfig(
            vision_config=dict(depth=2, embed_dim=32, hidden_size=text["hidden_size"], mlp_ratio=2, num_heads=2,
                               patch_size=TINY_PATCH_SIZE, spatial_merge_size=TINY_MERGE_SIZE, temporal_patch_size=2),
            text_config=text, **tokens)

    def make_processor(self, tokenizer: Any, min_pixels: int = TINY_MIN_PIXELS,
                       max_pixels: int = TINY_MAX_PIXELS) -> Any:
        """This family's processor for `TINY_PATCH_SIZE` patches (a video processor is required, though
        csr sends images only)."""
        shared = dict(patch_size=TINY_PATCH_SIZE, merge_size=TINY_MERGE_SIZE, temporal_patch_size=2,
                      size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
        return self.processor_class(image_processor=Qwen2VLImageProcessor(**shared), tokenizer=tokenizer,
                                    video_processor=self.video_processor_class(**shared),
                                    chat_template=self.chat_template)


class Qwen25VL(Qwen2VL):
    model_types = ("qwen2_5_vl",)
    model_class = Qwen2_5_VLForConditionalGeneration
    # Image positions as Qwen2-VL's (get_rope_index's second_per_grid_ts only spaces video frames).

    def tiny_config(self, text: dict, tokens: dict) -> Any:
        return Qwen2_5_VLConfig(
            # Window attention over 2x2 merged tokens (window_size in pixels) in layer 0, full in layer 1.
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                               out_hidden_size=text["hidden_size"], patch_size=TINY_PATCH_SIZE,
                               spatial_merge_size=TINY_MERGE_SIZE, temporal_patch_size=2,
                               window_size=2 * TINY_MERGE_SIZE * TINY_PATCH_SIZE, fullatt_block_indexes=[1]),
            text_config=text, **tokens)


class Qwen3VL(Qwen2VL):
    model_types = ("qwen3_vl",)
    model_class = Qwen3VLForConditionalGeneration
    chat_template = QWEN3_CHAT_TEMPLATE
    processor_class = Qwen3VLProcessor
    video_processor_class = Qwen3VLVideoProcessor

    def repeat_image_outputs(self, outputs: Any, times: int) -> BaseModelOutputWithPooling:
        """The features and, per deepstack layer, its per-image features, all repeated `times` over."""
        shared = super().repeat_image_outputs(outputs, times)
        shared.deepstack_features = [tuple(layer) * times for layer in outputs.deepstack_features]
        return shared

    def tiny_config(self, text: dict, tokens: dict) -> Any:
        text = {**text, "head_dim": 16,
                "rope_parameters": {**text["rope_parameters"], "mrope_interleaved": True}}
        return Qwen3VLConfig(
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                               out_hidden_size=text["hidden_size"], patch_size=TINY_PATCH_SIZE,
                               spatial_merge_size=TINY_MERGE_SIZE, temporal_patch_size=2,
                               num_position_embeddings=64,  # an 8x8 grid, interpolated to each image's
                               deepstack_visual_indexes=[0]),
            text_config=text, **tokens)

