"""The search sections, on one full-width model held in memory: csr's batched search (its own module,
csr.search.stage.build_module) against an uncached HF forward (R_T of every node), against the
reference algorithm and a per-node HF `generate` loop (tokens/s, same run), the host's share of a
decode step (torch.profiler), and the search's peak memory against csr-plan."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from measure import against_plan, planned, timed
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from csr.reward.scores import text_score
from csr.reward.tree import path_to
from csr.search.engine import answer_ids
from csr.search.stage import build_module

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the reference algorithm: the tests' oracle
from reference_search import ReferenceSearch  # noqa: E402

# Reference precision for each model dtype: the "true" R_T the bf16 ones are held to.
WIDER = {torch.bfloat16: torch.float32, torch.float32: torch.float64}
# Smallest tolerance on |R_T(csr) - R_T(HF)|: a float32 run's rounding is ~1e-6, the bar stays above noise.
FLOOR = {torch.bfloat16: 1e-3, torch.float32: 1e-4}


def with_answer(family, processor, prompt: str, image, answer: list[int]) -> dict:
    """The processor's inputs for image + prompt with `answer` appended, unpadded (the tokens are text)."""
    inputs = family.encode(processor, [family.chat_prompt(processor, prompt)], [image])
    extra = torch.tensor([answer], dtype=torch.long)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for key in family.token_keys:
        inputs[key] = torch.cat([inputs[key], torch.zeros_like(extra)], dim=1)
    return inputs


@torch.inference_mode()
def uncached_logps(model, family, processor, prompt: str, image, answer: list[int], shift: int = 0) -> torch.Tensor:
    """log p of every answer token from one plain HF forward (no cache, no padding, the family's own
    positions; `shift` moves the answer's positions, the error the check must be able to see), float64
    on the host."""
    inputs = with_answer(family, processor, prompt, image, answer)
    position, _ = family.prefill_positions(model, inputs)
    position[..., position.shape[-1] - len(answer) :] += shift
    rest = {**family.image_inputs(inputs, model.dtype), **{key: inputs[key] for key in family.token_keys}}
    device = model.device
    out = model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                position_ids=position.to(device), **{k: v.to(device) for k, v in rest.items()}, use_cache=False,
                logits_to_keep=len(answer) + 1)
    logps = out.logits[0, :-1].double().log_softmax(-1)
    return logps.gather(1, torch.tensor(answer, device=device)[:, None])[:, 0].cpu()


def tree_scores(model, family, processor, tree, prompt, image, form: str, shift: int = 0) -> dict[int, float]:
    """R_T of every node from uncached forwards, one per leaf (a leaf's path covers its ancestors)."""
    parents = {n.parent for n in tree}
    scores: dict[int, float] = {}
    for leaf in (n for n in tree[1:] if n.id not in parents):
        path = path_to(tree, leaf.id)
        answer = [t for n in path for t in n.token_ids]
        logps = uncached_logps(model, family, processor, prompt, image, answer, shift).tolist()
        at = 0
        for node in path:
            scores.setdefault(node.id, text_score(logps[at : at + len(node.token_ids)], form))
            at += len(node.token_ids)
    return scores


def rt_exactness(model, family, processor, trees, prompts, images, form: str, truth_prompts: int) -> dict:
    """R_T of every node as the search wrote it against an uncached HF forward in the model's dtype, and
    how far that forward itself is from the same forward one precision up (the first `truth_prompts`
    prompts): two bf16 computations each within e of the truth differ by at most 2e, so csr passes when
    max |csr - HF| <= max(2 e, floor). And the check's power: how far R_T moves when the answer sits one
    position off (the first prompt's nodes); an error of that kind must show above the tolerance."""
    dtype = model.dtype
    hf = [tree_scores(model, family, processor, t, p, im, form) for t, p, im in zip(trees, prompts, images, strict=True)]
    shifted = tree_scores(model, family, processor, trees[0], prompts[0], images[0], form, shift=1)
    moved = sorted(abs(r - hf[0][i]) for i, r in shifted.items())
    model.to(WIDER[dtype])
    truth = [tree_scores(model, family, processor, t, p, im, form)
             for t, p, im in zip(trees[:truth_prompts], prompts, images, strict=False)]
    model.to(dtype)  # bf16 -> float32 -> bf16 is exact: the model is unchanged
    csr_vs_hf = max(abs(n.r_t - hf[p][n.id]) for p, t in enumerate(trees) for n in t[1:])
    hf_vs_truth = max(abs(hf[p][i] - r) for p, scores in enumerate(truth) for i, r in scores.items())
    csr_vs_truth = max(abs(trees[p][i].r_t - r) for p, scores in enumerate(truth) for i, r in scores.items())
    tolerance = max(2 * hf_vs_truth, FLOOR[dtype])
    return {"nodes": sum(len(t) - 1 for t in trees), "dtype": str(dtype).removeprefix("torch."),
            "truth_dtype": str(WIDER[dtype]).removeprefix("torch."), "truth_nodes": sum(len(s) for s in truth),
            "max_abs_csr_vs_hf": csr_vs_hf, "max_abs_hf_vs_truth": hf_vs_truth, "max_abs_csr_vs_truth": csr_vs_truth,
            "tolerance": tolerance, "passed": csr_vs_hf <= tolerance,
            "median_abs_shift_by_one": moved[len(moved) // 2], "sees_shift_by_one": moved[len(moved) // 2] > tolerance}


@torch.inference_mode()
def generate_node(model, family, processor, decode, prompt, image, answer: list[int], k: int, new_tokens: int) -> int:
    """K candidate next sentences of one node by HF `generate` (K beams, K returned, as a user without
    csr would write it) from the node's full text; returns the tokens it wrote."""
    inputs = {key: v.to(model.device) for key, v in with_answer(family, processor, prompt, image, answer).items()}
    inputs.update(family.image_inputs(inputs, model.dtype))
    pad = processor.tokenizer.pad_token_id
    out = model.generate(**inputs, do_sample=False, num_beams=k, num_return_sequences=k, max_new_tokens=new_tokens,
                         eos_token_id=[*sorted(decode.end_ids), *sorted(decode.delimiter_ids)],
                         suppress_tokens=decode.suppress_ids, pad_token_id=pad)
    return int((out[:, inputs["input_ids"].shape[1] :] != pad).sum())


def baselines(model, family, processor, engine, trees, prompts, images, keys, budget_s: float) -> dict:
    """The reference algorithm prompt by prompt and the generate loop node by node (the nodes csr
    expanded), each for at most `budget_s`: tokens/s over what finished."""
    ref = ReferenceSearch(model, processor, engine.s, engine.decode, None, family)
    ref_tokens = ref_s = ref_prompts = 0
    for p, im, key in zip(prompts, images, keys, strict=True):
        out, seconds = timed(ref.search, [p], [im], [key])
        ref_tokens += sum(len(n.token_ids) for n in out[0])
        ref_s, ref_prompts = ref_s + seconds, ref_prompts + 1
        if ref_s > budget_s:
            break
    gen_tokens = gen_s = gen_nodes = 0
    for tree, p, im in zip(trees, prompts, images, strict=True):
        for node_id in sorted({n.parent for n in tree[1:]}):
            node = tree[node_id]
            new = min(engine.decode.max_new_tokens, engine.s.max_answer_tokens - node.answer_tokens)
            written, seconds = timed(generate_node, model, family, processor, engine.decode, p, im,
                                     answer_ids(tree, node), engine.s.candidates_per_step, new)
            gen_tokens, gen_s, gen_nodes = gen_tokens + written, gen_s + seconds, gen_nodes + 1
            if gen_s > budget_s:
                break
        if gen_s > budget_s:
            break
    return {"reference": {"prompts": ref_prompts, "tokens": ref_tokens, "seconds": ref_s, "tok_s": ref_tokens / ref_s},
            "generate": {"nodes": gen_nodes, "tokens": gen_tokens, "seconds": gen_s, "tok_s": gen_tokens / gen_s}}


def host_share(model, engine, prompts, images, keys, rows: list[int], active: int = 8) -> dict:
    """The host's share of a decode step: 1 - (GPU kernel time) / (wall time) over `active` consecutive
    decode steps of the widest batch, a step being one forward and the token choice and bookkeeping up to
    the next forward (each step waits for its chosen ids, so the wall time is the step's). `rows`: the
    batch rows of each forward of an earlier search of the same prompts (the first is the prefill)."""
    widest = max(rows[1:])
    first = rows.index(widest, 1)
    run = next((i for i in range(first, len(rows)) if rows[i] != widest), len(rows)) - first
    active = max(1, min(active, run - 2))
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # profiler step j spans forward j-1 and what follows it; the batch's first forward is left out, and
    # the first recorded step too (it carries the profiler's own start-up)
    with profile(activities=activities, schedule=schedule(wait=first + 1, warmup=1, active=active + 1, repeat=1)) as prof:
        hook = model.register_forward_pre_hook(lambda *_: prof.step())
        try:
            engine.search(prompts, images, keys)
        finally:
            hook.remove()
    events = prof.events()
    steps = sorted((e for e in events if e.name.startswith("ProfilerStep")), key=lambda e: e.time_range.start)[1:]
    wall_us = device_us = 0.0
    # A host op carries the kernels it launched (the kernels are also events of their own: not counted
    # again); they count in the step that launched them.
    ops = [e for e in events if e.device_type == DeviceType.CPU and not e.name.startswith("ProfilerStep")]
    for step in steps:
        wall_us += step.time_range.elapsed_us()
        device_us += sum(e.self_device_time_total for e in ops
                         if step.time_range.start <= e.time_range.start < step.time_range.end)
    n = max(len(steps), 1)
    return {"rows": widest, "steps": len(steps), "step_ms": wall_us / n / 1e3, "gpu_busy_ms": device_us / n / 1e3,
            "host_share": 1 - min(device_us / wall_us, 1.0) if wall_us else None,
            "device": "cuda" if cuda else "cpu (no device: the share is 1 by definition)"}


def run_search_sections(model, processor, family, cfg, model_dir: Path, prompts, images, keys, meter, budget_s: float,
                        record) -> None:
    """Every search section on `model`, each result passed to record(name, value) as soon as it exists."""
    module = build_module(model, processor, family, None, cfg)
    engine = module.engine
    engine.search(prompts[:1], images[:1], keys[:1])  # warm-up: kernels, allocator, caches
    rows: list[int] = []
    counter = model.register_forward_pre_hook(lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    meter.reset()
    try:
        trees, seconds = timed(engine.search, prompts, images, keys)
    finally:
        counter.remove()
    peak = meter.read()
    tokens = sum(len(n.token_ids) for t in trees for n in t)
    record("search", {"prompts": len(prompts), "nodes": sum(len(t) - 1 for t in trees), "tokens": tokens,
                      "seconds": seconds, "tok_s": tokens / seconds, "forwards": len(rows), "peak": peak})
    length = int(family.encode(processor, [family.chat_prompt(processor, p) for p in prompts], images)["input_ids"].shape[1])
    on = "gpu_gib" if peak["gpu_gib"] is not None else "host_gib"
    record("search_memory", against_plan(peak, planned(cfg, model_dir, length, None), "search", on))
    start = time.perf_counter()
    speed = baselines(model, family, processor, engine, trees, prompts, images, keys, budget_s)
    speed.update(csr_tok_s=tokens / seconds, baseline_s=time.perf_counter() - start)
    speed["speedup_vs_reference"] = speed["csr_tok_s"] / speed["reference"]["tok_s"]
    speed["speedup_vs_generate"] = speed["csr_tok_s"] / speed["generate"]["tok_s"]
    record("speed", speed)
    record("host", host_share(model, engine, prompts, images, keys, rows))
    record("r_t", rt_exactness(model, family, processor, trees, prompts, images, cfg.reward.text_score, truth_prompts=2))
