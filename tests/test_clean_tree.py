"""The reference rule's clean-up before ranking (`pairs.reference_clean`, csr/reward/rules/clean.py) held to the
authors' own code, and where each preset sets it."""

from __future__ import annotations

import pytest
from clean_tree_cases import LAM, TREES, tree_nodes
from compose_config import RUN, compose_config

from csr.config.choices import REFERENCE_CLEANS
from csr.config.schema import validate
from csr.config.upgrade import upgrade
from csr.pairs.build import make_pair
from csr.reward.answers import score_tree
from csr.reward.rules import pair_rule
from csr.reward.rules.clean import (
    HTML_SPACES,
    NEWLINES,
    OTHER_SCRIPT,
    REPETITION,
    SHORT_SENTENCE,
    authors_view,
    check_clean,
    drop_reason,
)
from csr.reward.stage import reward_stats
from csr.reward.tree import new_root, settle_step

# --------------------------------------------------------------------------- one sentence


@pytest.mark.parametrize(
    ("text", "clean_tree", "short"),
    [
        (" A star star star star is here.", None, None),  # four repeats: not six
        (" A star star star star star is here.", None, None),  # five
        (" A star star star star star star is here.", REPETITION, None),  # six
        (" Star star star star star star.", None, None),  # case matters: 'star' five times
        (" A dog, dog, dog, dog, dog, dog.", None, None),  # the words must be whitespace-separated
        (" Wow!!!!!!!!!!!", REPETITION, None),  # one character eleven times
        (" Wow!!!!!!!!!!", None, None),  # ten
        (" A . . . . . . . . . . .", REPETITION, None),  # eleven, whitespace between
        (" A ''''''''''.", REPETITION, None),  # ten single quotes
        (" Это звезда.", OTHER_SCRIPT, None),  # Cyrillic
        (" これは星です。", OTHER_SCRIPT, None),  # kana
        (" 별입니다.", OTHER_SCRIPT, None),  # Hangul
        (" 一颗红星。", None, None),  # Chinese is not on their list; '。' goes, 4 characters stay
        (" 一颗星。", SHORT_SENTENCE, None),  # 3 once '。' goes, 4 as written
        (" Ένα αστέρι.", None, None),  # nor is Greek
        (" A star 😀.", None, None),  # their emoji test: clean_text has removed the emoji already
        (" Red&nbsp;&nbsp;star.", HTML_SPACES, None),
        (" Red&nbsp;star.", None, None),
        (" A\n\n\n\n\n\nstar.", NEWLINES, None),  # six newlines
        (" A\n\n\n\n\nstar.", None, None),  # five
        (" -ok-.", SHORT_SENTENCE, None),  # clean_text drops hyphens: 'ok.'
        (" ★★ A.", SHORT_SENTENCE, None),  # and stars: ' A.'
        (" It.", SHORT_SENTENCE, SHORT_SENTENCE),
        (" Yes.", None, None),
        ("", SHORT_SENTENCE, SHORT_SENTENCE),
    ],
)
def test_drop_reason(text: str, clean_tree: str | None, short: str | None) -> None:
    assert drop_reason(text, "clean_tree") == clean_tree
    assert drop_reason(text, "short") == short


def test_authors_view_is_their_clean_text() -> None:
    # their character list writes `\"-(`: the range '"'..'(' keeps # $ % & ' and no hyphen
    assert authors_view("  A half-moon #1, 50% & 'so' @home ~ | `x` \\ é ünï £3 π.  ") == (
        "A halfmoon #1, 50% & 'so' home   x  é ünï £3 π.")  # their clean_text(text.strip()) gives the same
    assert authors_view(" A star 😀 ✓ ★.") == "A star   ."


def test_unknown_clean_up_is_refused() -> None:
    assert REFERENCE_CLEANS == ("clean_tree", "short")
    with pytest.raises(ValueError, match="unknown reference clean-up 'none'"):
        check_clean("none")
    with pytest.raises(ValueError, match="unknown reference clean-up 'none'"):
        score_tree([new_root()], 0.9, "rank", pair_rule("reference", "none"))


# --------------------------------------------------------------------------- whole trees, against the authors' code
#
# The trees and lam are in tests/clean_tree_cases.py.
#
# EXPECTED_PAIRS and EXPECTED_SCORES are the output of the authors' code, unchanged (YiyangZhou/CSR at
# 353de42, inference_csr/utils.py, score.py, construct.py), on these trees, made by
#   git clone https://github.com/YiyangZhou/CSR /tmp/csr_ref/CSR
#   pip install --target /tmp/csr_ref/site shortuuid    # utils.py imports it
#   PYTHONPATH=/tmp/csr_ref/site:/tmp/csr_ref/CSR/inference_csr OMP_NUM_THREADS=1 .venv/bin/python tests/authors_clean_tree.py \
#       /tmp/csr_ref/CSR/inference_csr /tmp/csr_ref/out
# which runs clean_tree, score.get_result and `python construct.py` as score.py and step3.sh do (how
# it builds their trees and stands in for CLIP: its docstring). csr runs with pairs=authors:
# reference_clean=clean_tree and no filter after scoring.


EXPECTED_PAIRS = {  # construct.py's (chosen, rejected)
    "repeat_four": (" A star star star star is here.", " A moon."),
    "repeat_six": (" A blue moon. It is small.", " A red star."),
    "cyrillic": (" A red star.", " A blue moon. It is small."),
    "scripts": (" 一颗红星。", " A red star 😀. It is small&nbsp;."),
    "characters": (" A dog, dog, dog, dog, dog, dog.", " A\n\n\n\n\nmoon."),
    "subtrees": (" A red star.", " A moon. It is small."),
}

EXPECTED_SCORES = {  # construct.dfs order: (answer, their cumulative score / len(path))
    "repeat_four": [(" A star star star star is here.", 0.16666666666666666), (" A red star.", 0.3333333333333333),
                    (" A moon.", 0.5)],
    "repeat_six": [(" A red star.", 0.5), (" A blue moon. It is small.", 0.35000000000000003),
                   (" A blue moon. It is big.", 0.48333333333333334)],
    "cyrillic": [(" A red star.", 0.25), (" A blue moon. It is small.", 0.65),
                 (" A blue moon. It is big.", 0.5166666666666667)],
    "scripts": [(" 一颗红星。", 0.18333333333333332), (" Ένα κόκκινο αστέρι.", 0.5),
                (" A red star 😀. It is small&nbsp;.", 0.5444444444444444)],
    "characters": [(" Wow!!!!!!!!!!", 0.36250000000000004),
                   (" Star star star star star star. It is red.", 0.39999999999999997),
                   (" Star star star star star star. It is blue.", 0.26666666666666666),
                   (" A dog, dog, dog, dog, dog, dog.", 0.2625), (" A\n\n\n\n\nmoon.", 0.5)],
    "subtrees": [(" A red star.", 0.18333333333333332), (" A moon. It is big.", 0.39444444444444443),
                 (" A moon. It is small.", 0.5277777777777778)],
}

# What csr's reference rule chose before the authors' clean-up (reference_clean=short, filters [empty,
# repetition], as ShapesWorld had them): a different pair on every tree, a Cyrillic answer chosen.
SHORT_PAIRS = {
    "repeat_four": (" A red star.", " A moon."),
    "repeat_six": (" A blue moon. It is small.", " A blue moon. It is big."),
    "cyrillic": (" Это красная звезда.", " A blue moon. It is small."),
    "scripts": (" これは赤い星です。", " A red star 😀. It is small&nbsp;."),
    "characters": (" -ok-.", " A\n\n\n\n\nmoon."),
    "subtrees": (" A red star.", " A ring. Кольцо."),
}


def _record(name: str, clean: str) -> dict:
    return {"id": name, "image": f"{name}.jpg", "prompt": "Describe the image.", "input": "<image>\nDescribe.",
            **score_tree(tree_nodes(TREES[name]), LAM, "rank", pair_rule("reference", clean))}


def _pair(record: dict, filters: list[str]) -> tuple[str, str]:
    pair, skip = make_pair(record, filters)
    assert skip is None and pair is not None
    return pair["chosen"], pair["rejected"]


@pytest.mark.parametrize("name", list(TREES))
def test_pairs_equal_the_authors_code(name: str) -> None:
    assert _pair(_record(name, "clean_tree"), []) == EXPECTED_PAIRS[name]


@pytest.mark.parametrize("name", list(TREES))
def test_scores_equal_the_authors_code_exactly(name: str) -> None:
    answers = _record(name, "clean_tree")["answers"]
    assert [(a["text"], a["score"]) for a in answers if a["score"] is not None] == EXPECTED_SCORES[name]


@pytest.mark.parametrize("name", list(TREES))
def test_short_drop_and_filters_pick_other_pairs(name: str) -> None:
    assert _pair(_record(name, "short"), ["empty", "repetition"]) == SHORT_PAIRS[name] != EXPECTED_PAIRS[name]


def test_ranks_come_from_the_remaining_siblings() -> None:
    record = _record("repeat_six", "clean_tree")
    assert record["reference_clean"] == "clean_tree"
    by_text = {a["text"]: a for a in record["answers"]}
    dropped = by_text[" A star star star star star star is here."]
    assert (dropped["score"], dropped["dropped"]) == (None, REPETITION)
    assert (dropped["sentences"][0]["rank"], dropped["sentences"][0]["reward"]) == (None, None)
    # two root siblings left: R_T -1 and -0.75, R_I 10 and 20 -> ranks (1, 1) and (1/2, 1/2)
    assert [(s["rank"], s["clip_rank"]) for s in by_text[" A red star."]["sentences"]] == [(1.0, 1.0)]
    assert by_text[" A blue moon. It is small."]["sentences"][0]["rank"] == 0.5
    # under `short` it ranks with them, as the third
    short = {a["text"]: a for a in _record("repeat_six", "short")["answers"]}
    assert short[" A red star."]["sentences"][0]["rank"] == pytest.approx(2 / 3)


def test_a_dropped_answer_names_its_first_dropped_sentence() -> None:
    answers = {a["text"]: a for a in _record("subtrees", "clean_tree")["answers"]}
    assert answers[" A star star star star star star. It is red."]["dropped"] == REPETITION
    assert answers[" A moon. Это маленькая луна."]["dropped"] == OTHER_SCRIPT
    assert answers[" A ring. Кольцо."]["dropped"] == OTHER_SCRIPT


def test_reward_stats_count_the_dropped_answers_by_reason() -> None:
    stats = reward_stats([_record(name, "clean_tree") for name in TREES], pair_rule("reference"))
    assert stats["answers_dropped"] == 15
    assert {k: v for k, v in stats.items() if k.startswith("answers_dropped/")} == {
        "answers_dropped/html_spaces": 1, "answers_dropped/newlines": 1, "answers_dropped/other_script": 6,
        "answers_dropped/repetition": 5, "answers_dropped/short_sentence": 2}


# --------------------------------------------------------------------------- the search prunes the same way


@pytest.mark.parametrize(("clean", "live"), [("clean_tree", [3, 4, 5]), ("short", [1, 4, 5])])
def test_the_search_never_keeps_a_sentence_the_clean_up_drops(clean: str, live: list[int]) -> None:
    # five open children of the root, in order on both scores; keep 1 best + 2 worst by the reference
    # path score: of all five under `short`, of the last three under `clean_tree`
    nodes = tree_nodes([
        (0, " Это звезда.", -0.25, 40.0, False),
        (0, " A star star star star star star.", -0.5, 35.0, False),
        (0, " A red star.", -1.0, 30.0, False),
        (0, " A blue moon.", -1.5, 20.0, False),
        (0, " A green ring.", -2.0, 10.0, False),
    ])
    for node in nodes[1:]:
        node.reward = None
    kept = settle_step(nodes, [1, 2, 3, 4, 5], lam=LAM, calibration="rank", prune_by="calibrated", beam_width=3,
                       keep_top=1, keep_bottom=2, max_sentences=5, rule=pair_rule("reference", clean))
    assert kept == live
    if clean == "clean_tree":
        assert (nodes[1].reward, nodes[2].reward) == (None, None)
        assert nodes[3].reward == pytest.approx(1 / 3)  # the best of the three that rank


# --------------------------------------------------------------------------- presets and saved configs


def test_presets() -> None:
    shapes = validate(compose_config(paths=[*RUN, "data.shapesworld.root=/sw", "eval.shapesworld.root=/sw"]))
    assert (shapes.pairs.rule, shapes.pairs.reference_clean, list(shapes.pairs.filters)) == (
        "reference", "clean_tree", ["empty", "repetition"])
    paths = [*RUN, "reward.clip.weights=/w", "data.prompt_file=/p.json", "data.image_root=/i"]
    for name in ("paper_llava15_7b", "paper_llava15_13b"):
        paper = validate(compose_config(f"experiment={name}", paths=paths))
        assert (paper.pairs.rule, paper.pairs.reference_clean, list(paper.pairs.filters)) == (
            "reference", "clean_tree", [])
    smoke = compose_config("experiment=smoke", paths=RUN)
    assert (smoke.pairs.rule, smoke.pairs.reference_clean) == ("mean", "clean_tree")


def test_a_saved_config_without_the_key_reads_as_before() -> None:
    assert upgrade({"pairs": {"rule": "reference"}})["pairs"]["reference_clean"] == "short"
    assert upgrade({"pairs": {"rule": "reference", "reference_clean": "clean_tree"}})["pairs"]["reference_clean"] == (
        "clean_tree")
