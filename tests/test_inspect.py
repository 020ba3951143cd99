"""csr-inspect: the numbers the site derives (hand-computed), and the site of a real tiny run as
headless Chromium shows it, opened from the file system and from a static HTTP server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from csr_runs import sweep, tiny_env
from PIL import Image

from csr.core.io import read_jsonl
from csr.inspect.browser import Browser, chromium
from csr.inspect.data import prompt_key, prompt_row, sibling_ranks, skip_reason, tree_view
from csr.inspect.site import write_site
from csr.worlds.shapesworld.vocab import synonym_table


def _node(i: int, parent: int, text: str, r_t: float | None, r_i: float | None, reward=None, **flags) -> dict:
    depth = 0 if parent < 0 else 1
    return {"id": i, "parent": parent, "depth": depth, "text": text, "token_ids": [1] * len(text), "r_t": r_t,
            "r_i": r_i, "reward": reward, "path_reward": reward or 0.0, "path_r_t": r_t or 0.0,
            "answer_tokens": len(text), "finish": flags.get("finish"), "final": flags.get("final", False),
            "kept": flags.get("kept", parent < 0)}


def test_sibling_ranks_are_the_calibrations():
    # R_T -1 > -2 > -3 ranks 1, 2/3, 1/3; R_I 10 < 20 < 30 ranks 1/3, 1, 2/3 (best = 1);
    # R = 0.9 * rank(R_I) + 0.1 * rank(R_T) = 0.4, 0.9 + 0.2/3, 0.6 + 0.1/3.
    nodes = [_node(0, -1, "", None, None), _node(1, 0, "a.", -1.0, 10.0), _node(2, 0, "b.", -2.0, 30.0),
             _node(3, 0, "c.", -3.0, 20.0)]
    ranks = sibling_ranks(nodes, lam=0.9, calibration="rank")
    assert [ranks[i]["rank_t"] for i in (1, 2, 3)] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert [ranks[i]["rank_i"] for i in (1, 2, 3)] == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert [ranks[i]["r_check"] for i in (1, 2, 3)] == pytest.approx([0.4, 0.9 + 0.2 / 3, 0.6 + 0.1 / 3])
    assert [ranks[i]["norm_i"] for i in (1, 2, 3)] == pytest.approx([1 / 3, 1.0, 2 / 3])
    # z-scores of R_I (mean 20, population std sqrt(200/3)): -1.2247, 1.2247, 0
    z = sibling_ranks(nodes, lam=0.9, calibration="zscore")
    assert [z[i]["norm_i"] for i in (1, 2, 3)] == pytest.approx([-1.2247449, 1.2247449, 0.0])
    unscored = sibling_ranks([nodes[0], _node(1, 0, "a.", -1.0, None), _node(2, 0, "b.", -2.0, 5.0)], 0.9, "rank")
    assert unscored[1]["rank_t"] == 1.0 and unscored[1]["rank_i"] is None and unscored[1]["r_check"] is None


def _pair(chosen: str, rejected: str) -> dict:
    return {"id": "p/1", "chosen": chosen, "rejected": rejected, "chosen_score": 0.9, "rejected_score": 0.3,
            "margin": 0.6, "chosen_sentences": [{"text": chosen, "r_t": -1.0, "r_i": 30.0, "reward": 0.9}],
            "rejected_sentences": [{"text": rejected, "r_t": -2.0, "r_i": 10.0, "reward": 0.3}]}


def test_tree_paths_statuses_and_chair_of_a_hand_made_tree():
    search = {"id": "p/1", "prompt": "Describe.", "image": "x.png", "nodes": [
        _node(0, -1, "", None, None),
        _node(1, 0, " A red star.", -1.0, 30.0, 0.9, finish="eos", final=True),
        _node(2, 0, " A moon.", -2.0, 10.0, 0.3, finish="eos", final=True),
        _node(3, 0, " A", -3.0, 20.0, 0.6, finish="delimiter")]}
    reward = {"id": "p/1", "answers": [
        {"node": 1, "text": " A red star.", "finish": "eos", "score": 0.9,
         "sentences": [{"text": " A red star.", "r_t": -1.0, "r_i": 30.0, "reward": 0.9}]},
        {"node": 2, "text": " A moon.", "finish": "eos", "score": 0.3,
         "sentences": [{"text": " A moon.", "r_t": -2.0, "r_i": 10.0, "reward": 0.3}]}]}
    pair = _pair(" A red star.", " A moon.")
    synonyms = synonym_table()
    view = tree_view(search, reward, pair, {"lam": 0.9, "calibration": "rank", "prune_by": "calibrated"},
                     {"star"}, synonyms)
    assert view["paths"] == {"chosen": [1], "rejected": [2]}
    assert [n["status"] for n in view["nodes"]] == ["root", "final", "final", "pruned"]
    assert [n.get("halluc") for n in view["nodes"]] == [None, [], ["moon"], []]
    assert [a["node"] for a in view["answers"]] == [1, 2]
    row = prompt_row(search, reward, pair, None, {"star"}, synonyms)
    assert (row["chosen_chair_s"], row["rejected_chair_s"], row["rejected_halluc"]) == (0.0, 1.0, ["moon"])
    assert row["chosen_r_i"] == 30.0 and row["key"] == prompt_key("p/1") != "p/1"
    # no pair: the pair rule's own reason (two answers with equal scores tie)
    tied = {**reward, "answers": [{**a, "score": 0.5} for a in reward["answers"]]}
    assert skip_reason(search, tied, None, ["empty"]) == "tied_scores"
    assert skip_reason({**search, "skipped": "bad_image"}, None, None, []) == "bad_image"


# -- the site of a real tiny run, in Chromium -------------------------------------------------------

needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def tiny_site(tiny_models, tmp_path_factory) -> Path:
    """A run of the shared tiny sweep (`csr` wrote inspect/ itself: report.inspect is on by default)."""
    return sweep(tmp_path_factory, tiny_env(tiny_models)) / "sweep" / "0"


def _not_blank(png: Path) -> float:
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return float(pixels.var())


@pytest.mark.slow
def test_the_loop_writes_the_site_and_logs_it_to_mlflow(tiny_site):
    assert (tiny_site / "inspect" / "index.html").exists()
    assert (tiny_site / "inspect" / "data" / "iter_1.js").exists()
    logged = list((tiny_site.parent.parent / "mlartifacts").rglob("inspect/index.html"))
    assert len(logged) == 2  # one per run of the sweep, in its parent run's artifacts


@pytest.mark.slow
@needs_chromium
def test_site_in_chromium_from_the_file_system(tiny_site, tmp_path):
    site = write_site(tiny_site, tmp_path / "site")  # csr-inspect's own output, beside the loop's
    searches = read_jsonl(tiny_site / "iter_1" / "search.jsonl")
    pairs = {p["id"]: p for p in read_jsonl(tiny_site / "iter_1" / "pairs.jsonl")}
    with Browser() as b:
        b.goto((site / "index.html").as_uri())
        assert b.eval("document.querySelectorAll('#prompts tbody tr').length") == len(searches) == 8
        first = b.eval("document.querySelector('#prompts tbody tr a').textContent")
        b.click("#prompts tbody tr a")  # a real mouse click on the first prompt's link
        b.wait_for("location.pathname.endsWith('/prompt.html') && document.body && document.body.dataset.ready === '1'")
        record = next(s for s in searches if s["id"] == first)
        assert b.eval("document.querySelectorAll('#tree .node').length") == len(record["nodes"])
        chosen_path = b.eval("[...document.querySelectorAll('#tree .node')].filter(n => n.querySelector('.badge.chosen'))"
                             ".map(n => n.querySelector('.txt').textContent).join('')")
        assert chosen_path == pairs[first]["chosen"]
        assert b.eval("[...document.querySelectorAll('.side.chosen .sent')].map(s => s.textContent).join('')") == \
            pairs[first]["chosen"]
        b.click("#tree .node[data-id='1']")  # pins its sibling set in the side panel
        assert b.eval("document.querySelectorAll('#panel tbody tr').length") == sum(
            1 for n in record["nodes"] if n["parent"] == 0)
        shot = b.screenshot(tmp_path / "prompt.png")
    assert len(shot) > 10_000 and _not_blank(tmp_path / "prompt.png") > 100.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_chromium
def test_site_in_chromium_from_a_static_server(tiny_site):
    site, port = tiny_site / "inspect", _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=site,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Browser() as b:
            b.timeout = 30
            b.goto(f"http://127.0.0.1:{port}/eval.html")
            evaluated = read_jsonl(tiny_site / "iter_1" / "eval" / "generate" / "answers.jsonl")
            assert b.eval("document.querySelectorAll('#table tbody tr').length") == len(evaluated)
            key = prompt_key(evaluated[0]["id"])
            b.goto(f"http://127.0.0.1:{port}/prompt.html#p={key}&it=1")
            answers = json.loads(b.eval("JSON.stringify([...document.querySelectorAll('#evals td.txt')]"
                                        ".map(td => td.textContent))"))
            assert answers[-1] == evaluated[0]["answer"]  # the last row: iteration 1
    finally:
        server.terminate()
        server.wait(timeout=10)
