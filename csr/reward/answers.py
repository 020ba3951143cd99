"""A scored tree's complete answers under a pair rule: what rewards.jsonl keeps per prompt (pure).

`mean`: every sibling set calibrated with `reward.calibration`, answers in node order, each scoring
the mean of its sentences' R (higher is better). `reference` (csr.pairs.rules): the authors' ranks
per sibling set after their clean-up of the tree (`pairs.reference_clean`, csr/pairs/clean.py), answers
in their depth-first order, each scoring sum / (sentences + 1) (lower is better); every sentence also
keeps its rank and clip_rank, and an answer through a dropped sentence stays in the record with
`score: null` and `dropped` (the first dropped sentence's reason).
"""

from __future__ import annotations

from csr.pairs.clean import check_clean
from csr.pairs.rules import check_rule, reference_path_score
from csr.pairs.select import answer_score
from csr.reward.tree import (
    Node,
    depth_first,
    dropped_subtrees,
    path_to,
    score_siblings,
    score_siblings_reference,
    siblings_by_parent,
)


def scored_answers(nodes: list[Node]) -> list[dict]:
    """Every complete answer (root to a final node) with its per-sentence scores and answer score."""
    answers = []
    for final in (n for n in nodes if n.final):
        path = path_to(nodes, final.id)
        rewards = [n.reward for n in path]
        answers.append({
            "node": final.id,
            "text": "".join(n.text for n in path),  # exact generated characters
            "finish": final.finish,
            "sentences": [{"text": n.text, "r_t": n.r_t, "r_i": n.r_i, "reward": n.reward} for n in path],
            "score": answer_score(rewards),
        })
    return answers


def reference_answers(nodes: list[Node], ranks: dict[int, tuple[float, float]], dropped: dict[int, str]) -> list[dict]:
    """The answers in construct.py's depth-first order, scored by the authors' path score."""
    answers = []
    for final in (n for n in depth_first(nodes) if n.final):
        path = path_to(nodes, final.id)
        answer = {
            "node": final.id,
            "text": "".join(n.text for n in path),
            "finish": final.finish,
            "sentences": [
                {"text": n.text, "r_t": n.r_t, "r_i": n.r_i, "reward": n.reward,
                 "rank": ranks[n.id][0] if n.id in ranks else None,
                 "clip_rank": ranks[n.id][1] if n.id in ranks else None}
                for n in path
            ],
        }
        reason = next((dropped[n.id] for n in path if n.id in dropped), None)
        if reason is not None:
            answer.update(score=None, dropped=reason)
        else:
            answer["score"] = reference_path_score([n.reward for n in path])
        answers.append(answer)
    return answers


def score_tree(nodes: list[Node], lam: float, calibration: str, rule: str, clean: str = "clean_tree") -> dict:
    """The scored part of a reward record for one tree whose sentences all carry R_T and R_I.

    `clean` (pairs.reference_clean) is what the reference rule drops before ranking; `mean` drops nothing.
    """
    check_clean(clean)
    if check_rule(rule) == "mean":
        for siblings in siblings_by_parent(nodes, range(1, len(nodes))).values():
            score_siblings(siblings, lam, calibration)
        return {"answers": scored_answers(nodes)}
    dropped = dropped_subtrees(nodes, clean)
    ranks: dict[int, tuple[float, float]] = {}
    # Sibling sets under a dropped sentence are never ranked: the authors' tree no longer has them.
    ranked_ids = [i for i in range(1, len(nodes)) if nodes[i].parent not in dropped]
    for siblings in siblings_by_parent(nodes, ranked_ids).values():
        ranks.update(score_siblings_reference(siblings, lam, clean))
    for i in dropped:
        nodes[i].reward = None
    return {"rule": rule, "reference_clean": clean, "answers": reference_answers(nodes, ranks, dropped)}
