"""POPE (Li et al. 2023): yes/no object-probing questions, half about present objects, half absent.

Answers are read as yes or no by one of two parsers (`PARSERS`) and scored as binary classification
with "yes" as the positive class. The questions are data: csr/data/pope_questions.py samples them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from csr.config.choices import POPE_PARSERS
from csr.core.errors import CSRError
from csr.core.io import StrPath, read_records

log = logging.getLogger(__name__)


# Apostrophes stay inside words, so "isn't" is its own word and (as in POPE) not a "no".
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def official_says_yes(answer: str) -> bool:
    """POPE's own rule (AoiDragon/POPE evaluate.py), which every published POPE number used.

    Keep the text before the first "."; drop commas; split on single spaces; the answer is "no" if
    one piece is exactly "No", "no" or "not", else "yes".  So "NO", "No!", "Not sure", "No\\n" and
    "No,there" are yes, while "No, there is not." and "There is no cat." are no.
    """
    words = answer.split(".")[0].replace(",", "").split(" ")
    return not ("No" in words or "no" in words or "not" in words)


def robust_says_yes(answer: str) -> bool:
    """POPE's rule with words read as words: any punctuation or white space separates them and case
    is ignored, so "NO", "No!" and "Not sure" are no.  "isn't" stays yes, as in POPE."""
    words = _WORD.findall(answer.split(".")[0].lower())
    return not ("no" in words or "not" in words)


# One reading per eval.pope.parser choice, named <choice>_says_yes: the names are written once, in
# csr/config/choices.py POPE_PARSERS (a choice without its function fails here, at import).
PARSERS: dict[str, Callable[[str], bool]] = {name: globals()[f"{name}_says_yes"] for name in POPE_PARSERS}


def yes_no(answer: str, parser: str = "official") -> bool:
    """True for "yes" as `parser` (a key of PARSERS; eval.pope.parser) reads `answer`."""
    if parser not in PARSERS:
        raise ValueError(f"unknown POPE parser {parser!r}: use one of {', '.join(PARSERS)}")
    return PARSERS[parser](answer)


def pope_metrics(predictions: Sequence[bool], labels: Sequence[bool]) -> dict:
    """accuracy, precision, recall, f1 ("yes" is positive), yes_ratio (share answered yes), n.

    A ratio whose denominator is zero (no yes predictions for precision, no yes labels for recall,
    both zero for f1, no questions at all) is 0.0 rather than NaN, so results stay plain JSON.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    pairs = list(zip(predictions, labels, strict=True))
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    fn = sum(not p and t for p, t in pairs)
    tn = sum(not p and not t for p, t in pairs)
    n = len(pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "n": n,
    }


class _BadQuestion(Exception):
    """One bad line of a question file; `reason` is its skip-count key under on_error="skip"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _question(record: dict, seen: dict[Any, int], lineno: int) -> dict[str, Any]:
    for key in ("question_id", "image", "text", "label"):
        if key not in record:
            raise _BadQuestion("bad_record", f"missing {key!r}")
    qid = record["question_id"]
    if not isinstance(qid, int | str) or isinstance(qid, bool):
        raise _BadQuestion("bad_record", f"question_id should be an integer or string, got {qid!r}")
    if qid in seen:
        raise _BadQuestion("duplicate_id", f"question_id {qid!r} repeats line {seen[qid]}")
    label = record["label"]
    if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
        raise _BadQuestion("bad_record", f"label should be 'yes' or 'no', got {label!r}")
    seen[qid] = lineno
    return {**record, "label": label.strip().lower()}


def read_pope_questions(path: StrPath, on_error: str = "raise") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A POPE question file: JSONL of {"question_id", "image", "text", "label": "yes" | "no"}.

    Returns (questions, skip counts by reason). Labels are returned lowercased. A missing field, a
    bad label or a repeated question_id is a CSRError naming the file and line, or with
    on_error="skip" (data.on_error) a skipped, counted line; a line that is not a JSON object
    always raises, as a file that is not JSONL is no question file.
    """
    questions = []
    skipped: Counter[str] = Counter()
    seen: dict[Any, int] = {}
    for lineno, record in read_records(path):
        try:
            questions.append(_question(record, seen, lineno))
        except _BadQuestion as problem:
            if on_error != "skip":
                raise CSRError(f"{path}: line {lineno}: {problem}") from None
            skipped[problem.reason] += 1
            log.warning("skipping %s: line %d: %s", path, lineno, problem)
    return questions, dict(skipped)


def load_pope_questions(path: StrPath) -> list[dict[str, Any]]:
    """The questions of a POPE question file; any bad line raises (see read_pope_questions)."""
    return read_pope_questions(path)[0]


def _load_answers(path: StrPath) -> dict[Any, str]:
    answers: dict[Any, str] = {}
    for lineno, record in read_records(path):
        if "question_id" not in record:
            raise CSRError(f"{path}: line {lineno}: missing 'question_id'")
        qid = record["question_id"]
        if not isinstance(qid, int | str) or isinstance(qid, bool):
            raise CSRError(f"{path}: line {lineno}: question_id should be an integer or string, got {qid!r}")
        text = record.get("text", record.get("answer"))
        if not isinstance(text, str):
            raise CSRError(f"{path}: line {lineno}: needs a string 'text' or 'answer', got {text!r}")
        if qid in answers:
            raise CSRError(f"{path}: line {lineno}: second answer to question_id {qid!r}")
        answers[qid] = text
    return answers


def pope_from_files(questions_path: StrPath, answers_path: StrPath, parser: str = "official") -> dict:
    """pope_metrics of an answers JSONL ({"question_id", "text" or "answer"}) against a question file,
    answers read by `parser`.

    Every question needs exactly one answer and every answer a question: a partial answer file would
    silently score a different benchmark.
    """
    questions = load_pope_questions(questions_path)
    answers = _load_answers(answers_path)
    ids = [q["question_id"] for q in questions]
    missing = [qid for qid in ids if qid not in answers]
    if missing:
        raise CSRError(f"{answers_path}: no answer to {len(missing)} question(s) of {questions_path}, "
                       f"e.g. question_id {missing[0]!r}")
    extra = set(answers) - set(ids)
    if extra:
        raise CSRError(f"{answers_path}: answers question_id {sorted(map(str, extra))[0]} "
                       f"which is not in {questions_path}")
    predictions = [yes_no(answers[qid], parser) for qid in ids]
    labels = [q["label"] == "yes" for q in questions]
    return pope_metrics(predictions, labels)


def main(argv: list[str] | None = None) -> None:
    """`csr-pope QUESTIONS ANSWERS [--parser official|robust]`: score answers written anywhere (another
    model's, the paper's released ones) against a POPE question file, as POPE's evaluate.py reads them."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="csr-pope", description="Score an answers JSONL against a POPE question "
                                     "file, answers read as POPE's evaluate.py reads them (or --parser robust).")
    parser.add_argument("questions", help="POPE question file (JSONL: question_id, image, text, label)")
    parser.add_argument("answers", help="answers (JSONL: question_id and text or answer), one per question")
    parser.add_argument("--parser", choices=POPE_PARSERS, default="official")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(pope_from_files(args.questions, args.answers, args.parser), indent=2))
    except CSRError as err:
        print(f"csr-pope: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
