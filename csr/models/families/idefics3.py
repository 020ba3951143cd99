"""Idefics3 (`idefics3`) and SmolVLM (`smolvlm`): image splitting, a pixel-shuffle connector, a Llama LM.

An image is resized so its longest edge is the processor's `size` (a multiple of the tower's crop),
cut into a grid of crops of `max_image_size`, plus the whole image resized to one crop. Each crop's
patch features are pixel-shuffled (scale_factor x scale_factor patches into one token) and projected
by the `connector`: `image_seq_len` tokens a crop, written as <fake_token_around_image><row_i_col_j>
<image>... per crop, then <global-img> and the whole image's tokens. So a prompt's token count depends
on its image's size. `pixel_values` is [prompts, crops, C, H, W], zero-padded to a batch's most crops
(all-zero crops are dropped again by the model), `pixel_attention_mask` [prompts, crops, H, W] marks
the real pixels of each crop. The LM is `text_model` (not `language_model`); its positions are plain
1-D RoPE and its mask causal, so the base class's positions hold.

Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3): SigLIP, Llama 3 LM, "User:" / "Assistant:" turns ending
with <end_of_utterance>. SmolVLM (HuggingFaceTB/SmolVLM-*): the same shape on a SmolLM2 LM, its
processor also handles video (and needs `num2words` to word frame counts).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
)

from csr.models.families.base import Family

# HuggingFaceM4/Idefics3-8B-Llama3's template with generation marks on the answer: the role capitalised,
# ":" right after it when the turn opens with the image, every turn closed by "<end_of_utterance>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ line['text'] }}{% endgeneration %}"
    "{% else %}{{ line['text'] }}{% endif %}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{{ '<end_of_utterance>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# The tokens the processors write around images (a 2x2 grid at most here; the real ones name 6x6).
GRID = 2
SPECIAL_TOKENS = (["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<image>", "<fake_token_around_image>",
                   "<global-img>", "<end_of_utterance>", "<video>"]
                  + [f"<row_{i + 1}_col_{j + 1}>" for i in range(GRID) for j in range(GRID)])
TINY_CROP = 32  # max_image_size: one crop
TINY_PATCH_SIZE = 8  # 4x4 patches a crop
TINY_SCALE = 2  # pixel shuffle: 2x2 patches a token, so 4 tokens a crop
TINY_TOKENS_PER_CROP = (TINY_CROP // TINY_PATCH_SIZE) ** 2 // TINY_SCALE**2


class Idefics3(Family):
    model_types = ("idefics3",)
    model_class = Idefics3ForConditionalGeneration
    image_keys = ("pixel_values", "pixel_attention_mask")
    projector = "connector"
    language_model = "text_model"
    turn_end = "<end_of_utterance>"
    template_writes_bos = True
    config_class: Any = Idefics3Config
    vision_config_class: Any = Idefics3VisionConfig
    processor_class: Any = Idefics3Processor
    image_processor_class: Any = Idefics3ImageProcessor
    video_processor_class: Any = None

    def processor_problems(self, model: Any, processor: Any) -> list[str]:
        """Crops must be the tower's size; then the base probe compares the tokens written for an image
        with the features the model makes of it (so a wrong `image_seq_len` is caught)."""
        crop = dict(processor.image_processor.max_image_size).get("longest_edge")
        if crop != model.config.vision_config.image_size:
            return [f"the processor makes {crop}px crops, the vision tower expects "
                    f"{model.config.vision_config.image_size}px"]
        return super().processor_problems(model, processor)

    def build_tiny(self, out_dir: str, seed: int) -> None:
        from csr.models.checkpoint import save_model

        tokenizer = build_tokenizer()
        config = self.config_class(
            vision_config=self.vision_config_class(image_size=TINY_CROP, patch_size=TINY_PATCH_SIZE, hidden_size=32,
                                                   intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            text_config=LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,  # grouped-query, as Llama 3's 32/8
                max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            ),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            scale_factor=TINY_SCALE,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = self.model_class(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                                tokenizer.convert_tokens_to_ids("<end_of_utterance>")]
        save_model(model, self.make_processor(tokenizer), out_dir)

    def make_processor(self, tokenizer: PreTrainedTokenizerFast, crop: int = TINY_CROP,
                       tokens_per_crop: int = TINY_TOKENS_PER_CROP) -> Any:
        """A processor cutting images of up to GRID x GRID crops of `crop` px, `tokens_per_crop` tokens each."""
        sizes = dict(size={"longest_edge": GRID * crop}, max_image_size={"longest_edge": crop})
        # SmolVLM's processor requires a video processor, though csr sends images only.
        video = {"video_processor": self.video_processor_class(**sizes)} if self.video_processor_class else {}
        return self.processor_class(image_processor=self.image_processor_class(**sizes), tokenizer=tokenizer,
                                    image_seq_len=tokens_per_crop, chat_template=CHAT_TEMPLATE, **video)


class SmolVLM(Idefics3):
    model_types = ("smolvlm",)
    model_class = SmolVLMForConditionalGeneration
    config_class = SmolVLMConfig
    vision_config_class = SmolVLMVisionConfig
    processor_class = SmolVLMProcessor
    image_processor_class = SmolVLMImageProcessor
    video_processor_class = SmolVLMVideoProcessor


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Idefics3's special tokens; it adds <|begin_of_text|> as Llama 3's does
    (the template writes it too: see Family.template_writes_bos)."""
    from csr.models.tiny import train_byte_bpe

    return PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(SPECIAL_TOKENS), bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<pad>",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|begin_of_text|>", "<|end_of_text|>", "<pad>")],
        add_bos_token=True, add_eos_token=False,
    )
