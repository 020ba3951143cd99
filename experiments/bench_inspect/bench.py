"""Page load times of the inspector on a large synthetic run (2,000 prompts per iteration).

    python experiments/bench_inspect/bench.py [--prompts 2000] [--iterations 3] [--out /tmp/bench_inspect]
    python experiments/bench_inspect/bench.py --tiny --out /tmp/bench_inspect_tiny   # checks it runs (seconds)

Writes a synthetic run directory in the layout `csr` writes (search.jsonl, rewards.jsonl, pairs.jsonl,
eval answers; ShapesWorld-sized trees of 5 candidates per step, 1 best + 2 worst kept, up to 6
sentences), builds its site with csr-inspect, and loads the run page, an evaluation page and prompt
pages in headless Chromium from file://, timing navigation start -> page drawn (the pages set
`CSR_PAINTED_MS = performance.now()` in the first frame after their data is drawn).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from csr.config.schema import RootConfig
from csr.inspect.browser import Browser
from csr.inspect.site import write_site
from csr.pairs.build import build_pairs
from csr.reward.rules.mean import MEAN, answer_score
from csr.reward.tree import Node, path_to, settle_step

WORDS = ["a", "small", "large", "red", "green", "blue", "circle", "square", "star", "moon", "heart", "arrow", "ring", "in", "the", "top", "left", "right", "bottom"]


def synthetic_tree(rng: random.Random, k: int = 5, max_sentences: int = 6) -> list[Node]:
    """A search tree grown with the project's own settle_step (calibrated R, keep 1 best + 2 worst)."""
    nodes = [Node(id=0, parent=-1, depth=0, kept=True)]
    live = [0]
    for depth in range(1, max_sentences + 1):
        children = []
        for parent in live:
            for _ in range(k):
                text = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "."
                ends = rng.random() < 0.25 or depth == max_sentences
                node = Node(id=len(nodes), parent=parent, depth=depth, text=text, token_ids=[1] * len(text.split()),
                            r_t=-rng.uniform(0.1, 1.5), r_i=rng.uniform(10, 50), finish="eos" if ends else "delimiter",
                            answer_tokens=nodes[parent].answer_tokens + len(text.split()))
                nodes.append(node)
                children.append(node.id)
        live = settle_step(nodes, children, lam=0.9, calibration="rank", prune_by="calibrated", beam_width=5,
                           keep_top=1, keep_bottom=2, max_sentences=max_sentences, rule=MEAN)
        if not live:
            break
    return nodes


def scored_answers(nodes: list[Node]) -> list[dict]:
    """rewards.jsonl's answers of a tree (the `mean` rule: mean calibrated R of the path)."""
    answers = []
    for final in (n for n in nodes if n.final):
        path = path_to(nodes, final.id)
        answers.append({"node": final.id, "text": "".join(n.text for n in path), "finish": final.finish,
                        "sentences": [{"text": n.text, "r_t": n.r_t, "r_i": n.r_i, "reward": n.reward} for n in path],
                        "score": answer_score([n.reward for n in path])})
    return answers


def write_run(out: Path, n_prompts: int, iterations: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    ids = [f"csr_{i:06d}" for i in range(n_prompts)]
    for i in ids:
        Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(images / f"{i}.png")
    run = out / "run"
    (run).mkdir(exist_ok=True)
    # A whole config, as csr saves it (the inspector refuses one with keys missing), with the settings above.
    config = OmegaConf.merge(OmegaConf.structured(RootConfig), {
        "run_dir": str(run), "model": {"path": "synthetic"}, "data": {"prompt_file": "synthetic", "image_root": str(images)},
        "eval": {"image_root": str(images)}, "reward": {"lam": 0.9, "calibration": "rank"},
        "search": {"prune_by": "calibrated"}, "pairs": {"filters": ["empty", "repetition"]}})
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
    for k in range(0, iterations + 1):
        d = run / f"iter_{k}"
        (d / "eval" / "generate").mkdir(parents=True, exist_ok=True)
        answers = [{"id": i, "image": f"{i}.png", "prompt": "Describe this image in detail.",
                    "answer": " ".join(rng.choice(WORDS) for _ in range(20)), "answer_tokens": 20, "finish": "eos",
                    "r_i": rng.uniform(20, 40)} for i in ids[:500]]
        (d / "eval" / "generate" / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
        if k == 0:
            continue
        searches, rewards = [], []
        for i in ids:
            base = {"id": i, "image": f"{i}.png", "prompt": "Describe this image in detail.",
                    "input": "Describe this image in detail.\n<image>"}
            nodes = synthetic_tree(rng)
            searches.append({**base, "nodes": [n.to_json() for n in nodes], "stats": {}})
            rewards.append({**base, "answers": scored_answers(nodes)})
        (d / "search.jsonl").write_text("".join(json.dumps(s) + "\n" for s in searches))
        (d / "rewards.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rewards))
        build_pairs(d / "rewards.jsonl", d, ["empty", "repetition"], str(images), False, False)
    return run


def load_times(site: Path, pages: list[str], repeats: int) -> dict[str, dict]:
    out = {}
    with Browser() as b:
        for page in pages:
            painted, wall = [], []
            for _ in range(repeats):
                start = time.monotonic()
                b.goto((site / page.split("#")[0]).as_uri() + ("#" + page.split("#")[1] if "#" in page else ""))
                wall.append(time.monotonic() - start)
                painted.append(b.eval("window.CSR_PAINTED_MS"))
            out[page] = {"painted_ms_median": round(statistics.median(painted)), "painted_ms_max": round(max(painted)),
                         "driver_wall_s_median": round(statistics.median(wall), 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_inspect"))
    parser.add_argument("--keep-run", action="store_true", help="reuse the synthetic run already in --out")
    parser.add_argument("--tiny", action="store_true", help="3 prompts, 1 iteration, each page loaded once")
    args = parser.parse_args()
    if args.tiny:
        args.prompts, args.iterations, args.repeats = 3, 1, 1
    t = time.monotonic()
    run = args.out / "run" if args.keep_run else write_run(args.out, args.prompts, args.iterations)
    made = time.monotonic() - t
    t = time.monotonic()
    site = write_site(run)
    built = time.monotonic() - t
    nodes = sum(len(json.loads(line)["nodes"]) for line in (run / "iter_1" / "search.jsonl").open())
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 2**20
    pages = ["index.html", f"index.html#it={args.iterations}&sort=margin&dir=desc", "eval.html",
             "prompt.html#p=csr_000000&it=1", f"prompt.html#p=csr_{args.prompts - 1:06d}&it={args.iterations}"]
    times = load_times(site, pages, args.repeats)
    print(json.dumps({"prompts_per_iteration": args.prompts, "iterations": args.iterations,
                      "nodes_per_tree_iter_1": nodes / args.prompts, "run_written_s": round(made, 1),
                      "site_built_s": round(built, 1), "site_mib": round(size, 1),
                      "files": sum(1 for p in site.rglob("*") if p.is_file()), "pages": times}, indent=2))


if __name__ == "__main__":
    main()
