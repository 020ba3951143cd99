"""What R_T can know and a bag-of-words CLIP cannot: is a description in the world's grammar, and is
each colour and size said of the object that has it?

Exact, because the grammar is known: a sentence is well-formed when it is one of text.py's
SENTENCE_TEMPLATES filled with the world's words, written exactly as text.py writes it. A binding
error is a sentence about a shape the image shows, with a colour (or size) that no object of that
shape has but another object of the image has: the attribute belongs to the wrong object.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from csr.worlds.shapesworld.text import SENTENCE_TEMPLATES, sentence_text
from csr.worlds.shapesworld.vocab import COLOURS, POSITIONS, SHAPES, SIZES

_WORDS = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES, "position": POSITIONS}


def _pattern(template: str) -> re.Pattern[str]:
    regex = re.escape(template)
    for field, words in _WORDS.items():
        regex = regex.replace(re.escape("{" + field + "}"), f"(?P<{field}>{'|'.join(map(re.escape, words))})")
    # text.py writes "an orange": accept either article here, then hold the sentence to its exact form
    return re.compile(regex.replace(re.escape("a "), "an?" + re.escape(" ")).replace(re.escape("A "), "An?" + re.escape(" ")))


_PATTERNS = [(t, _pattern(t)) for t in SENTENCE_TEMPLATES]


def sentences(text: str) -> list[str]:
    """The sentences of a description: each ends at a '.', and what follows the last '.' is one more."""
    parts = [s.strip() for s in re.findall(r"[^.]*\.|[^.]+$", text)]
    return [s for s in parts if s]


def parse(text: str) -> dict[str, str] | None:
    """The fields of a well-formed sentence ({"shape", "colour", "position"} and "size" where the template
    has one), or None."""
    for template, pattern in _PATTERNS:
        match = pattern.fullmatch(text)
        if match and sentence_text(template, **match.groupdict()) == text:
            return match.groupdict()
    return None


def binding_errors(fields: dict[str, str], objects: Sequence[dict]) -> set[str]:
    """Which of the sentence's attributes ("colour", "size") belong to another object of the image."""
    same_shape = [o for o in objects if o["shape"] == fields["shape"]]
    if not same_shape:
        return set()  # a hallucinated object: CHAIR counts it
    wrong = set()
    for attribute in ("colour", "size"):
        value = fields.get(attribute)
        if value is None or any(o[attribute] == value for o in same_shape):
            continue
        if any(o[attribute] == value for o in objects if o["shape"] != fields["shape"]):
            wrong.add(attribute)
    return wrong


def grammar_metrics(answers: Sequence[str], scenes: Sequence[Sequence[dict]]) -> dict[str, float]:
    """well_formed: share of all sentences that parse; well_formed_answers: share of answers every sentence
    of which parses; binding_errors: share of the parsed sentences about a shown shape that give it
    another object's colour or size (colour_binding_errors, size_binding_errors: each alone)."""
    if len(answers) != len(scenes):
        raise ValueError(f"{len(answers)} answers but {len(scenes)} scenes")
    n_sentences = n_parsed = n_whole = n_about_shown = n_bound_wrong = 0
    wrong_by = {"colour": 0, "size": 0}
    for text, objects in zip(answers, scenes, strict=True):
        parsed = [parse(s) for s in sentences(text)]
        n_sentences += len(parsed)
        n_parsed += sum(p is not None for p in parsed)
        n_whole += all(p is not None for p in parsed)
        for fields in filter(None, parsed):
            if any(o["shape"] == fields["shape"] for o in objects):
                n_about_shown += 1
                wrong = binding_errors(fields, objects)
                n_bound_wrong += bool(wrong)
                for attribute in wrong:
                    wrong_by[attribute] += 1

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {"well_formed": ratio(n_parsed, n_sentences), "well_formed_answers": ratio(n_whole, len(answers)),
            "binding_errors": ratio(n_bound_wrong, n_about_shown),
            "colour_binding_errors": ratio(wrong_by["colour"], n_about_shown),
            "size_binding_errors": ratio(wrong_by["size"], n_about_shown)}
