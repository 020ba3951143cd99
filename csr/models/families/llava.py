"""LLaVA-1.5 (`llava`): a CLIP tower, an MLP projector, a Llama/Vicuna LM; one 336-px image of 576 tokens."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from csr.models.families.base import Family

# The LLaVA-1.5 template from llava-hf: images first, then text, "USER: " / "ASSISTANT:" roles.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8


class Llava(Family):
    model_types = ("llava",)
    model_class = LlavaForConditionalGeneration

    def processor_problems(self, model: Any, processor: Any) -> list[str]:
        """LLaVA's image is one fixed-size crop: a processor of another size is named as such."""
        problems = []
        embeddings = model.get_input_embeddings().num_embeddings
        if len(processor.tokenizer) > embeddings:
            problems.append(f"the tokenizer has {len(processor.tokenizer)} tokens but the model embeds only {embeddings}")
        image_token_id = getattr(processor, "image_token_id", None)
        if image_token_id != model.config.image_token_id:
            problems.append(f"the processor's image token id is {image_token_id}, the model's {model.config.image_token_id}")
        vision = model.config.vision_config
        probe = processor(images=Image.new("RGB", (vision.image_size, vision.image_size)), text=processor.image_token,
                          return_tensors="pt")
        if probe["pixel_values"].shape[-1] != vision.image_size:
            problems.append(f"the processor makes {probe['pixel_values'].shape[-1]}px images, the vision tower "
                            f"expects {vision.image_size}px")
        elif image_token_id == model.config.image_token_id:
            written = int((probe["input_ids"] == image_token_id).sum())
            expected = (vision.image_size // vision.patch_size) ** 2
            expected += model.config.vision_feature_select_strategy == "full"  # the CLS feature is kept too
            if written != expected:
                problems.append(f"the processor writes {written} image tokens per image, the model makes {expected} "
                                "features")
        return problems

    def build_tiny(self, out_dir: str, seed: int) -> None:
        from csr.models.checkpoint import save_model
        from csr.models.tiny import build_tokenizer

        tokenizer = build_tokenizer()
        tokenizer.chat_template = CHAT_TEMPLATE
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hidden_size=32,
                                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           projection_dim=32),
            text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                    max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),  # alias of image_token_index in transformers 5
            image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            projector_hidden_act="gelu",
        )
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.generation_config, key, getattr(tokenizer, key))
        save_model(model, make_processor(tokenizer, TINY_IMAGE_SIZE, TINY_PATCH_SIZE), out_dir)


def make_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """A LLaVA-1.5 processor for square `image_size` crops of `patch_size` patches, with LLaVA's template."""
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # the CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
