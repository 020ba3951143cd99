"""POPE: the yes/no rule, hand-computed metrics, negative sampling, the file loaders."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from csr.core.errors import CSRError
from csr.data.pope_questions import cooccurrence_counts, sample_pope_questions
from csr.eval.pope import load_pope_questions, pope_from_files, pope_metrics, read_pope_questions, yes_no

FIXTURES = Path(__file__).parent / "fixtures" / "coco"


# The official rule's verdicts (True = yes), obtained by running POPE's evaluate.py (AoiDragon/POPE,
# commit 08d957b) unchanged but for its two input paths on these answers in a scratch directory
# (/tmp/scratch_pope/run_official.py): each answer as {"answer": ...} in the JSONL it reads, its
# `answers` list read back after the run. JSON escapes, so \n, \t and non-ASCII are exact.
OFFICIAL = [
    ("Yes", True), ("yes", True), ("Yes.", True), ("Yes, there is a dog in the image.", True),
    ("There is a dog.", True), ("", True), ("No", False), ("no", False), ("No.", False), ("no.", False),
    ("No, there is not.", False), ("There is no cat in the image.", False), ("not", False),
    ("There is not a cat.", False), ("Yes. There is no cat, but there is a dog.", True), ("No. Yes.", False),
    ("There isn't one.", True), ("Nothing like that; I see a knot.", True), ("None", True), ("Nope.", True),
    ("I don't see any.", True), ("NO", True), ("NO.", True), ("No!", True), ("NO!", True), ("Not sure.", True),
    ("Not", True), ("NOT", True), ("nO", True), ("No;", True), ("No:", True), ("(no)", True), ("\"No\"", True),
    ("No\n", True), ("No\nThere is no dog", False), ("No\tthere is", True), ("No,there is none.", True),
    ("Answer:No", True), ("Answer: No", False), ("No\u2026", True), ("No\u00a0dog", True), ("no-one", True),
    ("No_way", True), ("No2", True), ("Definitely not!", True), ("Certainly not.", False), ("   No", False),
    ("No , there is not", False), ("Yes, not", False), ("no, no, no", False), ("There's not one", False),
    ("There is no. Dog", False), ("Yes.No", True), ("Noo", True), ("No's", True), ("Is there? No.", False),
    ("It is not clear", False), ("It is unclear, no", False), ("\uff2e\uff2f", True), ("Nein", True),
    ("The answer is NO", True), ("No\u3002", True), ("Not at all", True),
]


@pytest.mark.parametrize(("answer", "expected"), OFFICIAL)
def test_official_parser_matches_pope_evaluate_py(answer: str, expected: bool) -> None:
    assert yes_no(answer, "official") is expected
    assert yes_no(answer) is expected  # the default, as eval.pope.parser's


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Yes", True),
        ("yes, there is a dog.", True),
        ("There is a dog.", True),
        ("No, there is not.", False),
        ("No.", False),
        ("no", False),
        ("NO!", False),
        ("Not really.", False),
        ("There is no cat in the image.", False),
        ("Yes. There is no cat, but there is a dog.", True),  # only the first sentence counts
        ("There isn't one.", True),  # POPE's rule: "isn't" is not the word "not"
        ("Nothing like that; I see a knot.", True),  # whole words only
        ("", True),
    ],
)
def test_robust_parser(answer: str, expected: bool) -> None:
    assert yes_no(answer, "robust") is expected


# Where the two parsers disagree among OFFICIAL: docs/fidelity.md's POPE parser table lists these.
DIFFER = ["NO", "NO.", "No!", "NO!", "Not sure.", "Not", "NOT", "nO", "No;", "No:", "(no)", '"No"', "No\n",
          "No\tthere is", "No,there is none.", "Answer:No", "No\u2026", "No\u00a0dog", "no-one", "No_way", "No2",
          "Definitely not!", "The answer is NO", "No\u3002", "Not at all"]


def test_the_parsers_differ_exactly_on_the_listed_answers() -> None:
    differ = [a for a, _ in OFFICIAL if yes_no(a, "official") != yes_no(a, "robust")]
    assert differ == DIFFER
    assert all(yes_no(a, "official") and not yes_no(a, "robust") for a in differ)  # always official yes


def test_unknown_parser() -> None:
    with pytest.raises(ValueError, match="unknown POPE parser 'lenient': use one of official, robust"):
        yes_no("yes", "lenient")


def test_pope_metrics_hand_example() -> None:
    predictions = [True, True, True, False, False]
    labels = [True, False, False, True, False]
    # TP = 1 (q1), FP = 2 (q2, q3), FN = 1 (q4), TN = 1 (q5)
    # accuracy = 2/5, precision = 1/3, recall = 1/2, f1 = 2 * (1/3)(1/2) / (1/3 + 1/2) = 2/5,
    # yes_ratio = 3/5
    assert pope_metrics(predictions, labels) == pytest.approx(
        {"accuracy": 0.4, "precision": 1 / 3, "recall": 0.5, "f1": 0.4, "yes_ratio": 0.6, "n": 5})


def test_pope_metrics_undefined_ratios_are_zero() -> None:
    # Never answering yes: precision is 0/0, and so recall and f1 are 0 too.
    assert pope_metrics([False, False], [True, False]) == {
        "accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0, "n": 2}
    assert pope_metrics([], [])["n"] == 0
    with pytest.raises(ValueError):
        pope_metrics([True], [])


# person in 3 images, dog in 2, cat / car / frisbee in 1, bus / tv in none.
OBJECTS = {
    "a.jpg": {"dog", "person", "frisbee"},
    "b.jpg": {"dog", "person"},
    "c.jpg": {"person", "car"},
    "d.jpg": {"cat"},
}
CATEGORIES = ["person", "dog", "cat", "car", "frisbee", "bus", "tv"]


def _negatives(questions: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for q in questions:
        if q["label"] == "no":
            out.setdefault(q["image"], []).append(q["object"])
    return out


def test_cooccurrence_counts() -> None:
    counts = cooccurrence_counts(OBJECTS)
    assert counts["person"] == {"dog": 2, "frisbee": 1, "car": 1}
    assert counts["frisbee"] == {"dog": 1, "person": 1}
    assert counts["cat"] == {}


def test_popular_picks_the_most_frequent_absent_categories() -> None:
    questions = sample_pope_questions(OBJECTS, CATEGORIES, "popular", 2, random.Random(0))
    assert _negatives(questions) == {
        "a.jpg": ["cat", "car"],  # cat, car have 1 image each, bus and tv none; ties in category order
        "b.jpg": ["cat", "car"],  # cat, car, frisbee tie at 1
        "c.jpg": ["dog", "cat"],  # dog (2) first
        "d.jpg": ["person"],  # d has one object, so one positive and one negative
    }


def test_adversarial_picks_what_co_occurs_with_the_present_objects() -> None:
    questions = sample_pope_questions(OBJECTS, CATEGORIES, "adversarial", 2, random.Random(0))
    assert _negatives(questions) == {
        "a.jpg": ["car", "cat"],  # car: person->car 1; the rest score 0, cat first of them
        "b.jpg": ["frisbee", "car"],  # frisbee: dog 1 + person 1 = 2; car: person 1
        "c.jpg": ["dog", "frisbee"],  # dog: person 2; frisbee: person 1
        "d.jpg": ["person"],  # cat co-occurs with nothing: category order
    }
    given = sample_pope_questions(OBJECTS, CATEGORIES, "adversarial", 1, random.Random(0),
                                  cooccurrence={"dog": {"tv": 5}})
    assert _negatives(given)["a.jpg"] == ["tv"]


def test_questions_are_well_formed_and_balanced() -> None:
    for strategy in ("random", "popular", "adversarial"):
        questions = sample_pope_questions(OBJECTS, CATEGORIES, strategy, 2, random.Random(1))
        assert [q["question_id"] for q in questions] == list(range(1, len(questions) + 1))
        assert len(questions) == 2 * (2 + 2 + 2 + 1)
        for q in questions:
            assert q["text"] == f"Is there a {q['object']} in the image?"
            present = q["object"] in OBJECTS[q["image"]]
            assert present == (q["label"] == "yes")
            assert q["object"] in CATEGORIES
        # Within an image, yes and no alternate.
        assert [q["label"] for q in questions[:4]] == ["yes", "no", "yes", "no"]


def test_random_is_uniform_over_absent_and_seeded() -> None:
    def run(seed: int) -> list[dict]:
        return sample_pope_questions(OBJECTS, CATEGORIES, "random", 1, random.Random(seed))

    assert run(3) == run(3)
    picked = {_negatives(run(seed))["d.jpg"][0] for seed in range(200)}
    assert picked == {"person", "dog", "car", "frisbee", "bus", "tv"}  # every absent category, no cat


def test_few_objects_and_few_absent_categories() -> None:
    objects = {"x.jpg": {"dog", "cat", "car"}, "empty.jpg": set()}
    questions = sample_pope_questions(objects, ["dog", "cat", "car", "bus"], "popular", 5, random.Random(0))
    labels = [q["label"] for q in questions]
    assert labels.count("yes") == 3 and labels.count("no") == 1  # only bus is absent
    assert {q["image"] for q in questions} == {"x.jpg"}  # no objects: no questions


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown POPE strategy"):
        sample_pope_questions(OBJECTS, CATEGORIES, "hard", 1, random.Random(0))
    with pytest.raises(ValueError, match="n_per_image"):
        sample_pope_questions(OBJECTS, CATEGORIES, "random", 0, random.Random(0))


def test_sampling_does_not_depend_on_string_hashing() -> None:
    # Sets of strings iterate in a per-process order; the sampler must not let that leak through.
    # The child skips csr/eval/__init__.py (it imports the model code) to start in a blink.
    code = (
        "import sys, types, csr; pkg = types.ModuleType('csr.eval'); "
        "pkg.__path__ = [csr.__path__[0] + '/eval']; sys.modules['csr.eval'] = pkg; "
        "import json, random; from csr.data.pope_questions import sample_pope_questions as s; "
        f"print(json.dumps([s({OBJECTS!r}, {CATEGORIES!r}, k, 2, random.Random(7)) "
        "for k in ('random', 'popular', 'adversarial')]))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1]


def test_load_pope_questions_fixture() -> None:
    questions = load_pope_questions(FIXTURES / "questions.jsonl")
    assert [q["label"] for q in questions] == ["yes", "yes", "yes", "no", "no", "no"]
    assert questions[0] == {"question_id": 1, "image": "COCO_val2014_000000000001.jpg",
                            "text": "Is there a dog in the image?", "label": "yes"}


def test_pope_from_files_fixture() -> None:
    # Answers read as yes, no, yes, no, yes, no against labels yes, yes, yes, no, no, no:
    # TP = 2 (q1, q3), FN = 1 (q2), TN = 2 (q4, q6), FP = 1 (q5)
    # accuracy = 4/6, precision = 2/3, recall = 2/3, f1 = 2/3, yes_ratio = 3/6
    metrics = pope_from_files(FIXTURES / "questions.jsonl", FIXTURES / "answers.jsonl")
    assert metrics == pytest.approx(
        {"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.5, "n": 6})


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


Q = {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([Q, "{oops"], r"q\.jsonl: line 2: invalid JSON"),
        ([Q, [1, 2]], r"q\.jsonl: line 2: expected a JSON object"),
        ([{**Q, "label": "maybe"}], r"q\.jsonl: line 1: label should be 'yes' or 'no'"),
        ([{k: v for k, v in Q.items() if k != "image"}], r"q\.jsonl: line 1: missing 'image'"),
        ([Q, Q], r"q\.jsonl: line 2: question_id 1 repeats line 1"),
        ([{**Q, "question_id": [1]}], r"q\.jsonl: line 1: question_id should be"),
    ],
)
def test_load_pope_questions_errors(tmp_path: Path, records: list, message: str) -> None:
    with pytest.raises(CSRError, match=message):
        load_pope_questions(_write(tmp_path / "q.jsonl", records))


def test_load_pope_questions_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CSRError, match=r"absent\.jsonl: file not found"):
        load_pope_questions(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([], r"a\.jsonl: no answer to 1 question\(s\) of .*q\.jsonl, e\.g\. question_id 1"),
        ([{"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "no"}], r"a\.jsonl: answers question_id 2"),
        ([{"question_id": 1, "text": "yes"}, {"question_id": 1, "text": "no"}], r"line 2: second answer"),
        ([{"question_id": 1, "score": 1}], r"a\.jsonl: line 1: needs a string 'text' or 'answer'"),
        ([{"text": "yes"}], r"a\.jsonl: line 1: missing 'question_id'"),
    ],
)
def test_pope_from_files_errors(tmp_path: Path, answers: list, message: str) -> None:
    questions = _write(tmp_path / "q.jsonl", [Q])
    with pytest.raises(CSRError, match=message):
        pope_from_files(questions, _write(tmp_path / "a.jsonl", answers))


def test_pope_from_files_parser(tmp_path: Path) -> None:
    # "NO!" is yes to the official rule, no to the robust one: one false positive more or less.
    q = _write(tmp_path / "q.jsonl", [Q, {**Q, "question_id": 2, "label": "no"}])
    a = _write(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Yes."}, {"question_id": 2, "text": "NO!"}])
    assert pope_from_files(q, a)["yes_ratio"] == 1.0
    assert pope_from_files(q, a, parser="robust") == pytest.approx(
        {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5, "n": 2})


def test_read_pope_questions_skip_counts_bad_lines(tmp_path: Path) -> None:
    lines = [Q, {**Q, "question_id": 3, "label": "maybe"}, {**Q, "question_id": 2}, Q, {k: v for k, v in Q.items() if k != "text"}]
    questions, skipped = read_pope_questions(_write(tmp_path / "q.jsonl", lines), "skip")
    assert [q["question_id"] for q in questions] == [1, 2]
    assert skipped == {"bad_record": 2, "duplicate_id": 1}
    with pytest.raises(CSRError, match=r"q\.jsonl: line 2: label should be 'yes' or 'no'"):
        read_pope_questions(tmp_path / "q.jsonl", "raise")


def test_csr_pope_scores_an_answers_file(capsys) -> None:
    from csr.eval.pope import main

    main([str(FIXTURES / "questions.jsonl"), str(FIXTURES / "answers.jsonl")])
    assert json.loads(capsys.readouterr().out) == pytest.approx(
        {"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.5, "n": 6})
    with pytest.raises(SystemExit) as info:
        main([str(FIXTURES / "questions.jsonl"), str(FIXTURES / "absent.jsonl")])
    assert info.value.code == 2 and "csr-pope: error: " in capsys.readouterr().err
