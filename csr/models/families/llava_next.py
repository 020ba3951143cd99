"""LLaVA-NeXT (`llava_next`) and LLaVA-OneVision (`llava_onevision`): any-resolution tiling.

An image is cut into crops of the vision tower's size on the best-fitting grid of `image_grid_pinpoints`,
plus one crop of the whole image resized. `pixel_values` is [images, crops, C, H, W], zero-padded to a
batch's most crops; `image_sizes` [images, 2] (height, width) tells the model how many crops each image
really has (the padding crops are dropped again) and how to unpad its feature grid. An image's token
count therefore depends on its size: the base crop's patches, then the tiled grid without its letterbox
padding, one `image_newline` feature closing each row. The LM reads plain 1-D RoPE positions and a
causal mask (image tokens included), so the base class's positions hold.

NeXT (llava-v1.6-mistral): a CLIP tower (its CLS feature dropped), a Mistral LM whose every layer
attends within `text_config.sliding_window` tokens. OneVision (llava-onevision-qwen2): a SigLIP tower
(no CLS), a Qwen2 LM with grouped-query attention, ChatML turns; an image's tiled grid is pooled down
when it exceeds `vision_aspect_ratio` ("anyres_max_9": 9 crops' worth of features).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from csr.models.families.base import Family

# llava-hf/llava-v1.6-mistral-7b-hf's template (its later form, which writes "</s>" where the first
# one wrote "<\s>"), with generation marks on the answer. It has no generation prompt: the user turn
# already ends with " [/INST]", and the answer follows after a space.
NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' }}{% generation %}{{ message['content'][0]['text'] + '</s>' }}{% endgeneration %}{{ ' ' }}"
    "{% endif %}{% endfor %}"
)
# llava-hf/llava-onevision-qwen2-*-ov-hf's ChatML template: role and a space, images, then "\n" + text,
# "<|im_end|>" with no newline after it. (An assistant turn opens "<|im_start|>assistant \n" but the
# generation prompt "<|im_start|>assistant\n": the real template's quirk, kept.)
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2's special tokens (<|endoftext|> first, as at id 151643 in the real vocabulary) and OneVision's.
ONEVISION_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

TINY_IMAGE_SIZE = 32  # one crop
TINY_PATCH_SIZE = 8  # 4x4 = 16 patches a crop
# The real grids scaled from 336 px (NeXT: 1x2, 2x1, 2x2, 1x3, 3x1 crops) and 384 px (OneVision: every
# grid up to 6x6; here up to 2x2) to 32 px, so a 40x30 and a 64x64 image tile differently.
NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
ONEVISION_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
TINY_SLIDING_WINDOW = 16  # shorter than any prompt (an image alone is over 16 tokens), so the window bites


class LlavaNext(Family):
    model_types = ("llava_next",)
    model_class = LlavaNextForConditionalGeneration
    # image_sizes gives each image's real crop count and grid; the forward does not need it once the
    # features are made (they are already unpadded and packed per image).
    image_keys = ("pixel_values", "image_sizes")
    turn_end = "</s>"

    def processor_problems(self, model: Any, processor: Any) -> list[str]:
        """A processor must tile on the model's grids, in crops of the tower's size; then the base probe
        compares the tokens it writes for an image with the features the model makes of it."""
        image_processor = processor.image_processor
        pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
        if pinpoints is None:
            return [f"the processor's {type(image_processor).__name__} does not tile images (no image_grid_pinpoints)"]
        problems = []
        ours = [list(p) for p in model.config.image_grid_pinpoints]
        if [list(p) for p in pinpoints] != ours:
            problems.append(f"the processor tiles images on the grids {pinpoints}, the model on {ours}")
        crop = _crop_size(image_processor)
        if crop != model.config.vision_config.image_size:
            problems.append(f"the processor makes {crop}px crops, the vision tower expects "
                            f"{model.config.vision_config.image_size}px")
        return problems or super().processor_problems(model, processor)

    def build_tiny(self, out_dir: str, seed: int) -> None:
        from csr.models.checkpoint import save_model
        from csr.models.tiny import build_tokenizer

        tokenizer = build_tokenizer()  # Llama-style: <s> added by the tokenizer, </s> ends a turn
        config = LlavaNextConfig(
            vision_config=CLIPVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hidden_size=32,
                                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           projection_dim=32),
            text_config=MistralConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,  # grouped-query, as Mistral-7B's 32/8
                sliding_window=TINY_SLIDING_WINDOW, max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=NEXT_PINPOINTS,
            image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,  # the base crop's tokens
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        )
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.generation_config, key, getattr(tokenizer, key))
        save_model(model, make_next_processor(tokenizer, TINY_IMAGE_SIZE, TINY_PATCH_SIZE), out_dir)


class LlavaOneVision(LlavaNext):
    model_types = ("llava_onevision",)
    model_class = LlavaOnevisionForConditionalGeneration
    # batch_num_images (images per prompt, [prompts]): only a prompt of one image is tiled, several
    # images are one crop each; csr always sends one.
    image_keys = ("pixel_values", "image_sizes", "batch_num_images")
    turn_end = "<|im_end|>"

    def build_tiny(self, out_dir: str, seed: int) -> None:
        from csr.models.checkpoint import save_model
        from csr.models.tiny import build_chatml_tokenizer

        tokenizer = build_chatml_tokenizer(ONEVISION_SPECIAL_TOKENS)
        ids = tokenizer.convert_tokens_to_ids
        config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hidden_size=32,
                                             intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             vision_use_head=False),
            text_config=Qwen2Config(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,  # grouped-query: 2 queries per key
                max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            image_token_index=ids("<image>"),
            video_token_index=ids("<video>"),
            image_grid_pinpoints=ONEVISION_PINPOINTS,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
        )
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]  # as the -ov checkpoints
        processor = make_onevision_processor(tokenizer, TINY_IMAGE_SIZE, (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2)
        save_model(model, processor, out_dir)


def _crop_size(image_processor: Any) -> int | None:
    """The side of the crops the image processor cuts (its crop_size, else its size), as it decides it."""
    for size in (getattr(image_processor, "crop_size", None), getattr(image_processor, "size", None)):
        if size:
            size = dict(size)
            return size.get("height") or size.get("shortest_edge")
    return None


def make_next_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaNextProcessor:
    """A LLaVA-NeXT processor: crops of `image_size` px on NEXT_PINPOINTS, a CLIP tower of `patch_size` patches."""
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size, "width": image_size},
                                                image_grid_pinpoints=NEXT_PINPOINTS),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped again by the "default" strategy
        chat_template=NEXT_CHAT_TEMPLATE,
    )


def make_onevision_processor(tokenizer: PreTrainedTokenizerFast, image_size: int,
                             tokens_per_crop: int) -> LlavaOnevisionProcessor:
    """A LLaVA-OneVision processor: crops of `image_size` px on ONEVISION_PINPOINTS, `tokens_per_crop`
    features a crop (a square grid). The processor requires a video processor, though csr sends images only."""
    size, half = {"height": image_size, "width": image_size}, [0.5, 0.5, 0.5]  # SigLIP's normalisation
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=ONEVISION_PINPOINTS,
                                                     image_mean=half, image_std=half),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size, image_mean=half, image_std=half),
        num_image_tokens=tokens_per_crop,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
