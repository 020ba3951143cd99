"""Turning a raw prompt into the model's own chat format (the only place a template is applied)."""

from __future__ import annotations

from typing import Any


def user_turn(prompt: str) -> list[dict[str, Any]]:
    """The conversation of one raw prompt: a user message with the image and the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def generation_prompt(processor: Any, prompt: str) -> str:
    """The templated string the model continues (ends with the assistant's turn opener)."""
    return processor.apply_chat_template(user_turn(prompt), add_generation_prompt=True)


def full_conversation(processor: Any, prompt: str, answer: str) -> tuple[str, str]:
    """(templated prompt, answer) so that their concatenation is the whole training sequence.

    The answer is appended as text after the generation prompt, the way generation produced it,
    so DPO scores exactly the tokens the search wrote (a leading space included).
    """
    return generation_prompt(processor, prompt), answer
