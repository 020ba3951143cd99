"""Turning a raw prompt into the model's own chat format (the only place a template is applied)."""

from __future__ import annotations

import logging
from typing import Any

from csr.errors import CSRError

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


def prompt_tokens(processor: Any, prompt: str, image_tokens: int) -> int:
    """Tokens the model reads for one prompt: the templated text, its <image> expanded."""
    return len(processor.tokenizer(generation_prompt(processor, prompt)).input_ids) + image_tokens - 1


def drop_overlong(records: list, processor: Any, model: Any, answer_tokens: int, on_error: str,
                  source: str) -> tuple[list, int]:
    """Records whose prompt plus `answer_tokens` fit the model's context; the rest raise (naming
    `source` and the record) or, with on_error="skip", are dropped and counted."""
    limit = context_length(model)
    if limit is None:
        return records, 0
    image_tokens = getattr(model.config, "image_seq_length", 1)
    kept = []
    for record in records:
        n = prompt_tokens(processor, record.prompt, image_tokens)
        if n + answer_tokens <= limit:
            kept.append(record)
            continue
        message = (f"{source}: record id={record.id!r}: prompt is {n} tokens (with {image_tokens} image tokens); "
                   f"with up to {answer_tokens} answer tokens it exceeds the model context of {limit}")
        if on_error != "skip":
            raise CSRError(message)
        log.warning("skipping %s", message)
    return kept, len(records) - len(kept)
