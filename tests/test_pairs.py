"""Answer scores, chosen/rejected selection, filters, and the pairs stage's files and stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr.pairs.build import build_pairs, make_pair, to_llava, to_trl
from csr.pairs.select import (
    FILTERS,
    SKIP_IDENTICAL,
    SKIP_NAN,
    SKIP_TIED,
    SKIP_TOO_FEW,
    Answer,
    Choice,
    answer_score,
    failed_filter,
    select_pair,
)

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
