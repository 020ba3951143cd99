"""Measure one stage's peak memory on the CPU and the plan's prediction for it (one workload, one stage).

    python experiments/plan/stage_peak.py --workload mid --stage dpo      # prints one JSON line
    python experiments/plan/stage_peak.py --workload tiny --stage search,dpo   # one line per stage, one process

The stage runs csr's own code (TreeSearch, the reference pass's forward, the DPO step as DPOModule
does it, GenerateModule) under torch.profiler with profile_memory=True, which records every allocation
and free of torch's CPU allocator. Peak = the bytes the models hold when profiling starts + the
highest running sum of what is allocated after: the CPU counterpart of
torch.cuda.max_memory_allocated. The plan is computed from the model's config (csr/plan_cli.llava_dims)
twice: at the lengths this run reached (prompt, answers, each search step's nodes and widths) and at
the caps of the settings alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench_search"))  # the benchmark models are the search benchmark's
from workloads import CACHE, Workload, mid, shapesworld, tiny  # noqa: E402

from csr.commands.plan import ANSWER_LOGITS_DEFAULT, clip_dims, llava_dims  # noqa: E402
from csr.models import memory as P  # noqa: E402
from csr.models.families import get_family  # noqa: E402

# LoRA as each workload's config trains it: ShapesWorld's r16, the paper's r128 on the mid model.
LORA = {"tiny": (16, 32), "shapesworld": (16, 32), "mid": (128, 256)}
DROPOUT = 0.05
PAIRS = 2  # pairs per DPO / reference batch
EVAL_BATCH = 8
WORDS = ["there", "is", "a", "red", "circle", "on", "the", "left", "of", "the", "blue", "square", "and", "a", "green", "star"]


@dataclass
class Run:
    """A measured stage: its peak and what the plan needs to know about the lengths it reached."""

    peak: int
    prompt_tokens: int
    answer_tokens: int = 0
    steps: list[P.Step] | None = None


def load(name: str) -> tuple[Workload, Path, str]:
    """The workload, its image root and the open_clip JSON of its CLIP."""
    if name == "tiny":
        w = tiny()
        return w, CACHE / "tiny_data" / "images", str(CACHE / "tiny" / "clip" / "tiny-clip.json")
    if name == "shapesworld":
        from csr.worlds.shapesworld.splits import ensure_split

        w = shapesworld(n_prompts=8)
        clip_json = Path(__file__).resolve().parents[2] / "csr/assets/shapesworld/clip/shapesworld-clip.json"
        return w.with_shape(prompts=4), ensure_split(CACHE / "shapesworld", "csr", 8) / "images", str(clip_json)
    w = mid(n_prompts=8)
    return w.with_shape(prompts=4), CACHE / "tiny_data" / "images", str(CACHE / "mid-clip.json")


def profiled(fn) -> tuple[object, int]:
    """fn()'s result and the highest running sum of CPU allocator bytes while it ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = peak = 0
    for _, n in events:
        running += n
        peak = max(peak, running)
    return out, peak


def held(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def image_tokens(w: Workload) -> int:
    return w.model.config.image_seq_length if hasattr(w.model.config, "image_seq_length") else 0


def prompt_length(w: Workload, prompts: list[str], images) -> int:
    from csr.models.chat import generation_prompt

    texts = [generation_prompt(w.processor, p) for p in prompts]
    return w.processor(images=list(images), text=texts, return_tensors="pt", padding=True)["input_ids"].shape[1]


def realised_steps(trees, max_sentences: int) -> list[P.Step]:
    """Each step's expanded nodes (all prompts), their longest answer, and the sentence caches alive at
    its end: the distinct sentences on the live paths plus the new children that may be continued."""
    steps = []
    for depth in range(max_sentences):
        expanded = [(t, n) for t in trees for n in t if (n.parent < 0 if depth == 0 else n.depth == depth and n.kept)]
        if not expanded:
            break
        ancestors = set()
        for t, n in expanded:
            while n.parent >= 0:
                ancestors.add((id(t), n.id))
                n = t[n.parent]
        path_tokens = sum(len(t[i].token_ids) for t in trees for (tid, i) in ancestors if tid == id(t))
        kept = depth + 1 < max_sentences
        children = sum(len(c.token_ids) for t, n in expanded for c in t if c.parent == n.id and c.finish != "eos")
        steps.append(P.Step(len(expanded), max(n.answer_tokens for _, n in expanded), path_tokens + children * kept))
    return steps


def run_search(w: Workload, root: Path) -> Run:
    from csr.models.clip import ClipScorer
    from csr.search.engine import TreeSearch

    search, decode = w.settings()
    scorer = ClipScorer(w.clip)
    engine = TreeSearch(w.model, w.processor, get_family("llava"), search, decode, scorer.relevance)
    n = w.shape.prompts
    base = held(w.model, scorer)
    trees, peak = profiled(lambda: engine.search(w.prompts[:n], w.images[:n], w.keys[:n]))
    lp = prompt_length(w, w.prompts[:n], w.images[:n])
    return Run(base + peak, lp - image_tokens(w), steps=realised_steps(trees, w.shape.max_sentences))


def answer_text(tokenizer, tokens: int, offset: int) -> str:
    """Words until the answer is `tokens` tokens long (with EOS, as PairDataset encodes it)."""
    words: list[str] = []
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) + 1 < tokens:
        words.append(WORDS[(len(words) + offset) % len(WORDS)])
    return " ".join(words)


def pair_batch(w: Workload, root: Path):
    from csr.dpo.data import PairDataset, collate

    tok = w.processor.tokenizer
    pairs = [{"id": str(i), "image": w.keys[i], "prompt": w.prompts[i],
              "chosen": answer_text(tok, w.shape.max_answer_tokens, 0),
              "rejected": answer_text(tok, w.shape.max_answer_tokens - 3, 5)} for i in range(PAIRS)]
    dataset = PairDataset(pairs, w.processor, str(root), get_family("llava"), [(-10.0, -12.0)] * PAIRS)
    items = [dataset[i] for i in range(PAIRS)]
    answer = max(len(it[side]) for it in items for side in ("chosen_ids", "rejected_ids")) - 1
    prompt = max(len(it["prompt_ids"]) for it in items) - image_tokens(w)
    return dataset, collate(items, pad_id=tok.pad_token_id), prompt, answer


def run_reference(w: Workload, root: Path) -> Run:
    from csr.dpo.module import concatenated_logps

    _, batch, prompt, answer = pair_batch(w, root)
    base = held(w.model)

    def forward():  # what the reference pass's predict step runs (Lightning predicts under inference mode)
        with torch.inference_mode():
            return concatenated_logps(w.model, batch, get_family("llava"))

    _, peak = profiled(forward)
    return Run(base + peak, prompt, answer)


def run_dpo(w: Workload, root: Path) -> Run:
    from csr.dpo.data import reference_from_batch
    from csr.dpo.lora import wrap_lora
    from csr.dpo.loss import dpo_loss
    from csr.dpo.module import concatenated_logps

    _, batch, prompt, answer = pair_batch(w, root)
    r, alpha = LORA[w.name]
    base = held(w.model)

    def steps() -> None:  # DPOModule.training_step + what Lightning does around it (32-true, clipping 1.0)
        policy = wrap_lora(w.model, r, alpha, DROPOUT, r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)", None)
        policy.train()
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):  # the second step holds AdamW's moments
            chosen, rejected = concatenated_logps(policy, batch, get_family("llava"))
            losses, _, _ = dpo_loss(chosen, rejected, *reference_from_batch(batch), beta=0.1,
                                    loss_type="sigmoid", label_smoothing=0.0, ipo_form="mean",
                                    chosen_lengths=batch["chosen_lengths"], rejected_lengths=batch["rejected_lengths"])
            losses.mean().backward()
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad()

    _, peak = profiled(steps)
    return Run(base + peak, prompt, answer)


def run_eval(w: Workload, root: Path) -> Run:
    from csr.data.prompts import PromptRecord
    from csr.eval.generate import GenerateModule
    from csr.models.clip import ClipScorer

    scorer = ClipScorer(w.clip)
    module = GenerateModule(w.model, w.processor, get_family("llava"), str(root), w.shape.max_answer_tokens, scorer)
    records = [PromptRecord(str(i), w.keys[i], w.prompts[i], w.prompts[i]) for i in range(EVAL_BATCH)]
    base = held(w.model, scorer)
    answers, peak = profiled(lambda: module.answer(records, w.images[:EVAL_BATCH]))
    lp = prompt_length(w, w.prompts[:EVAL_BATCH], w.images[:EVAL_BATCH])
    return Run(base + peak, lp - image_tokens(w), max(a["answer_tokens"] for a in answers))


def predictions(w: Workload, clip_json: str, stage: str, run: Run) -> tuple[int, int]:
    """(plan at the run's lengths, plan at the settings' caps), in bytes, float32 on one device."""
    dims = llava_dims(w.model.config)
    clip_bytes = P.clip_params(clip_dims(Path(clip_json).stem, clip_json)) * 4
    s = w.shape
    if stage == "search":
        search, _ = w.settings()
        shape = P.SearchShape(prompts_per_batch=s.prompts, beam_width=s.beam_width, candidates=s.candidates_per_step,
                              keep_top=search.keep_top, keep_bottom=search.keep_bottom, max_sentences=s.max_sentences,
                              sentence_tokens=s.max_new_tokens, answer_tokens=s.max_answer_tokens,
                              max_batch_rows=search.max_batch_rows, max_batch_tokens=search.max_batch_tokens)
        return (P.total(P.search_peak(dims, shape, run.prompt_tokens, 4, clip_bytes, run.steps)),
                P.total(P.search_peak(dims, shape, run.prompt_tokens, 4, clip_bytes)))
    if stage == "reference":
        both = [P.reference_peak(dims, PAIRS, run.prompt_tokens, n, 4, ANSWER_LOGITS_DEFAULT)
                for n in (run.answer_tokens, s.max_answer_tokens)]
    elif stage == "dpo":
        t = P.Training(pairs=PAIRS, lora_r=LORA[w.name][0], lora_dropout=DROPOUT > 0, dropout_mask_bytes=4,
                       answer_logits=ANSWER_LOGITS_DEFAULT)
        both = [P.dpo_peak(dims, t, run.prompt_tokens, n, 4) for n in (run.answer_tokens, s.max_answer_tokens)]
    else:
        both = [P.eval_peak(dims, EVAL_BATCH, run.prompt_tokens, n, 4, clip_bytes) for n in (run.answer_tokens, s.max_answer_tokens)]
    return P.total(both[0]), P.total(both[1])


STAGES = {"search": run_search, "reference": run_reference, "dpo": run_dpo, "eval": run_eval}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["tiny", "shapesworld", "mid"], required=True)
    parser.add_argument("--stage", required=True,
                        help=f"one of {', '.join(STAGES)}, or several comma-separated (in this process: each stage's "
                             "allocations are its own, but libraries warmed by one are warm for the next)")
    args = parser.parse_args()
    stages = args.stage.split(",")
    if unknown := [s for s in stages if s not in STAGES]:
        parser.error(f"unknown stage {unknown[0]!r}: choose from {', '.join(STAGES)}")
    torch.set_num_threads(1)
    for stage in stages:
        torch.manual_seed(0)
        w, root, clip_json = load(args.workload)  # afresh for each stage: DPO wraps the model in LoRA
        run = STAGES[stage](w, root)
        realised, caps = predictions(w, clip_json, stage, run)
        print(json.dumps({"workload": args.workload, "stage": stage, "measured": run.peak, "plan": realised,
                          "plan_caps": caps, "prompt_tokens": run.prompt_tokens, "answer_tokens": run.answer_tokens,
                          "steps": [s.__dict__ for s in run.steps or []]}), flush=True)


if __name__ == "__main__":
    main()
