"""The sentence tree of one prompt and the keep-best-and-worst pruning (pure bookkeeping).

Each node is one sentence; a complete answer is the path from the root to a final node.
Nodes are stored flat (id, parent) so the whole tree goes to JSONL as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rules import this module's Node and walks; it only calls them
    from csr.reward.rules import PairRule

ROOT = 0

# Why a sentence ended / a node became final.
FINISH_DELIMITER = "delimiter"  # the sentence delimiter token: more sentences may follow
FINISH_EOS = "eos"  # the model ended its answer
FINISH_TOKENS = "max_tokens_per_sentence"  # sentence cut at max_new_tokens_per_sentence
FINISH_BUDGET = "answer_budget"  # the answer reached max_answer_tokens
FINISH_SENTENCES = "max_sentences"  # the answer reached max_sentences


@dataclass
class Node:
    id: int
    parent: int  # -1 for the root
    depth: int  # number of sentences on the path, root = 0
    text: str = ""  # this sentence's exact characters (answer text = concatenation along the path)
    token_ids: list[int] = field(default_factory=list)
    r_t: float | None = None
    r_i: float | None = None
    # The pair rule's sentence reward within its sibling set (csr/reward/rules): the calibrated R
    # under `mean`; under `reference` the authors' (1-a) * rank + a * clip_rank, LOWER is better,
    # and None for a sentence that rule drops.
    reward: float | None = None
    path_reward: float = 0.0  # sum of `reward` from the root to here
    path_r_t: float = 0.0  # sum of `r_t` from the root to here
    answer_tokens: int = 0  # answer tokens from the root to here (never prompt or image tokens)
    finish: str | None = None
    final: bool = False
    kept: bool = False  # survived pruning and was expanded further

    def to_json(self) -> dict:
        return asdict(self)


def new_root() -> Node:
    return Node(id=ROOT, parent=-1, depth=0, kept=True)


def path_to(nodes: Sequence[Node], node_id: int) -> list[Node]:
    """Sentences from the first to `node_id` (root excluded). `nodes[i].id == i` is assumed."""
    path = []
    while node_id != ROOT:
        node = nodes[node_id]
        path.append(node)
        node_id = node.parent
    return path[::-1]


def depth_first(nodes: Sequence[Node]) -> list[Node]:
    """Every sentence in the order a depth-first walk from the root meets it, children in the order
    they were proposed (construct.py's order, which decides its ties). `nodes[i].id == i` is assumed."""
    children: dict[int, list[Node]] = {}
    for node in nodes[1:]:
        children.setdefault(node.parent, []).append(node)
    order: list[Node] = []
    stack = list(reversed(children.get(ROOT, [])))
    while stack:
        node = stack.pop()
        order.append(node)
        stack += reversed(children.get(node.id, []))
    return order


def dropped_subtrees(nodes: Sequence[Node], rule: PairRule) -> dict[int, str]:
    """Id -> why, for every sentence the rule's clean-up drops before ranking (csr/reward/rules/clean.py)
    and every sentence below one (which inherits its reason)."""
    dropped: dict[int, str] = {}
    for node in nodes[1:]:  # a parent's id is smaller than its children's
        reason = dropped.get(node.parent) or rule.drop_reason(node.text)
        if reason is not None:
            dropped[node.id] = reason
    return dropped


def mean_path_score(node: Node, by: str) -> float:
    """The running answer score a step prunes by: mean calibrated R (`calibrated`) or mean R_T (`lm`)."""
    total = node.path_reward if by == "calibrated" else node.path_r_t
    return total / node.depth


def prune_score(node: Node, by: str, rule: PairRule) -> float:
    """What `prune` ranks an open node by, higher is better: by the calibrated reward, the rule's
    running answer score (so the best kept are the ones it would choose and the worst kept the ones
    it would reject); by the LM score, the mean R_T under either rule."""
    if by == "calibrated":
        return rule.prune_score(node)
    return mean_path_score(node, by)


def prune(scores: Sequence[float], beam_width: int, keep_top: int, keep_bottom: int) -> list[int]:
    """Indices of the children that live on: the `keep_top` best and `keep_bottom` worst.

    With fewer than `beam_width` children everything is kept (reference behaviour). Keeping the
    worst on purpose is what later yields informative rejected answers. Ties are broken by position
    (the earlier child ranks higher), so the result is deterministic and the best and worst slots
    never take the same child.
    """
    n = len(scores)
    if n < beam_width:
        return list(range(n))
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    top = order[:keep_top]
    bottom = [i for i in order[::-1][:keep_bottom] if i not in top]
    return sorted(top + bottom)


def siblings_by_parent(nodes: Sequence[Node], ids: Sequence[int]) -> dict[int, list[Node]]:
    groups: dict[int, list[Node]] = {}
    for i in ids:
        groups.setdefault(nodes[i].parent, []).append(nodes[i])
    return groups


def settle_step(
    nodes: list[Node],
    child_ids: Sequence[int],
    *,
    lam: float,
    calibration: str,
    prune_by: str,
    beam_width: int,
    keep_top: int,
    keep_bottom: int,
    max_sentences: int,
    rule: PairRule,
) -> list[int]:
    """Score one step's children, mark finals, prune the rest; return the ids that live on.

    Children must already carry r_t (and r_i when pruning by the calibrated reward). With the
    calibrated reward, children are scored and pruned as the pair rule (`pairs.rule`) scores answers,
    and a sentence that rule drops before ranking has no reward and is never kept.
    """
    by_reward = prune_by == "calibrated"
    for siblings in siblings_by_parent(nodes, child_ids).values():
        if by_reward:
            rule.score_siblings(siblings, lam, calibration)
        for node in siblings:
            parent = nodes[node.parent]
            node.path_r_t = parent.path_r_t + node.r_t
            node.path_reward = parent.path_reward + (node.reward or 0.0)
            if node.finish in (FINISH_EOS, FINISH_BUDGET):
                node.final = True
            elif node.depth >= max_sentences:
                node.final, node.finish = True, FINISH_SENTENCES
    open_ids = [i for i in child_ids if not nodes[i].final]
    if by_reward:  # nothing below a sentence the rule dropped can become an answer
        open_ids = [i for i in open_ids if nodes[i].reward is not None]
    scores = [prune_score(nodes[i], prune_by, rule) for i in open_ids]
    live = [open_ids[k] for k in prune(scores, beam_width, keep_top, keep_bottom)]
    for i in live:
        nodes[i].kept = True
    return live
