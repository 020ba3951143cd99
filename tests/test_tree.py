"""The sentence tree: keep-best-and-worst pruning, paths, and one search step settled by hand."""

from __future__ import annotations

import json

import pytest

from csr.reward.answers import score_tree
from csr.reward.rules import pair_rule
from csr.reward.tree import (
    FINISH_BUDGET,
    FINISH_DELIMITER,
    FINISH_EOS,
    FINISH_SENTENCES,
    FINISH_TOKENS,
    ROOT,
    Node,
    depth_first,
    dropped_subtrees,
    mean_path_score,
    new_root,
    path_to,
    prune,
    prune_score,
    settle_step,
)

# --------------------------------------------------------------------------- prune


def test_prune_keeps_one_best_and_two_worst() -> None:
    # best 0.9 (index 1); worst 0.1 (index 0) and 0.3 (index 3)
    assert prune([0.1, 0.9, 0.5, 0.3, 0.7], beam_width=5, keep_top=1, keep_bottom=2) == [0, 1, 3]


@pytest.mark.parametrize(
    ("scores", "keep_top", "keep_bottom", "expected"),
    [
        # 7 children: best two 0.8 (4), 0.6 (2); worst 0.0 (6)
        ([0.2, 0.4, 0.6, 0.1, 0.8, 0.3, 0.0], 2, 1, [2, 4, 6]),
        # only the worst two: -3 (1), -2 (3)
        ([-1.0, -3.0, 0.5, -2.0, 0.0], 0, 2, [1, 3]),
        # only the best: 0.5 (2)
        ([-1.0, -3.0, 0.5, -2.0, 0.0], 1, 0, [2]),
        ([-1.0, -3.0, 0.5, -2.0, 0.0], 0, 0, []),
    ],
)
def test_prune_keeps_exactly_top_and_bottom(
    scores: list[float], keep_top: int, keep_bottom: int, expected: list[int]
) -> None:
    assert prune(scores, beam_width=5, keep_top=keep_top, keep_bottom=keep_bottom) == expected


@pytest.mark.parametrize("n", [0, 1, 3, 4])
def test_prune_keeps_all_when_fewer_than_beam_width(n: int) -> None:
    scores = [0.1 * i for i in range(n)]
    assert prune(scores, beam_width=5, keep_top=1, keep_bottom=2) == list(range(n))


def test_prune_at_exactly_beam_width_prunes() -> None:
    assert prune([0.4, 0.3, 0.2, 0.1], beam_width=4, keep_top=1, keep_bottom=1) == [0, 3]


def test_prune_tie_breaking_is_deterministic() -> None:
    # One total order (-score, index): all tied -> [0, 1, 2, 3, 4]. The best slot takes the earliest (0),
    # the worst slots take the end of the same order (4, 3), so top and bottom never overlap.
    scores = [0.5] * 5
    assert prune(scores, 5, 1, 2) == [0, 3, 4]
    assert prune(list(scores), 5, 1, 2) == [0, 3, 4]
    # tie for best between 0 and 1: the earlier child (0) is kept
    assert prune([0.9, 0.9, 0.1, 0.5, 0.3], 5, 1, 0) == [0]
    # tie for worst between 0 and 1: the order is (2, 3, 4, 0, 1), its last element (1) is the worst
    assert prune([0.1, 0.1, 0.9, 0.5, 0.3], 5, 0, 1) == [1]


@pytest.mark.parametrize(
    ("scores", "beam_width", "keep_top", "keep_bottom"),
    [
        ([0.3, 0.1, 0.2], 3, 2, 2),  # 2 + 2 > 3 children
        ([0.3, 0.1, 0.2], 3, 3, 3),
        ([0.5, 0.5], 2, 1, 1),  # 1 + 1 == 2 children, tied
        ([0.5, 0.5, 0.5], 1, 2, 2),
    ],
)
def test_prune_no_duplicates_when_top_and_bottom_cover_everything(
    scores: list[float], beam_width: int, keep_top: int, keep_bottom: int
) -> None:
    kept = prune(scores, beam_width, keep_top, keep_bottom)
    assert kept == list(range(len(scores)))


# --------------------------------------------------------------------------- Node, path_to, mean_path_score


def _chain() -> list[Node]:
    """root -> 1 -> 3 -> 4 and root -> 2."""
    return [
        new_root(),
        Node(id=1, parent=ROOT, depth=1, text=" A."),
        Node(id=2, parent=ROOT, depth=1, text=" B."),
        Node(id=3, parent=1, depth=2, text=" C."),
        Node(id=4, parent=3, depth=3, text=" D."),
    ]


def test_new_root() -> None:
    root = new_root()
    assert (root.id, root.parent, root.depth, root.kept, root.final) == (0, -1, 0, True, False)
    assert (root.path_reward, root.path_r_t, root.answer_tokens) == (0.0, 0.0, 0)


def test_path_to() -> None:
    nodes = _chain()
    assert [n.id for n in path_to(nodes, 4)] == [1, 3, 4]
    assert "".join(n.text for n in path_to(nodes, 4)) == " A. C. D."
    assert [n.id for n in path_to(nodes, 2)] == [2]
    assert path_to(nodes, ROOT) == []


@pytest.mark.parametrize(("by", "expected"), [("calibrated", 1.5 / 2), ("lm", -3.0 / 2)])
def test_mean_path_score(by: str, expected: float) -> None:
    node = Node(id=3, parent=1, depth=2, path_reward=1.5, path_r_t=-3.0)
    assert mean_path_score(node, by) == pytest.approx(expected)


def test_node_to_json_round_trips() -> None:
    node = Node(
        id=7, parent=3, depth=2, text=" A cat é.", token_ids=[5, 6, 7], r_t=-1.25, r_i=31.5, reward=0.4,
        path_reward=0.9, path_r_t=-2.5, answer_tokens=12, finish=FINISH_EOS, final=True, kept=False,
    )
    data = node.to_json()
    assert data["token_ids"] == [5, 6, 7] and data["finish"] == "eos"
    assert Node(**data) == node
    assert Node(**json.loads(json.dumps(data))) == node  # through real JSON text too
    assert Node(**new_root().to_json()) == new_root()


# --------------------------------------------------------------------------- settle_step


def _step_one(finishes: list[str]) -> list[Node]:
    """Five children of the root.

    r_t [-1, -2, -3, -4, -5] -> rank [1, .8, .6, .4, .2]
    r_i [10, 50, 40, 20, 30] -> rank [.2, 1, .8, .4, .6]
    lam 0.9: R = .9 r_i + .1 r_t = [.18+.1, .9+.08, .72+.06, .36+.04, .54+.02] = [.28, .98, .78, .40, .56]
    """
    r_t = [-1.0, -2.0, -3.0, -4.0, -5.0]
    r_i = [10.0, 50.0, 40.0, 20.0, 30.0]
    children = [
        Node(id=k + 1, parent=ROOT, depth=1, text=f" S{k}.", r_t=r_t[k], r_i=r_i[k], finish=finishes[k])
        for k in range(5)
    ]
    return [new_root(), *children]


STEP_ONE_REWARDS = [0.28, 0.98, 0.78, 0.40, 0.56]


def test_settle_step_first_step() -> None:
    finishes = [FINISH_DELIMITER, FINISH_EOS, FINISH_TOKENS, FINISH_DELIMITER, FINISH_BUDGET]
    nodes = _step_one(finishes)
    live = settle_step(
        nodes, [1, 2, 3, 4, 5], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=3, keep_top=1, keep_bottom=1, max_sentences=4, rule=pair_rule("mean"),
    )
    # Rewards are calibrated over all five siblings, finals included.
    assert [n.reward for n in nodes[1:]] == pytest.approx(STEP_ONE_REWARDS)
    # Root sums are 0, so path sums are the node's own values.
    assert [n.path_reward for n in nodes[1:]] == pytest.approx(STEP_ONE_REWARDS)
    assert [n.path_r_t for n in nodes[1:]] == pytest.approx([-1.0, -2.0, -3.0, -4.0, -5.0])
    # eos and answer_budget are final and keep their reason; a cut sentence is not final.
    assert [n.final for n in nodes[1:]] == [False, True, False, False, True]
    assert [n.finish for n in nodes[1:]] == finishes
    # Open: 1 (.28), 3 (.78), 4 (.40) -> best 3, worst 1; node 2 (.98, final) does not compete.
    assert live == [1, 3]
    assert [n.kept for n in nodes] == [True, True, False, True, False, False]


def test_settle_step_keeps_all_open_children_below_beam_width() -> None:
    nodes = _step_one([FINISH_DELIMITER, FINISH_EOS, FINISH_TOKENS, FINISH_DELIMITER, FINISH_BUDGET])
    # Paper defaults: 5 children but only 3 are open, fewer than beam_width 5 -> all open ones live.
    live = settle_step(
        nodes, [1, 2, 3, 4, 5], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=5, keep_top=1, keep_bottom=2, max_sentences=8, rule=pair_rule("mean"),
    )
    assert live == [1, 3, 4]
    assert [n.kept for n in nodes[1:]] == [True, False, True, True, False]


def test_settle_step_all_open_paper_pruning() -> None:
    nodes = _step_one([FINISH_DELIMITER] * 5)
    live = settle_step(
        nodes, [1, 2, 3, 4, 5], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=5, keep_top=1, keep_bottom=2, max_sentences=8, rule=pair_rule("mean"),
    )
    # R [.28, .98, .78, .40, .56]: best node 2, worst nodes 1 (.28) and 4 (.40)
    assert live == [1, 2, 4]
    assert not any(n.final for n in nodes[1:])


def _step_two(finishes: list[str]) -> list[Node]:
    """Two kept parents with two children each (all depth 2).

    parent 1: path_reward .5, path_r_t -1;  parent 2: path_reward .25, path_r_t -2
    siblings of 1: nodes 3, 4: r_t [-1, -3] -> rank [1, .5]; r_i [10, 30] -> rank [.5, 1]
        lam .9: R3 = .45 + .1 = .55, R4 = .9 + .05 = .95
    siblings of 2: nodes 5, 6: r_t [-2, -.5] -> rank [.5, 1]; r_i [40, 20] -> rank [1, .5]
        lam .9: R5 = .9 + .05 = .95, R6 = .45 + .1 = .55
    (Ranked over all four at once, r_i would give [.25, .75, 1, .5]: the sets must be separate.)
    """
    return [
        new_root(),
        Node(id=1, parent=ROOT, depth=1, r_t=-1.0, r_i=5.0, reward=0.5, path_reward=0.5, path_r_t=-1.0, kept=True),
        Node(id=2, parent=ROOT, depth=1, r_t=-2.0, r_i=6.0, reward=0.25, path_reward=0.25, path_r_t=-2.0,
             kept=True),
        Node(id=3, parent=1, depth=2, r_t=-1.0, r_i=10.0, finish=finishes[0]),
        Node(id=4, parent=1, depth=2, r_t=-3.0, r_i=30.0, finish=finishes[1]),
        Node(id=5, parent=2, depth=2, r_t=-2.0, r_i=40.0, finish=finishes[2]),
        Node(id=6, parent=2, depth=2, r_t=-0.5, r_i=20.0, finish=finishes[3]),
    ]


def test_settle_step_second_step_calibrated() -> None:
    nodes = _step_two([FINISH_DELIMITER] * 4)
    live = settle_step(
        nodes, [3, 4, 5, 6], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=4, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule("mean"),
    )
    assert [n.reward for n in nodes[3:]] == pytest.approx([0.55, 0.95, 0.95, 0.55])
    # parent sum + own: .5 + .55, .5 + .95, .25 + .95, .25 + .55
    assert [n.path_reward for n in nodes[3:]] == pytest.approx([1.05, 1.45, 1.2, 0.8])
    # -1 - 1, -1 - 3, -2 - 2, -2 - .5
    assert [n.path_r_t for n in nodes[3:]] == pytest.approx([-2.0, -4.0, -4.0, -2.5])
    # mean over 2 sentences: [.525, .725, .6, .4] -> best node 4, worst node 6
    assert live == [4, 6]
    assert [n.kept for n in nodes[3:]] == [False, True, False, True]
    assert not any(n.final for n in nodes[3:])


def test_settle_step_second_step_lm() -> None:
    nodes = _step_two([FINISH_DELIMITER] * 4)
    live = settle_step(
        nodes, [3, 4, 5, 6], lam=0.9, calibration="rank", prune_by="lm",
        beam_width=4, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule("mean"),
    )
    # Pruning by the LM score leaves the calibrated reward to the reward stage.
    assert [n.reward for n in nodes[3:]] == [None] * 4
    assert [n.path_reward for n in nodes[3:]] == pytest.approx([0.5, 0.5, 0.25, 0.25])
    # mean R_T over 2 sentences: [-1, -2, -2, -1.25]; order (-score, i): 3, 6, 4, 5
    # -> best node 3, worst the last of that order, node 5 (tied with 4 at -2)
    assert live == [3, 5]


def test_settle_step_lm_needs_no_image_score() -> None:
    nodes = _step_two([FINISH_DELIMITER] * 4)
    for n in nodes[3:]:
        n.r_i = None
    live = settle_step(
        nodes, [3, 4, 5, 6], lam=0.9, calibration="rank", prune_by="lm",
        beam_width=4, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule("mean"),
    )
    assert live == [3, 5]


def test_settle_step_max_sentences_makes_everything_final() -> None:
    finishes = [FINISH_EOS, FINISH_DELIMITER, FINISH_TOKENS, FINISH_BUDGET]
    nodes = _step_two(finishes)
    live = settle_step(
        nodes, [3, 4, 5, 6], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=4, keep_top=1, keep_bottom=1, max_sentences=2, rule=pair_rule("mean"),
    )
    assert live == []
    assert all(n.final for n in nodes[3:])
    # eos / answer_budget keep their reason; the others are cut by the sentence cap.
    assert [n.finish for n in nodes[3:]] == [FINISH_EOS, FINISH_SENTENCES, FINISH_SENTENCES, FINISH_BUDGET]
    assert not any(n.kept for n in nodes[3:])
    # Finals are still scored: their answers compete for chosen/rejected later.
    assert [n.reward for n in nodes[3:]] == pytest.approx([0.55, 0.95, 0.95, 0.55])
    assert [n.path_reward for n in nodes[3:]] == pytest.approx([1.05, 1.45, 1.2, 0.8])


def test_settle_step_no_children() -> None:
    nodes = [new_root()]
    live = settle_step(
        nodes, [], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=5, keep_top=1, keep_bottom=2, max_sentences=8, rule=pair_rule("mean"),
    )
    assert live == []


# --------------------------------------------------------------------------- pairs.rule=reference in the search
#
# With the calibrated reward the search must prune as the authors' pair rule scores answers: their
# ranks (lower is better), sum / (sentences + 1), their short-sentence drop.


def test_depth_first_is_construct_py_order() -> None:
    nodes = _chain()  # root -> 1 -> 3 -> 4 and root -> 2
    assert [n.id for n in depth_first(nodes)] == [1, 3, 4, 2]
    assert depth_first([new_root()]) == []


def test_short_subtrees() -> None:
    nodes = [
        new_root(),
        Node(id=1, parent=ROOT, depth=1, text=" It."),  # 3 characters: dropped
        Node(id=2, parent=ROOT, depth=1, text=" Yes."),  # 4: kept
        Node(id=3, parent=1, depth=2, text=" A long sentence."),  # below a dropped one
        Node(id=4, parent=2, depth=2, text="  No. "),  # 3 once stripped
        Node(id=5, parent=2, depth=2, text=" A cat."),
    ]
    assert set(dropped_subtrees(nodes, pair_rule("reference"))) == {1, 3, 4}
    assert set(dropped_subtrees(nodes, pair_rule("reference", "short"))) == {1, 3, 4}


@pytest.mark.parametrize(
    ("by", "rule", "expected"),
    [
        ("calibrated", "mean", 0.9 / 2),
        ("calibrated", "reference", -0.9 / 3),  # the root counts; negated: lower is better
        ("lm", "mean", -3.0 / 2),
        ("lm", "reference", -3.0 / 2),  # pruning by R_T is the authors' search: no rule in it
    ],
)
def test_prune_score(by: str, rule: str, expected: float) -> None:
    node = Node(id=3, parent=1, depth=2, path_reward=0.9, path_r_t=-3.0)
    assert prune_score(node, by, pair_rule(rule)) == pytest.approx(expected)


def test_settle_step_reference_drops_short_sentences() -> None:
    nodes = _step_one([FINISH_DELIMITER] * 5)  # " S0." ... " S4.": 3 characters each
    live = settle_step(
        nodes, [1, 2, 3, 4, 5], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=5, keep_top=1, keep_bottom=2, max_sentences=8, rule=pair_rule("reference"),
    )
    assert live == []
    assert [n.reward for n in nodes[1:]] == [None] * 5


def test_settle_step_reference_first_step() -> None:
    nodes = _step_one([FINISH_DELIMITER] * 5)
    for node in nodes[1:]:
        node.text = f" Sentence{node.id}."
    live = settle_step(
        nodes, [1, 2, 3, 4, 5], lam=0.9, calibration="zscore", prune_by="calibrated",
        beam_width=5, keep_top=1, keep_bottom=2, max_sentences=8, rule=pair_rule("reference"),
    )
    # rank by r_t [-1..-5] descending: [.2, .4, .6, .8, 1]; r_i [10, 50, 40, 20, 30]: [1, .2, .4, .8, .6]
    # value .1 rank + .9 clip_rank: [.92, .22, .42, .80, .64] (`calibration` plays no part)
    assert [n.reward for n in nodes[1:]] == pytest.approx([0.92, 0.22, 0.42, 0.80, 0.64])
    assert [n.path_reward for n in nodes[1:]] == pytest.approx([0.92, 0.22, 0.42, 0.80, 0.64])
    # lowest is best: node 2 (.22) is the top slot; the worst are 1 (.92) and 4 (.80).
    # Read the wrong way round the kept set would be [1, 2, 3].
    assert live == [1, 2, 4]


def _step_two_reference() -> list[Node]:
    """Parents 1 (path value .25) and 2 (.75); three children under 1, two plus a short one under 2.

    siblings of 1: nodes 3, 4, 5: r_t [-1, -2, -3] -> rank [1/3, 2/3, 1]; r_i [10, 30, 20] -> [1, 1/3, 2/3]
        values .1 rank + .9 clip_rank: [.9333, .3667, .7]
    siblings of 2: node 8 (" It.") is dropped, so n = 2: nodes 6, 7: r_t [-1, -2] -> [.5, 1];
        r_i [5, 25] -> [1, .5]; values [.95, .55]
    """
    return [
        new_root(),
        Node(id=1, parent=ROOT, depth=1, text=" A one.", r_t=-1.0, r_i=5.0, reward=0.25, path_reward=0.25, kept=True),
        Node(id=2, parent=ROOT, depth=1, text=" B two.", r_t=-2.0, r_i=6.0, reward=0.75, path_reward=0.75, kept=True),
        Node(id=3, parent=1, depth=2, text=" Three.", r_t=-1.0, r_i=10.0, finish=FINISH_DELIMITER),
        Node(id=4, parent=1, depth=2, text=" Four.", r_t=-2.0, r_i=30.0, finish=FINISH_DELIMITER),
        Node(id=5, parent=1, depth=2, text=" Five.", r_t=-3.0, r_i=20.0, finish=FINISH_DELIMITER),
        Node(id=6, parent=2, depth=2, text=" Six.", r_t=-1.0, r_i=5.0, finish=FINISH_DELIMITER),
        Node(id=7, parent=2, depth=2, text=" Seven.", r_t=-2.0, r_i=25.0, finish=FINISH_DELIMITER),
        Node(id=8, parent=2, depth=2, text=" It.", r_t=-0.5, r_i=50.0, finish=FINISH_DELIMITER),
    ]


def test_settle_step_reference_sibling_sets_of_different_sizes_and_a_short_sentence() -> None:
    nodes = _step_two_reference()
    live = settle_step(
        nodes, [3, 4, 5, 6, 7, 8], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=4, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule("reference"),
    )
    assert [n.reward for n in nodes[3:8]] == pytest.approx([0.1 / 3 + 0.9, 0.2 / 3 + 0.3, 0.7, 0.95, 0.55])
    assert nodes[8].reward is None
    # / (2 sentences + 1): [1.1833, .6167, .95, 1.7, 1.3] / 3 -> best node 4 (.206), worst node 6 (.567)
    assert [n.path_reward for n in nodes[3:8]] == pytest.approx([1.25 - 0.2 / 3, 0.25 + 0.2 / 3 + 0.3, 0.95, 1.7, 1.3])
    assert live == [4, 6]
    assert [n.kept for n in nodes[3:]] == [False, True, False, True, False, False]


def test_settle_step_reference_short_sentences_do_not_count_for_the_beam() -> None:
    nodes = _step_two_reference()
    # 6 children, 5 of them ranked: below beam_width 6 every ranked open child lives; " It." never does.
    live = settle_step(
        nodes, [3, 4, 5, 6, 7, 8], lam=0.9, calibration="rank", prune_by="calibrated",
        beam_width=6, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule("reference"),
    )
    assert live == [3, 4, 5, 6, 7]


def test_settle_step_reference_values_are_the_reward_stages() -> None:
    # Same calibration in the search and in the pair rule: the reward stage recomputes every value the
    # search pruned by and finds the same numbers.
    nodes = _step_two_reference()
    nodes[1].reward, nodes[2].reward = None, None
    settle_step(nodes, [1, 2], lam=0.9, calibration="rank", prune_by="calibrated",
                beam_width=5, keep_top=1, keep_bottom=2, max_sentences=5, rule=pair_rule("reference"))
    settle_step(nodes, [3, 4, 5, 6, 7, 8], lam=0.9, calibration="rank", prune_by="calibrated",
                beam_width=5, keep_top=1, keep_bottom=2, max_sentences=2, rule=pair_rule("reference"))
    searched = [n.reward for n in nodes]
    assert all(n.final for n in nodes[3:])
    record = score_tree(nodes, 0.9, "rank", pair_rule("reference"))
    assert [n.reward for n in nodes] == searched
    for answer in record["answers"]:
        path = path_to(nodes, answer["node"])
        assert [s["reward"] for s in answer["sentences"]] == [n.reward for n in path]
        if answer["score"] is not None:
            assert answer["score"] == pytest.approx(-prune_score(nodes[answer["node"]], "calibrated", pair_rule("reference")))


def test_settle_step_reference_lm_pruning_is_unchanged() -> None:
    for rule in ("mean", "reference"):
        nodes = _step_two([FINISH_DELIMITER] * 4)
        live = settle_step(
            nodes, [3, 4, 5, 6], lam=0.9, calibration="rank", prune_by="lm",
            beam_width=4, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule(rule),
        )
        assert live == [3, 5]
        assert [n.reward for n in nodes[3:]] == [None] * 4


def test_settle_step_unknown_rule_raises() -> None:
    with pytest.raises(ValueError, match="unknown pair rule 'median'"):
        settle_step(_step_two([FINISH_DELIMITER] * 4), [3, 4, 5, 6], lam=0.9, calibration="rank",
                    prune_by="calibrated", beam_width=4, keep_top=1, keep_bottom=1, max_sentences=5, rule=pair_rule("median"))
