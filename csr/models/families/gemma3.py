"""Gemma 3 (`gemma3`): a SigLIP tower, an average-pooling projector, a Gemma 3 LM with sliding-window layers.

An image is one fixed-size crop pooled to `mm_tokens_per_image` soft tokens (256 in the real models),
written as "\\n\\n<start_of_image>" + soft tokens + "<end_of_image>\\n\\n" where the prompt has
<start_of_image>. The soft tokens attend to each other both ways; the forward learns where they are
from `token_type_ids` (1 on the soft tokens), which the prefill and training must pass. Decoding text
tokens needs no token types: generate passes none after the prefill.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from csr.models.families.base import Family

# The gemma-3-*-it template, less its system-prompt and tool branches: "<bos>" is written by the
# template, the assistant's role is "model", every turn ends with "<end_of_turn>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ item['text'] | trim }}{% endgeneration %}"
    "{% else %}{{ item['text'] | trim }}{% endif %}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Gemma's own special tokens, at the ids the real tokenizer gives the first four.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_TOKENS_PER_IMAGE = 4  # the 4x4 patches average-pooled 2x2
TINY_SLIDING_WINDOW = 8  # shorter than any prompt, so the sliding layer really slides


class Gemma3(Family):
    model_types = ("gemma3",)
    model_class = Gemma3ForConditionalGeneration
    # The bidirectional attention over each image's soft tokens is built from these (1 = image).
    token_keys = ("token_type_ids",)
    turn_end = "<end_of_turn>"
    template_writes_bos = True  # "<bos>" opens the template

    def repeat_features(self, features: list[torch.Tensor], times: int) -> torch.Tensor:
        """Gemma 3's forward takes the features as one tensor (it calls .to and .shape on them)."""
        return torch.cat(features * times)

    def processor_problems(self, model: Any, processor: Any) -> list[str]:
        """The processor's `image_token_id` is <start_of_image> (the placeholder in the prompt); the model's
        is the soft token the processor expands it into, so those two are compared by name."""
        problems = []
        tokenizer, config = processor.tokenizer, model.config
        embeddings = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > embeddings:
            problems.append(f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {embeddings}")
        ids = {"image soft token": (getattr(tokenizer, "image_token_id", None), config.image_token_id),
               "start-of-image token": (getattr(tokenizer, "boi_token_id", None), config.boi_token_id),
               "end-of-image token": (getattr(tokenizer, "eoi_token_id", None), config.eoi_token_id)}
        for what, (theirs, ours) in ids.items():
            if theirs != ours:
                problems.append(f"the processor's {what} id is {theirs}, the model's {ours}")
        if problems:
            return problems
        vision = config.vision_config
        size = processor.image_processor.size
        if (size["height"], size["width"]) != (vision.image_size, vision.image_size):
            problems.append(f"the processor makes {size['width']}x{size['height']}px images, the vision tower "
                            f"expects {vision.image_size}px")
        written = getattr(processor, "image_seq_length", None)
        if written != config.mm_tokens_per_image:
            problems.append(f"the processor writes {written} image tokens per image, the model makes "
                            f"{config.mm_tokens_per_image} features")
        return problems

    def build_tiny(self, out_dir: str, seed: int) -> None:
        from csr.models.checkpoint import save_model

        tokenizer = build_tokenizer()
        ids = tokenizer.convert_tokens_to_ids
        config = Gemma3Config(
            vision_config=SiglipVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hidden_size=32,
                                             intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            text_config=Gemma3TextConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,  # grouped-query: 2 queries per key
                query_pre_attn_scalar=32,  # not head_dim, so a default 1/sqrt(head_dim) scaling would show
                layer_types=["sliding_attention", "full_attention"], sliding_window=TINY_SLIDING_WINDOW,
                max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            ),
            mm_tokens_per_image=TINY_TOKENS_PER_IMAGE,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
        )
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(config)
        # The projector's weight starts at zero (_init_weights): random, so images change the logits.
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, ids("<end_of_turn>")]  # as gemma-3-it
        save_model(model, make_processor(tokenizer, TINY_IMAGE_SIZE, TINY_TOKENS_PER_IMAGE), out_dir)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Gemma 3's special tokens, named as its processor reads them."""
    from csr.models.tiny import train_byte_bpe

    return PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(SPECIAL_TOKENS, "<unk>"), bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        # Gemma3Processor reads these by name (tokenizer.boi_token, .image_token_id, ...).
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>", "start_of_turn_token": "<start_of_turn>",
                              "end_of_turn_token": "<end_of_turn>"},
        add_bos_token=True,  # like Gemma's tokenizer: the template's <bos> makes it a trap (template_writes_bos)
        add_eos_token=False,
    )


def make_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, tokens_per_image: int) -> Gemma3Processor:
    """A Gemma 3 processor for square `image_size` crops of `tokens_per_image` soft tokens (no pan-and-scan)."""
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=CHAT_TEMPLATE,
    )
