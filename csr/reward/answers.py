"""A scored tree's complete answers under a pair rule: what rewards.jsonl keeps per prompt (pure).

The rule (csr/reward/rules) scores each sibling set and each answer and says in which order the
answers are listed. Under `mean` every sentence is calibrated, answers in node order, each scoring the
mean of its sentences' R (higher is better). Under `reference` the tree is first cleaned up
(`pairs.reference_clean`): an answer through a dropped sentence stays in the record with
`score: null` and `dropped` (the first dropped sentence's reason), and every sentence also keeps its
rank and clip_rank.
"""

from __future__ import annotations

from csr.reward.rules import PairRule
from csr.reward.tree import Node, dropped_subtrees, path_to, siblings_by_parent


def score_tree(nodes: list[Node], lam: float, calibration: str, rule: PairRule) -> dict:
    """The scored part of a reward record for one tree whose sentences all carry R_T and R_I."""
    dropped = dropped_subtrees(nodes, rule)
    fields: dict[int, dict] = {}
    # Sibling sets under a dropped sentence are never ranked: the cleaned tree no longer has them.
    scored_ids = [i for i in range(1, len(nodes)) if nodes[i].parent not in dropped]
    for siblings in siblings_by_parent(nodes, scored_ids).values():
        fields.update(rule.score_siblings(siblings, lam, calibration))
    for i in dropped:
        nodes[i].reward = None
    answers = []
    for final in (n for n in rule.answer_order(nodes) if n.final):
        path = path_to(nodes, final.id)
        answer = {
            "node": final.id,
            "text": "".join(n.text for n in path),  # exact generated characters
            "finish": final.finish,
            "sentences": [
                {"text": n.text, "r_t": n.r_t, "r_i": n.r_i, "reward": n.reward,
                 **{key: fields.get(n.id, {}).get(key) for key in rule.sentence_fields}}
                for n in path
            ],
        }
        reason = next((dropped[n.id] for n in path if n.id in dropped), None)
        if reason is not None:
            answer.update(score=None, dropped=reason)
        else:
            answer["score"] = rule.answer_score([n.reward for n in path])
        answers.append(answer)
    return {**rule.record_fields(), "answers": answers}
