"""Turning a raw prompt into the model's own chat format (the only place a template is applied)."""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from csr.core.errors import CSRError
from csr.data.images import open_image
from csr.data.prompts import resolve_image_path

# The label of positions no loss is taken on (prompt, image, padding): torch's cross_entropy ignore_index.
IGNORE = -100

log = logging.getLogger(__name__)


def user_turn(prompt: str) -> list[dict[str, Any]]:
    """The conversation of one raw prompt: a user message with the image and the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def generation_prompt(processor: Any, prompt: str) -> str:
    """The templated string the model continues (ends with the assistant's turn opener)."""
    return processor.apply_chat_template(user_turn(prompt), add_generation_prompt=True)


def context_length(model: Any) -> int | None:
    """The language model's trained context (positions beyond it give garbage, not an error)."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def drop_overlong(records: list, processor: Any, model: Any, family: Any, image_root: str, answer_tokens: int,
                  on_error: str, source: str) -> tuple[list, int]:
    """Records whose prompt (its image's real token count included) plus `answer_tokens` fit the
    model's context; the rest raise (naming `source` and the record) or, with on_error="skip", are
    dropped and counted. An image costs what the processor makes of its size (tiling and dynamic
    resolution families), so each distinct size is measured once on a blank image of that size."""
    limit = context_length(model)
    if limit is None:
        return records, 0
    image_cost: dict[tuple[int, int], int] = {}
    probe = "x"
    probe_text = len(processor.tokenizer(family.chat_prompt(processor, probe)).input_ids)
    kept = []
    for record in records:
        size = _image_size(image_root, record.image)
        if size not in image_cost:  # the image's tokens: a prompt's length with it, less the text's
            image_cost[size] = family.prompt_length(processor, probe, Image.new("RGB", size)) - probe_text
        n = len(processor.tokenizer(family.chat_prompt(processor, record.prompt)).input_ids) + image_cost[size]
        if n + answer_tokens <= limit:
            kept.append(record)
            continue
        message = (f"{source}: record id={record.id!r}: prompt is {n} tokens (its image {size[0]}x{size[1]} is "
                   f"{image_cost[size] + 1} of them); with up to {answer_tokens} answer tokens it exceeds the model "
                   f"context of {limit}")
        if on_error != "skip":
            raise CSRError(message)
        log.warning("skipping %s", message)
    return kept, len(records) - len(kept)


def _image_size(image_root: str, image: str) -> tuple[int, int]:
    """An image's (width, height) from its header; (1, 1) where it cannot be read (the stage that loads
    it names the file; one token short here at worst)."""
    try:
        with open_image(resolve_image_path(image_root, image)) as im:
            return im.size
    except (OSError, ValueError, CSRError):
        return (1, 1)
