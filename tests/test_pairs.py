"""Answer scores, chosen/rejected selection under both pair rules, filters, and the pairs stage's files and stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clean_tree_cases import tree_nodes

from csr.config.choices import PAIR_FILTERS as FILTERS
from csr.config.choices import PAIR_RULES as RULES
from csr.pairs.build import build_pairs, make_pair, to_llava, to_trl
from csr.pairs.filters import failed_filter
from csr.reward.answers import score_tree
from csr.reward.rules import pair_rule
from csr.reward.rules.base import SKIP_IDENTICAL, SKIP_NAN, SKIP_TIED, SKIP_TOO_FEW, Choice
from csr.reward.rules.clean import MIN_SENTENCE_CHARS, too_short
from csr.reward.rules.mean import Answer, answer_score, select_pair
from csr.reward.rules.reference import reference_path_score, reference_sentence_value, select_reference

# --------------------------------------------------------------------------- answer_score


@pytest.mark.parametrize(
    ("rewards", "expected"),
    [
        ([0.2, 0.4, 0.9], (0.2 + 0.4 + 0.9) / 3),  # 0.5
        ([0.7], 0.7),
        ([-1.0, 3.0], 1.0),
    ],
)
def test_answer_score_is_mean_sentence_reward(rewards: list[float], expected: float) -> None:
    assert answer_score(rewards) == pytest.approx(expected)
    assert Answer(text="x", sentence_rewards=tuple(rewards)).score == pytest.approx(expected)


def test_answer_score_empty_raises() -> None:
    with pytest.raises(ValueError, match="at least one sentence"):
        answer_score([])


# --------------------------------------------------------------------------- select_pair


def test_select_pair_best_and_worst() -> None:
    assert select_pair([0.1, 0.9, 0.5], [" a.", " b.", " c."]) == Choice(chosen=1, rejected=0)


def test_select_pair_ties_resolve_to_earliest() -> None:
    # best 0.9 at 0 and 2 -> 0; worst 0.1 at 1 and 3 -> 1
    assert select_pair([0.9, 0.1, 0.9, 0.1], ["a", "b", "c", "d"]) == Choice(chosen=0, rejected=1)


@pytest.mark.parametrize(
    ("scores", "texts", "reason"),
    [
        ([], [], SKIP_TOO_FEW),
        ([0.5], ["a"], SKIP_TOO_FEW),
        ([float("nan")], ["a"], SKIP_TOO_FEW),  # counted before the NaN check
        ([0.5, 0.5], ["a", "b"], SKIP_TIED),
        ([0.3, 0.3, 0.3], ["a", "b", "c"], SKIP_TIED),
        ([0.9, 0.1], [" A cat.", "A cat.  "], SKIP_IDENTICAL),  # equal after strip
        ([0.9, 0.5, 0.1], ["A cat.", "A dog.", "\nA cat."], SKIP_IDENTICAL),
        ([0.1, float("nan")], ["a", "b"], SKIP_NAN),
        ([float("nan"), float("nan")], ["a", "b"], SKIP_NAN),
    ],
)
def test_select_pair_skips(scores: list[float], texts: list[str], reason: str) -> None:
    assert select_pair(scores, texts) == Choice(chosen=None, rejected=None, skip=reason)


def test_skip_reason_names() -> None:
    assert (SKIP_TOO_FEW, SKIP_TIED, SKIP_IDENTICAL, SKIP_NAN) == (
        "fewer_than_2_answers", "tied_scores", "chosen_equals_rejected", "nan_score",
    )


# --------------------------------------------------------------------------- failed_filter


@pytest.mark.parametrize(
    ("text", "filters", "expected"),
    [
        ("", ["empty"], "empty"),
        ("  \n\t", ["empty"], "empty"),
        (" A cat sits on a mat.", ["empty"], None),
        (" the the the the cat.", ["repetition"], "repetition"),  # same word 4 times
        (" The the THE the cat.", ["repetition"], "repetition"),  # case-insensitive
        (" the the the cat.", ["repetition"], None),  # 3 times is fine
        (" the then the there.", ["repetition"], None),  # whole words only
        (" z" + "z" * 9 + ".", ["repetition"], "repetition"),  # 10 of the same character in a row
        (" " + "z" * 9 + ".", ["repetition"], None),  # 9 in a row
        (" Z" + "z" * 9 + ".", ["repetition"], None),  # case matters for characters: 9 'z' after 'Z'
        (" " + "!" * 12, ["repetition"], "repetition"),
        (" A cat 猫.", ["non_latin"], "non_latin"),
        (" Ein Kätzchen, naïve — “quoted” café.", ["non_latin"], None),  # Latin-1/Ext-A + punctuation
        (" Кошка.", ["non_latin"], "non_latin"),
        (" A cat 猫.", ["empty", "repetition"], None),  # non_latin not asked for
        ("", [], None),
        ("", ["repetition", "non_latin", "empty"], "empty"),
        # the first failing filter in the given order is the reason
        (" the the the the 猫", ["non_latin", "repetition"], "non_latin"),
        (" the the the the 猫", ["repetition", "non_latin"], "repetition"),
    ],
)
def test_failed_filter(text: str, filters: list[str], expected: str | None) -> None:
    assert failed_filter(text, filters) == expected


def test_failed_filter_unknown_filter_raises() -> None:
    with pytest.raises(ValueError, match="unknown pair filter 'profanity'"):
        failed_filter(" A cat.", ["empty", "profanity"])
    assert FILTERS == ("empty", "repetition", "non_latin")


# --------------------------------------------------------------------------- make_pair / build_pairs


def _sentence(text: str, r_t: float, r_i: float, reward: float) -> dict:
    return {"text": text, "r_t": r_t, "r_i": r_i, "reward": reward}


def _answer(node: int, sentences: list[dict], score: float, finish: str = "eos") -> dict:
    return {"node": node, "text": "".join(s["text"] for s in sentences), "finish": finish,
            "sentences": sentences, "score": score}


def _record(rid: str, answers: list[dict], **extra: str) -> dict:
    return {"id": rid, "image": f"coco/{rid}.jpg", "prompt": "Describe the image.",
            "input": "Describe the image.\n<image>", "answers": answers, **extra}


RECORDS = [
    # a: pair; chosen node 1 (.8), rejected node 2 (.3), margin .5
    _record("a", [
        _answer(1, [_sentence(" A cat sits on a mat.", -1.0, 30.0, 0.8)], 0.8),
        _answer(2, [_sentence(" A dog.", -2.0, 10.0, 0.2), _sentence(" It runs.", -1.5, 20.0, 0.4)], 0.3),
        _answer(3, [_sentence(" A cat.", -0.5, 25.0, 0.6)], 0.6),
    ]),
    _record("b", [  # tied
        _answer(1, [_sentence(" A bus.", -1.0, 20.0, 0.5)], 0.5),
        _answer(2, [_sentence(" A van.", -1.0, 20.0, 0.5)], 0.5),
    ]),
    _record("c", [], skipped="missing_image"),  # skipped by an earlier stage
    _record("d", [  # the repetitive answer is filtered, one answer left
        _answer(1, [_sentence(" the the the the dog.", -0.1, 50.0, 0.9)], 0.9),
        _answer(2, [_sentence(" A dog.", -1.0, 20.0, 0.4)], 0.4),
    ]),
    _record("e", [  # same text after strip
        _answer(1, [_sentence(" A tree.", -1.0, 20.0, 0.7)], 0.7),
        _answer(2, [_sentence("A tree. ", -2.0, 10.0, 0.1)], 0.1),
    ]),
    # f: the empty answer (.95) is filtered; chosen node 1 (.9), rejected node 2 (.1), margin .8
    _record("f", [
        _answer(3, [_sentence("", -0.1, 0.0, 0.95)], 0.95),
        _answer(1, [_sentence(" Two birds.", -0.8, 40.0, 0.9)], 0.9),
        _answer(2, [_sentence(" A red car.", -1.2, 5.0, 0.1)], 0.1),
    ]),
]

FILTERS_ON = ["empty", "repetition"]


def _write_rewards(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "rewards.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_make_pair_keeps_every_score() -> None:
    pair, skip = make_pair(RECORDS[0], FILTERS_ON)
    assert skip is None
    assert pair is not None
    assert {k: pair[k] for k in ("id", "image", "prompt", "input", "chosen", "rejected")} == {
        "id": "a", "image": "coco/a.jpg", "prompt": "Describe the image.",
        "input": "Describe the image.\n<image>", "chosen": " A cat sits on a mat.", "rejected": " A dog. It runs.",
    }
    assert (pair["chosen_score"], pair["rejected_score"]) == (0.8, 0.3)
    assert pair["margin"] == pytest.approx(0.8 - 0.3)
    assert pair["chosen_sentences"] == RECORDS[0]["answers"][0]["sentences"]
    assert pair["rejected_sentences"] == RECORDS[0]["answers"][1]["sentences"]
    assert (pair["n_answers"], pair["n_filtered"]) == (3, 0)


@pytest.mark.parametrize(
    ("index", "filters", "reason"),
    [
        (1, FILTERS_ON, SKIP_TIED),
        (2, FILTERS_ON, "missing_image"),
        (3, FILTERS_ON, SKIP_TOO_FEW),
        (4, FILTERS_ON, SKIP_IDENTICAL),
    ],
)
def test_make_pair_skips(index: int, filters: list[str], reason: str) -> None:
    assert make_pair(RECORDS[index], filters) == (None, reason)


def test_make_pair_filters_change_the_choice() -> None:
    # Without filters the repetitive answer in "d" survives and becomes chosen.
    pair, _ = make_pair(RECORDS[3], [])
    assert pair is not None and pair["chosen"] == " the the the the dog." and pair["n_filtered"] == 0
    # In "f" the empty answer would be chosen; filtered, node 1 is.
    pair, _ = make_pair(RECORDS[5], FILTERS_ON)
    assert pair is not None and pair["chosen"] == " Two birds." and pair["rejected"] == " A red car."
    assert (pair["n_answers"], pair["n_filtered"]) == (3, 1)


def test_build_pairs_jsonl_and_stats(tmp_path: Path) -> None:
    rewards = _write_rewards(tmp_path, RECORDS)
    out = tmp_path / "out"
    stats = build_pairs(rewards, out, FILTERS_ON, str(tmp_path / "images"), export_llava=False, export_trl=False)

    pairs = _read_jsonl(out / "pairs.jsonl")
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("a", " A cat sits on a mat.", " A dog. It runs."),
        ("f", " Two birds.", " A red car."),
    ]
    assert [p["margin"] for p in pairs] == pytest.approx([0.5, 0.8])
    assert not (out / "pairs_llava.json").exists()
    assert not (out / "pairs_trl.jsonl").exists()

    assert stats["prompts"] == 6
    assert stats["pairs"] == 2
    assert stats["skipped"] == 4
    assert {k: v for k, v in stats.items() if k.startswith("skipped/")} == {
        "skipped/chosen_equals_rejected": 1,
        "skipped/fewer_than_2_answers": 1,
        "skipped/missing_image": 1,
        "skipped/tied_scores": 1,
    }
    # answer scores: chosen (.8 + .9) / 2, rejected (.3 + .1) / 2, margin (.5 + .8) / 2
    assert stats["chosen/score"] == pytest.approx(0.85)
    assert stats["rejected/score"] == pytest.approx(0.2)
    assert stats["margin"] == pytest.approx(0.65)
    # sentence means over all sentences of that side: chosen a [30], f [40]; rejected a [10, 20], f [5]
    assert stats["chosen/r_i"] == pytest.approx((30 + 40) / 2)
    assert stats["rejected/r_i"] == pytest.approx((10 + 20 + 5) / 3)
    assert stats["chosen/r_t"] == pytest.approx((-1.0 - 0.8) / 2)
    assert stats["rejected/r_t"] == pytest.approx((-2.0 - 1.5 - 1.2) / 3)
    assert stats["chosen/reward"] == pytest.approx((0.8 + 0.9) / 2)
    assert stats["rejected/reward"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)


def test_build_pairs_sentence_stats_skip_missing_values(tmp_path: Path) -> None:
    record = _record("x", [
        _answer(1, [_sentence(" A.", -1.0, 30.0, 0.8), {"text": " B.", "r_t": -3.0, "r_i": None, "reward": 0.6}],
                0.7),
        _answer(2, [_sentence(" C.", -2.0, 10.0, 0.1)], 0.1),
    ])
    stats = build_pairs(_write_rewards(tmp_path, [record]), tmp_path, [], str(tmp_path), False, False)
    assert stats["chosen/r_i"] == pytest.approx(30.0)  # the None is left out, not counted as 0
    assert stats["chosen/r_t"] == pytest.approx(-2.0)  # (-1 - 3) / 2


def test_build_pairs_no_pairs(tmp_path: Path) -> None:
    stats = build_pairs(_write_rewards(tmp_path, RECORDS[1:3]), tmp_path / "out", FILTERS_ON, str(tmp_path),
                        export_llava=True, export_trl=True)
    assert (tmp_path / "out" / "pairs.jsonl").read_text() == ""
    assert json.loads((tmp_path / "out" / "pairs_llava.json").read_text()) == []
    assert (stats["prompts"], stats["pairs"], stats["skipped"]) == (2, 0, 2)
    assert stats["chosen/score"] is None and stats["margin"] is None and stats["rejected/r_i"] is None


def test_build_pairs_llava_export(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_pairs(_write_rewards(tmp_path, RECORDS), out, FILTERS_ON, str(tmp_path / "images"),
                export_llava=True, export_trl=False)
    llava = json.loads((out / "pairs_llava.json").read_text(encoding="utf-8"))
    human = {"from": "human", "value": "Describe the image.\n<image>"}  # the raw input, not a chat template
    assert llava[0] == {
        "id": "a",
        "image": "coco/a.jpg",
        "conversations": [human, {"from": "gpt", "value": "A cat sits on a mat."}],
        "rejected_conversations": [human, {"from": "gpt", "value": "A dog. It runs."}],
    }
    assert [e["id"] for e in llava] == ["a", "f"]
    assert "USER" not in llava[0]["conversations"][0]["value"]


def test_build_pairs_trl_export(tmp_path: Path) -> None:
    out = tmp_path / "out"
    image_root = tmp_path / "images"
    build_pairs(_write_rewards(tmp_path, RECORDS), out, FILTERS_ON, str(image_root),
                export_llava=False, export_trl=True)
    trl = _read_jsonl(out / "pairs_trl.jsonl")
    assert trl[0] == {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A cat sits on a mat."}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A dog. It runs."}]}],
        "images": [str(image_root.resolve() / "coco" / "a.jpg")],
    }
    assert Path(trl[1]["images"][0]).is_absolute()
    assert len(trl) == 2


def test_exports_from_a_pair_directly(tmp_path: Path) -> None:
    pair = {"id": "z", "image": "z.jpg", "prompt": "What is this?", "input": "<image>\nWhat is this?",
            "chosen": "  A lamp.\n", "rejected": " A chair. "}
    assert to_llava(pair)["conversations"] == [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A lamp."},
    ]
    assert to_llava(pair)["rejected_conversations"][1] == {"from": "gpt", "value": "A chair."}
    trl = to_trl(pair, str(tmp_path))
    assert trl["prompt"][0]["content"][1] == {"type": "text", "text": "What is this?"}
    assert trl["images"] == [str(tmp_path.resolve() / "z.jpg")]


# --------------------------------------------------------------------------- the reference rule's pieces


@pytest.mark.parametrize(
    ("text", "short"),
    [
        (" It.", True),  # 3 characters once stripped
        (" Yes.", False),  # 4: kept, the boundary
        ("  Ok. \n", True),  # surrounding whitespace never counts
        (" A b.", False),  # inner spaces do
        ("", True),
        (" A red star.", False),
    ],
)
def test_too_short(text: str, short: bool) -> None:
    assert too_short(text) is short
    assert MIN_SENTENCE_CHARS == 4


def test_reference_path_score_counts_the_root() -> None:
    # The root is on the authors' path, adds nothing and counts: / (sentences + 1).
    assert reference_path_score([0.6]) == pytest.approx(0.3)
    assert reference_path_score([0.2, 0.4, 0.9]) == pytest.approx(1.5 / 4)
    with pytest.raises(ValueError, match="at least one sentence"):
        reference_path_score([])


def test_reference_sentence_value() -> None:
    assert reference_sentence_value(1 / 3, 1.0, 0.9) == pytest.approx(0.1 / 3 + 0.9)
    assert reference_sentence_value(0.5, 0.25, 0.0) == 0.5  # a = 0: R_T's rank alone
    assert reference_sentence_value(0.5, 0.25, 1.0) == 0.25  # a = 1: R_I's rank alone


def test_select_reference_first_and_last_of_a_stable_ascending_sort() -> None:
    assert select_reference([0.1, 0.9, 0.5], [" a.", " b.", " c."]) == Choice(chosen=0, rejected=1)
    # ties: chosen = the earliest of the lowest, rejected = the LATEST of the highest
    assert select_reference([0.9, 0.1, 0.9, 0.1], ["a", "b", "c", "d"]) == Choice(chosen=1, rejected=2)
    # everything tied still pairs first against last, as construct.py does
    assert select_reference([0.5, 0.5, 0.5], ["a", "b", "c"]) == Choice(chosen=0, rejected=2)


@pytest.mark.parametrize(
    ("scores", "texts", "reason"),
    [
        ([], [], SKIP_TOO_FEW),
        ([0.5], ["a"], SKIP_TOO_FEW),  # the authors' code would pair the answer with itself
        ([0.1, 0.9], [" A cat.", "A cat. "], SKIP_IDENTICAL),
        ([0.1, float("nan")], ["a", "b"], SKIP_NAN),
    ],
)
def test_select_reference_skips(scores: list[float], texts: list[str], reason: str) -> None:
    assert select_reference(scores, texts) == Choice(chosen=None, rejected=None, skip=reason)


def test_rules_dispatch_and_margin() -> None:
    assert RULES == ("mean", "reference")
    assert pair_rule("mean").choose([0.1, 0.9], ["a", "b"]) == Choice(chosen=1, rejected=0)
    assert pair_rule("reference").choose([0.1, 0.9], ["a", "b"]) == Choice(chosen=0, rejected=1)
    assert pair_rule("mean").margin(0.9, 0.1) == pytest.approx(0.8)
    assert pair_rule("reference").margin(0.1, 0.9) == pytest.approx(0.8)  # lower is better: still positive
    with pytest.raises(ValueError, match="unknown pair rule 'median'"):
        pair_rule("median").choose([0.1, 0.9], ["a", "b"])


# --------------------------------------------------------------------------- hand-built trees, both rules
#
# Each node: (parent, sentence, R_T, R_I, final); ids 1.. in order, the root is 0. The reward stage's
# scoring (score_tree) and the pairs stage's choice (make_pair) run on each tree under both rules.
#
# `reference` expectations come from the authors' own code: YiyangZhou/CSR inference_csr/utils.py,
# score.py and construct.py, unmodified, run in a scratch directory outside this repository on these
# trees (their Node texts cumulative, child = parent + "###" + sentence, so that their 3-character cut
# leaves exactly our sentence and their 4-character test measures what ours does; Node.score
# cumulative as sample.py writes it; CLIP replaced by a table of these R_I; score.get_result then
# construct.process_data). REFERENCE_SCORES are the path scores their construct.dfs gave, in its
# depth-first order, and ours must equal them exactly. Where their code pairs one answer with itself
# we skip the prompt instead (see csr/reward/rules/reference.py).

TREES = {
    # sibling sets of 3, 2 and 4, answers of depth 1 and 2
    "sizes": (0.9, [
        (0, " A red star.", -1.0, 30.0, True),
        (0, " A blue moon.", -0.5, 20.0, False),
        (0, " A green ring.", -2.0, 25.0, False),
        (2, " It is small.", -1.0, 22.0, True),
        (2, " It is large.", -1.5, 28.0, True),
        (3, " A cross.", -0.25, 10.0, True),
        (3, " A heart.", -0.75, 35.0, True),
        (3, " A hexagon.", -1.25, 15.0, True),
        (3, " An arrow.", -1.75, 5.0, True),
    ]),
    # answers of 1, 2 and 3 sentences: the + 1 of the divisor decides
    "depths": (0.9, [
        (0, " A star.", -0.5, 30.0, False),
        (0, " A moon.", -1.0, 20.0, True),
        (0, " A ring.", -1.5, 10.0, True),
        (1, " It is red.", -0.5, 25.0, False),
        (1, " It is blue.", -1.0, 15.0, True),
        (4, " It is big.", -0.5, 12.0, True),
        (4, " It is small.", -1.0, 18.0, True),
    ]),
    # R_T and R_I tied within both sibling sets; two answers tie for worst, and the depth-first order
    # (1-3, 1-4, 2) is not the node order (2, 3, 4)
    "ties": (0.5, [
        (0, " A star.", -1.0, 0.0, False),
        (0, " A moon.", -1.0, 0.0, True),
        (1, " It is red.", -1.0, 20.0, True),
        (1, " It is blue.", -1.0, 20.0, True),
    ]),
    # two tied siblings: csr's ranks share the tie, the authors' give the earlier one the better rank
    "sibling_ties": (0.5, [
        (0, " A star.", -1.0, 20.0, True),
        (0, " A moon.", -1.0, 20.0, True),
    ]),
    # one complete answer; the other branches were pruned without finishing
    "single": (0.9, [
        (0, " A star.", -1.0, 20.0, True),
        (0, " A moon.", -2.0, 10.0, False),
        (0, " A ring.", -3.0, 5.0, False),
        (2, " It is blue.", -1.0, 10.0, False),
    ]),
    # " It." (3 characters) is dropped with the answer below it; " Yes." (4) stays
    "short": (0.9, [
        (0, " A star.", -1.0, 30.0, True),
        (0, " It.", -0.25, 40.0, False),
        (0, " A moon.", -2.0, 10.0, True),
        (0, " Yes.", -1.5, 20.0, True),
        (2, " It is a big red star.", -0.5, 35.0, True),
    ]),
    # the drop leaves one answer
    "short_one": (0.9, [
        (0, " A star.", -1.0, 30.0, True),
        (0, " No.", -2.0, 10.0, True),
    ]),
}

# (chosen, rejected) or the skip reason. Worked by hand (lam 0.9 unless the tree says 0.5):
# mean, "sizes": ranks best = 1; root R = [.967, .4, .633], {4,5} R = [.55, .95], {6..9} R =
#   [.55, .975, .725, .25]; answers 1: .967, 2-4: .475, 2-5: .675, 3-6: .592, 3-7: .804, 3-8: .679,
#   3-9: .442 -> chosen 1, rejected 3-9.
# reference, "sizes": root values [.367, .933, .7], {4,5} [.95, .55], {6..9} [.7, .275, .525, 1];
#   / (sentences + 1): 1: .183, 2-4: .628, 2-5: .494, 3-6: .467, 3-7: .325, 3-8: .408, 3-9: .567
#   -> chosen 1, rejected 2-4 (the rules disagree on rejected).
# mean, "depths": 2: .667, 3: .333, 1-5: .75, 1-4-6: .85, 1-4-7: .983 -> chosen 1-4-7, rejected 3.
# reference, "depths": values root [1/3, 2/3, 1], {4,5} [.5, 1], {6,7} [.95, .55]; 1-4-6: 1.783/4 =
#   .446, 1-4-7: 1.383/4 = .346, 1-5: .444, 2: .333, 3: .5 -> chosen 2 (over sentences alone 1-4-7
#   would win), rejected 3.
# "ties", lam .5: mean ranks share ties, every R is .75 -> tied. Reference: the earlier sibling ranks
#   1/2, the later 1: 1-3: (.5 + .5)/3 = 1/3, 1-4: 1.5/3 = .5, 2: 1/2 = .5 -> chosen 1-3, rejected
#   the later of the two .5 in depth-first order, 2 (in node order it would be 1-4).
# "sibling_ties", lam .5: mean .75 / .75 -> tied; reference .5/2 = .25 against 1/2 -> a pair.
# "short": mean keeps " It." (R 1, and 1 for its only child): the answer through it scores 1 and is
#   chosen, " A moon." (.25) rejected. Reference ranks 1, 3, 4 among three: .167, .5, .333 ->
#   chosen " A star.", rejected " A moon.".
# "short_one": mean pairs 1.0 against .5; reference keeps one answer -> skipped.
EXPECTED = {
    "mean": {
        "sizes": (" A red star.", " A green ring. An arrow."),
        "depths": (" A star. It is red. It is small.", " A ring."),
        "ties": SKIP_TIED,
        "sibling_ties": SKIP_TIED,
        "single": SKIP_TOO_FEW,
        "short": (" It. It is a big red star.", " A moon."),
        "short_one": (" A star.", " No."),
    },
    "reference": {  # construct.py's chosen / rejected
        "sizes": (" A red star.", " A blue moon. It is small."),
        "depths": (" A moon.", " A ring."),
        "ties": (" A star. It is red.", " A moon."),
        "sibling_ties": (" A star.", " A moon."),
        "single": SKIP_TOO_FEW,  # theirs: " A star." against itself
        "short": (" A star.", " A moon."),
        "short_one": SKIP_TOO_FEW,  # theirs: " A star." against itself
    },
}

REFERENCE_SCORES = {  # construct.dfs order: (answer, their cumulative score / len(path))
    "sizes": [(" A red star.", 0.18333333333333332), (" A blue moon. It is small.", 0.6277777777777778),
              (" A blue moon. It is large.", 0.49444444444444446), (" A green ring. A cross.", 0.4666666666666666),
              (" A green ring. A heart.", 0.325), (" A green ring. A hexagon.", 0.4083333333333334),
              (" A green ring. An arrow.", 0.5666666666666667)],
    "depths": [(" A star. It is red. It is big.", 0.4458333333333333),
               (" A star. It is red. It is small.", 0.3458333333333333), (" A star. It is blue.", 0.4444444444444444),
               (" A moon.", 0.3333333333333333), (" A ring.", 0.5)],
    "ties": [(" A star. It is red.", 0.3333333333333333), (" A star. It is blue.", 0.5), (" A moon.", 0.5)],
    "sibling_ties": [(" A star.", 0.25), (" A moon.", 0.5)],
    "single": [(" A star.", 0.16666666666666666)],
    "short": [(" A star.", 0.16666666666666666), (" A moon.", 0.5), (" Yes.", 0.3333333333333333)],
    "short_one": [(" A star.", 0.5)],
}


def _tree_record(name: str, rule: str) -> dict:
    lam, spec = TREES[name]
    return {"id": name, "image": f"{name}.jpg", "prompt": "Describe the image.", "input": "<image>\nDescribe.",
            **score_tree(tree_nodes(spec), lam, "rank", pair_rule(rule))}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", list(TREES))
def test_hand_built_trees(rule: str, name: str) -> None:
    pair, skip = make_pair(_tree_record(name, rule), [])
    expected = EXPECTED[rule][name]
    if isinstance(expected, str):
        assert (pair, skip) == (None, expected)
    else:
        assert pair is not None and skip is None
        assert (pair["chosen"], pair["rejected"]) == expected
        assert pair["margin"] >= 0


def test_the_rules_disagree() -> None:
    differ = [name for name in TREES if EXPECTED["mean"][name] != EXPECTED["reference"][name]]
    assert differ == ["sizes", "depths", "ties", "sibling_ties", "short", "short_one"]


@pytest.mark.parametrize("name", list(TREES))
def test_reference_scores_equal_the_authors_code_exactly(name: str) -> None:
    answers = _tree_record(name, "reference")["answers"]
    kept = [(a["text"], a["score"]) for a in answers if a["score"] is not None]
    assert kept == REFERENCE_SCORES[name]  # same order, same floats


def test_reference_record_keeps_ranks_and_the_dropped_answer() -> None:
    record = _tree_record("short", "reference")
    assert record["rule"] == "reference"
    by_text = {a["text"]: a for a in record["answers"]}
    dropped = by_text[" It. It is a big red star."]
    assert (dropped["score"], dropped["dropped"]) == (None, "short_sentence")
    assert [(s["rank"], s["clip_rank"], s["reward"]) for s in dropped["sentences"]] == [(None, None, None)] * 2
    # the three kept siblings rank among themselves: R_T -1, -2, -1.5 and R_I 30, 10, 20
    moon = by_text[" A moon."]["sentences"][0]
    assert (moon["rank"], moon["clip_rank"]) == (1.0, 1.0)
    yes = by_text[" Yes."]["sentences"][0]
    assert (yes["rank"], yes["clip_rank"]) == pytest.approx((2 / 3, 2 / 3))
    assert yes["reward"] == pytest.approx(2 / 3)
    pair, _ = make_pair(record, [])
    assert pair is not None
    assert (pair["chosen_score"], pair["rejected_score"]) == (1 / 6, 0.5)
    assert pair["margin"] == pytest.approx(0.5 - 1 / 6)
    assert (pair["n_answers"], pair["n_filtered"]) == (4, 1)  # the dropped answer is not a candidate


def test_mean_record_has_no_reference_fields() -> None:
    record = _tree_record("short", "mean")
    assert "rule" not in record
    assert set(record["answers"][0]) == {"node", "text", "finish", "sentences", "score"}
    assert set(record["answers"][0]["sentences"][0]) == {"text", "r_t", "r_i", "reward"}
