"""What the inspector shows, computed from a run directory's files: plain dicts, no HTML.

Everything derived here reuses the functions the run itself used: sibling ranks and calibrated R
from `csr.reward.calibration`, skip reasons from `csr.pairs.build.make_pair`, CHAIR from
`csr.eval.chair` with the ShapesWorld synonym table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from csr.core.io import read_json, read_jsonl
from csr.eval.chair import caption_report, chair_scores
from csr.pairs.build import make_pair
from csr.reward.calibration import calibrate, rank_normalise
from csr.reward.tree import Node, mean_path_score

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,80}")


def prompt_key(prompt_id: str) -> str:
    """A file-name-safe key for a prompt id (the id itself when it already is one)."""
    prompt_id = str(prompt_id)  # a crafted run may hold ids of any JSON type
    if _SAFE_KEY.fullmatch(prompt_id):
        return prompt_id
    return "h" + hashlib.sha1(prompt_id.encode()).hexdigest()[:16]


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


# -- one search tree -------------------------------------------------------------------------------

def path_ids(nodes: Sequence[dict], node_id: int) -> list[int]:
    """Node ids from the first sentence to `node_id` (root excluded)."""
    ids = []
    while node_id > 0:
        ids.append(node_id)
        node_id = nodes[node_id]["parent"]
    return ids[::-1]


def sibling_ranks(nodes: Sequence[dict], lam: float, calibration: str) -> dict[int, dict]:
    """Per node, the ranks its sibling set gave it (what the calibration used) and R recomputed.

    Ranks are `rank_normalise` values in (0, 1], best = 1; a set with an unscored R_I gets R_T ranks only.
    norm_t / norm_i are the values the configured calibration mixed (the ranks again for `rank`).
    """
    groups: dict[int, list[dict]] = {}
    for node in nodes[1:]:
        groups.setdefault(node["parent"], []).append(node)
    out: dict[int, dict] = {}
    for siblings in groups.values():
        r_t = [s["r_t"] for s in siblings]
        r_i = [s["r_i"] for s in siblings]
        if any(v is None for v in r_t):
            continue
        rank_t = rank_normalise(r_t)
        scored = all(v is not None for v in r_i)
        rank_i = rank_normalise(r_i) if scored else [None] * len(siblings)
        none = [None] * len(siblings)
        r_check = calibrate(r_t, r_i, lam, calibration) if scored else none
        # lam = 0 / 1 leaves exactly the normalised R_T / R_I the calibration mixed
        norm_t = calibrate(r_t, r_i, 0.0, calibration) if scored else none
        norm_i = calibrate(r_t, r_i, 1.0, calibration) if scored else none
        for s, *values in zip(siblings, rank_t, rank_i, r_check, norm_t, norm_i, strict=True):
            out[s["id"]] = dict(zip(("rank_t", "rank_i", "r_check", "norm_t", "norm_i"), values, strict=True))
    return out


def _status(node: dict) -> str:
    if node["final"]:
        return "final"
    return "kept" if node["kept"] else "pruned"


def _find_answer(answers: Sequence[dict], text: str, score: float) -> dict | None:
    """The scored answer a pair side came from: same text, the same score when several match."""
    same = [a for a in answers if a["text"] == text]
    exact = [a for a in same if a["score"] == score]
    return (exact or same or [None])[0]


def tree_view(search: dict, reward: dict | None, pair: dict | None, settings: dict,
              truth: set[str] | None, synonyms: dict[str, str] | None) -> dict:
    """Every node with its scores, status, sibling ranks and (ground truth known) hallucinations;
    the chosen and rejected paths; every complete answer. settings: lam, calibration, prune_by."""
    nodes = [dict(n) for n in search["nodes"]]
    answers = (reward or {}).get("answers", [])
    for answer in answers:  # the reward stage scored sentences a search pruned by R_T alone
        for node_id, sentence in zip(path_ids(nodes, answer["node"]), answer["sentences"], strict=True):
            nodes[node_id]["r_i"], nodes[node_id]["reward"] = sentence["r_i"], sentence["reward"]
    # csr's calibration; the authors' rule stores its own ranks as R, which calibrate() does not recompute
    ranks = {} if settings.get("lower_is_better") else sibling_ranks(nodes, settings["lam"], settings["calibration"])
    view_nodes = []
    for n in nodes:
        item = {"id": n["id"], "parent": n["parent"], "depth": n["depth"], "text": n["text"],
                "r_t": n["r_t"], "r_i": n["r_i"], "r": n["reward"], "finish": n["finish"],
                "status": "root" if n["parent"] < 0 else _status(n), "tokens": len(n.get("token_ids") or []),
                **ranks.get(n["id"], {})}
        if n["parent"] >= 0:  # what pruning compared, as the search computed it
            item["path_score"] = mean_path_score(Node(**search["nodes"][n["id"]]), settings["prune_by"])
        if truth is not None and n["parent"] >= 0:
            item["halluc"] = caption_report(n["text"], truth, synonyms)["hallucinated"]
        view_nodes.append(item)
    finals = []
    for a in answers:
        entry = {"node": a["node"], "score": a["score"], "finish": a["finish"], "text": a["text"]}
        if truth is not None:
            entry["halluc"] = caption_report(a["text"], truth, synonyms)["hallucinated"]
        finals.append(entry)
    paths = {}
    if pair is not None:
        for side in ("chosen", "rejected"):
            found = _find_answer(answers, pair[side], pair[f"{side}_score"])
            paths[side] = path_ids(nodes, found["node"]) if found else []
    # best first; under the authors' rule (pairs.rule=reference) a lower score is better, and an
    # answer through a dropped sentence has none
    sign = 1 if settings.get("lower_is_better") else -1
    finals.sort(key=lambda a: (a["score"] is None, sign * (a["score"] or 0.0)))
    return {"nodes": view_nodes, "answers": finals, "paths": paths}


# -- one prompt's row in an iteration's list ----------------------------------------------------------

def pair_side(pair: dict, side: str, truth: set[str] | None, synonyms: dict[str, str] | None) -> dict:
    out = {"score": pair[f"{side}_score"], "r_i": _mean([s["r_i"] for s in pair[f"{side}_sentences"]]),
           "text": pair[side], "sentences": pair[f"{side}_sentences"]}
    if truth is not None:
        out["chair_s"] = chair_scores([pair[side]], [truth], synonyms)["chair_s"]
        out["halluc"] = caption_report(pair[side], truth, synonyms)["hallucinated"]
    return out


def skip_reason(search: dict, reward: dict | None, pair: dict | None, filters: Sequence[str]) -> str | None:
    """Why a prompt has no pair: the search's or reward's skip, else the pair rule's (as the run decided)."""
    if pair is not None:
        return None
    if "skipped" in search:
        return search["skipped"]
    if reward is None:
        return "not_scored"
    return make_pair(reward, filters)[1] or "no_pair"


def prompt_row(search: dict, reward: dict | None, pair: dict | None, skipped: str | None,
               truth: set[str] | None, synonyms: dict[str, str] | None) -> dict:
    row = {"key": prompt_key(search["id"]), "id": search["id"], "prompt": search["prompt"], "image": search["image"],
           "skipped": skipped,
           "nodes": len(search.get("nodes", [])), "answers": len((reward or {}).get("answers", []))}
    if pair is not None:
        row["margin"] = pair["margin"]
        for side in ("chosen", "rejected"):
            s = pair_side(pair, side, truth, synonyms)
            row.update({f"{side}_{k}": s[k] for k in ("score", "r_i", "chair_s", "halluc") if k in s})
    return row


# -- a whole iteration ------------------------------------------------------------------------------

def _by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)} if path.exists() else {}


def ref_logps(path: Path) -> dict[str, dict]:
    """The DPO stage's reference log-probs per pair (either layout it has written), or nothing."""
    if not path.exists():
        return {}
    data = read_json(path)
    items = data.get("pairs", []) if isinstance(data, dict) else data
    return {p["id"]: {"chosen": p["chosen"], "rejected": p["rejected"]} for p in items}


def iteration(iter_dir: Path, settings: dict, filters: Sequence[str],
              truth: dict[str, set[str]] | None, synonyms: dict[str, str] | None) -> tuple[list[dict], dict[str, dict]]:
    """(list rows, prompt id -> that prompt's detail) of one iteration's search, reward and pairs."""
    searches = read_jsonl(iter_dir / "search.jsonl")
    rewards, pairs = _by_id(iter_dir / "rewards.jsonl"), _by_id(iter_dir / "pairs.jsonl")
    refs = ref_logps(iter_dir / "ref_logps.json")
    rows, details = [], {}
    for s in searches:
        r, p = rewards.get(s["id"]), pairs.get(s["id"])
        gt = truth.get(s["id"]) if truth is not None else None
        skipped = skip_reason(s, r, p, filters)
        rows.append(prompt_row(s, r, p, skipped, gt, synonyms))
        detail = {"skipped": skipped, "error": s.get("error")}
        if "nodes" in s:
            detail["tree"] = tree_view(s, r, p, settings, gt, synonyms)
        if p is not None:
            detail["pair"] = {"margin": p["margin"], "n_filtered": p.get("n_filtered"),
                              **{side: pair_side(p, side, gt, synonyms) for side in ("chosen", "rejected")}}
            if s["id"] in refs:
                detail["pair"]["ref_logps"] = refs[s["id"]]
        details[s["id"]] = detail
    return rows, details


def eval_answers(iter_dir: Path) -> dict[str, list[dict]]:
    """evaluator name -> its answers.jsonl records at this iteration."""
    out = {}
    for path in sorted((iter_dir / "eval").glob("*/answers.jsonl")):
        out[path.parent.name] = read_jsonl(path)
    return out
