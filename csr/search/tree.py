"""The sentence tree of one prompt and the keep-best-and-worst pruning (pure bookkeeping).

Each node is one sentence; a complete answer is the path from the root to a final node.
Nodes are stored flat (id, parent) so the whole tree goes to JSONL as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from csr.reward.calibration import calibrate

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
    reward: float | None = None  # calibrated R within its sibling set
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


def mean_path_score(node: Node, by: str) -> float:
    """The running answer score a step prunes by: mean calibrated R (`calibrated`) or mean R_T (`lm`)."""
    total = node.path_reward if by == "calibrated" else node.path_r_t
    return total / node.depth


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


def score_siblings(siblings: Sequence[Node], lam: float, calibration: str) -> None:
    """Set the calibrated reward of one sibling set (all its R_I must be known)."""
    rewards = calibrate([n.r_t for n in siblings], [n.r_i for n in siblings], lam, calibration)
    for node, reward in zip(siblings, rewards, strict=True):
        node.reward = reward


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
) -> list[int]:
    """Score one step's children, mark finals, prune the rest; return the ids that live on.

    Children must already carry r_t (and r_i when pruning by the calibrated reward).
    """
    for siblings in siblings_by_parent(nodes, child_ids).values():
        if prune_by == "calibrated":
            score_siblings(siblings, lam, calibration)
        for node in siblings:
            parent = nodes[node.parent]
            node.path_r_t = parent.path_r_t + node.r_t
            node.path_reward = parent.path_reward + (node.reward or 0.0)
            if node.finish in (FINISH_EOS, FINISH_BUDGET):
                node.final = True
            elif node.depth >= max_sentences:
                node.final, node.finish = True, FINISH_SENTENCES
    open_ids = [i for i in child_ids if not nodes[i].final]
    scores = [mean_path_score(nodes[i], prune_by) for i in open_ids]
    live = [open_ids[k] for k in prune(scores, beam_width, keep_top, keep_bottom)]
    for i in live:
        nodes[i].kept = True
    return live
