"""What csr needs to know about one Hugging Face VLM family, in one place.

A `Family` is the only code that knows a family: how its checkpoints load, what its processor writes
for a batch of (image, prompt), the positions a cached decode must give each new token (multimodal RoPE
included), how many tokens an image costs, which modules LoRA may wrap and which stay frozen, and
which tokens end an assistant turn. Search, reward, DPO, merge and evaluation call these methods and
never look at a `model_type`. The base class is the plain LLaVA-1.5 shape (1-D positions, one
`pixel_values` tensor); a family overrides what differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from csr.models.chat import generation_prompt

# The language model's linear layers, as LoRA targets; the vision tower and projector use other names
# or sit outside `language_model`, and lm_head is never matched.
LINEAR = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class Family:
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values this family loads
    model_class: ClassVar[type]  # the transformers class from_pretrained builds
    # Processor outputs that describe the images (forwarded to get_image_features and the forward).
    image_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    # Image inputs the forward still needs when given precomputed features (DPO runs the tower once per pair).
    forward_keys: ClassVar[tuple[str, ...]] = ()
    # Processor outputs aligned with input_ids (token types): padded with 0 (text) like input_ids.
    token_keys: ClassVar[tuple[str, ...]] = ()
    # The module that maps vision features into the LM: trained with dpo.train_projector, else frozen.
    projector: ClassVar[str] = "multi_modal_projector"
    # The module holding the decoder layers; LoRA wraps only linear layers under it.
    language_model: ClassVar[str] = "language_model"
    # The token that ends an assistant turn in the chat template (None: the tokenizer's eos).
    turn_end: ClassVar[str | None] = None
    # The chat template writes the bos token itself: the tokenizer must not add a second one.
    template_writes_bos: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name  # model.family: its key in the one table of families (csr/config/choices.py FAMILIES)

    # -- prompts and processor outputs ---------------------------------------------------------------

    def chat_prompt(self, processor: Any, prompt: str) -> str:
        """The templated string the model continues (ends with the assistant's turn opener)."""
        return generation_prompt(processor, prompt)

    def encode(self, processor: Any, texts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor's outputs for a left-padded batch, one image per text. Several processors want
        one image list per prompt; all accept it."""
        extra = {"add_special_tokens": False} if self.template_writes_bos else {}
        return dict(processor(images=[[image] for image in images], text=list(texts), return_tensors="pt",
                              padding=True, **extra))

    def image_inputs(self, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The image part of `inputs`, floating tensors cast to the model's dtype."""
        return {k: inputs[k].to(dtype) if inputs[k].is_floating_point() else inputs[k]
                for k in self.image_keys if k in inputs}

    # -- positions ------------------------------------------------------------------------------------

    def prefill_positions(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids of a left-padded prompt batch, and per prompt the offset that turns a later
        token's count of real tokens before it into its position (0 for 1-D RoPE)."""
        mask = inputs["attention_mask"]
        return (mask.cumsum(-1) - 1).clamp(min=0), torch.zeros(mask.shape[0], dtype=torch.long)

    def decode_positions(self, text_positions: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Position ids of decode tokens [R, q] from their real-token counts and their prompt's offset [R]."""
        return text_positions + offset[:, None]

    # -- training and merging -------------------------------------------------------------------------

    def lora_targets(self) -> str:
        """The default LoRA target regex: the language model's linear layers only."""
        return rf".*{self.language_model}.*\.{LINEAR}"

    def end_token_ids(self, processor: Any, model: Any) -> set[int]:
        """Every token that ends an answer: the tokenizer's eos, the generation config's, the turn end."""
        ids: set[int] = set()
        for value in (processor.tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if value is not None:
                ids.update(value if isinstance(value, list) else [value])
        ids.add(self.answer_end_id(processor))
        return ids

    def answer_end_id(self, processor: Any) -> int:
        """The token written after an answer in a DPO pair (what the model emits to end its turn)."""
        tokenizer = processor.tokenizer
        return tokenizer.convert_tokens_to_ids(self.turn_end) if self.turn_end else tokenizer.eos_token_id

    def repeat_image_outputs(self, outputs: Any, times: int) -> BaseModelOutputWithPooling:
        """get_image_features' outputs for images repeated `times` over, holding only what the forward
        reads from `mm_encoder_outputs` (the tower's hidden states are freed before the LM runs)."""
        return BaseModelOutputWithPooling(pooler_output=self.repeat_features(feature_list(outputs), times))

    def repeat_features(self, features: list[torch.Tensor], times: int) -> Any:
        """Per-image features repeated `times` over, as the forward takes them in `mm_encoder_outputs`
        (DPO's chosen and rejected rows share their pair's image)."""
        return features * times

    # -- checkpoints ----------------------------------------------------------------------------------

    def processor_problems(self, model: Any, processor: Any) -> list[str]:
        """Why `processor` cannot serve `model` (empty: it can). A processor from another checkpoint fails
        late and obscurely (index errors, "image features and image tokens do not match") or, worse,
        runs on wrong token ids. Checked on a probe image: the tokens the processor writes for it must
        be as many as the features the vision tower makes."""
        problems = []
        embeddings = model.get_input_embeddings().num_embeddings
        if len(processor.tokenizer) > embeddings:
            problems.append(f"the tokenizer has {len(processor.tokenizer)} tokens but the model embeds only {embeddings}")
        image_token_id = getattr(processor, "image_token_id", None)
        model_image_token = getattr(model.config, "image_token_id", None)
        if image_token_id != model_image_token:
            problems.append(f"the processor's image token id is {image_token_id}, the model's {model_image_token}")
            return problems
        inputs = self.encode(processor, [self.chat_prompt(processor, "probe")], [Image.new("RGB", (64, 48))])
        written = int((inputs["input_ids"] == image_token_id).sum())
        with torch.inference_mode():
            features = model.get_image_features(**self.image_inputs(inputs, model.dtype))
        made = sum(f.reshape(-1, f.shape[-1]).shape[0] for f in feature_list(features))
        if written != made:
            problems.append(f"the processor writes {written} image tokens for a probe image, the model makes {made} "
                            "features")
        return problems

    def prompt_length(self, processor: Any, prompt: str, image: Image.Image) -> int:
        """Tokens the model reads for one (image, prompt): the templated text with the image's real
        token count (which depends on its size in dynamic-resolution and tiling families)."""
        return int(self.encode(processor, [self.chat_prompt(processor, prompt)], [image])["input_ids"].shape[1])

    def build_tiny(self, out_dir: str, seed: int) -> None:
        """Write a tiny random-weight checkpoint (model + processor) of this family to `out_dir`, in the
        format real checkpoints have, for tests and smoke runs."""
        raise NotImplementedError(f"no tiny builder for family {self.name}")


def feature_list(features: Any) -> list[torch.Tensor]:
    """get_image_features' per-image features, whatever container the family returns them in."""
    pooled = getattr(features, "pooler_output", features)
    if isinstance(pooled, torch.Tensor):
        return [pooled]
    return list(pooled)
