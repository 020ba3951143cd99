"""DPO memory: peak memory and step time of one DPO step before and after csr's bounded forward.

    .venv/bin/python experiments/bench_dpo/memory.py --threads 1
    .venv/bin/python experiments/bench_dpo/memory.py --tiny --out /tmp/dpo_memory   # checks it runs (seconds)

The mid workload's LLaVA shapes (experiments/bench_search/workloads.py: 8 layers, hidden 512, 576 image
tokens) with LLaVA's 32k vocabulary, random weights, float32 on the CPU; 2 pairs per step (4 rows of
~660 tokens), LoRA r 16 on every linear layer of the language model, reference log-probs given, AdamW.
Variants, each in a fresh process from the same saved checkpoint and the same LoRA init:

- `before`: the forward csr ran until this change (the image once per row, so twice per pair; logits
  and a float32 log-softmax over the vocabulary at every position);
- `after`: csr.dpo.module.concatenated_logps (vision tower once per pair, LM head and log-softmax only
  at the answer positions);
- `after_checkpointing`: the same with dpo.gradient_checkpointing=true.

Peak = the process's high-water RSS during the steps above its RSS before them (model, LoRA and data
already loaded; /proc/self/clear_refs resets the mark), and the whole process's peak. Step time is the
median of the steps after the warm-up. Writes memory.json and the section in README.md (between the
memory markers); `--tiny` runs the csr-make-tiny model, the variants in this process, and writes only
under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench_search"))  # the benchmark models are the search benchmark's
from workloads import CACHE, MID_LLAMA, MID_VISION  # noqa: E402

VOCAB = 32000  # LLaVA-1.5's (Vicuna's); the tokenizer's 400 tokens are its first rows
PAIRS, WARMUP, STEPS = 2, 1, 3
VARIANTS = ("before", "after", "after_checkpointing")
WORDS = ["red", "blue", "green", "circle", "square", "triangle", "left", "right", "top", "bottom", "small", "large"]


def prepare(tiny: bool) -> Path:
    """The checkpoint (its path in model.txt) and the pairs, once (under .data/bench/dpo_memory[_tiny])."""
    import random

    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from csr.data.tiny import write_tiny_prompts
    from csr.models.checkpoint import save_model
    from csr.models.families.llava import make_processor
    from csr.models.tiny import build_tiny, build_tokenizer

    out = root(tiny)
    if (out / "pairs.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        model_path = build_tiny(str(CACHE / "tiny")).llava
    else:
        tokenizer = build_tokenizer()
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(**MID_VISION),
            text_config=LlamaConfig(vocab_size=VOCAB, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MID_LLAMA),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=576,
            vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu",
        )
        torch.manual_seed(0)
        model_path = str(out / "model")
        save_model(LlavaForConditionalGeneration(config).eval(), make_processor(tokenizer, 336, 14), model_path)
    (out / "model.txt").write_text(model_path)
    prompts = json.loads(write_tiny_prompts(out / "data", n=PAIRS).read_text())
    rng = random.Random(0)

    def answer() -> str:  # ~50 tokens, like bench.py's
        return " ".join(f"There is a {rng.choice(WORDS)} {rng.choice(WORDS)} at the {rng.choice(WORDS)}." for _ in range(4))

    pairs = [{"id": str(i), "image": p["image"], "prompt": p["input"].replace("<image>", "").strip(),
              "chosen": answer(), "rejected": answer()} for i, p in enumerate(prompts)]
    (out / "pairs.json").write_text(json.dumps(pairs))
    return out


def root(tiny: bool) -> Path:
    return CACHE / ("dpo_memory_tiny" if tiny else "dpo_memory")


def before_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """csr.dpo.module.concatenated_logps as it was (commit 5dd9474), for the comparison."""
    from csr.models.chat import IGNORE

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=torch.cat([batch["image"]["pixel_values"]] * 2), use_cache=False)
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    token = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (token * (labels != IGNORE)).sum(-1)
    return logps[: len(logps) // 2], logps[len(logps) // 2 :]


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def child(variant: str, threads: int, out: Path, tiny: bool) -> None:
    import resource

    from csr.dpo.data import PairDataset, collate
    from csr.dpo.lora import wrap_lora
    from csr.dpo.loss import dpo_loss
    from csr.dpo.module import concatenated_logps
    from csr.models.checkpoint import load_model
    from csr.models.families import get_family

    torch.set_num_threads(threads)
    data = root(tiny)
    model, processor = load_model((data / "model.txt").read_text())
    pairs = json.loads((data / "pairs.json").read_text())
    batch = collate([PairDataset(pairs, processor, str(data / "data" / "images"), get_family("llava"))[i] for i in range(PAIRS)],
                    processor.tokenizer.pad_token_id)
    if variant == "after_checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    policy = wrap_lora(model, 16, 32, 0.0, r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
                       False).train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    family = get_family("llava")
    logps = before_logps if variant == "before" else lambda m, b: concatenated_logps(m, b, family)
    ref = torch.tensor([-300.0, -310.0]), torch.tensor([-305.0, -300.0])  # fixed: the same loss for every variant
    base = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: the steps' peak from here
    times, losses = [], []
    for _ in range(WARMUP + (1 if tiny else STEPS)):
        t0 = time.perf_counter()
        chosen, rejected = logps(policy, batch)
        loss = dpo_loss(chosen, rejected, *ref, beta=0.1)[0].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    result = {"step_s": statistics.median(times[WARMUP:]), "steps": len(times) - WARMUP, "losses": losses, "step_peak_mb": rss_mb("VmHWM") - base,
              "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "tokens": int(batch["attention_mask"].sum()), "rows": list(batch["input_ids"].shape),
              "answer_positions": int((batch["labels"] != -100).sum())}
    out.write_text(json.dumps(result))


def table(rows: dict) -> str:
    b = rows["before"]
    out = ["| variant | step peak MB (above loaded model) | process peak MB | s / step | loss, every step (vs before) |",
           "|---|---|---|---|---|"]
    for name in VARIANTS:
        r = rows[name]
        gap = max(abs(x - y) for x, y in zip(r["losses"], b["losses"], strict=True))
        losses = ", ".join(f"{x:.6f}" for x in r["losses"])
        out.append(f"| {name} | {r['step_peak_mb']:.0f} | {r['process_peak_mb']:.0f} | {r['step_s']:.2f} "
                   f"| {losses} (max diff {gap:.1e}) |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model, 1 step after the warm-up, variants in this process, results under --out")
    parser.add_argument("--out", type=Path, default=HERE, help="where memory.json goes")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.out, args.tiny)
        return
    if args.tiny and args.out == HERE:
        parser.error("--tiny writes its results under --out, never over this study's: give --out")
    started = time.time()
    data = prepare(args.tiny)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for variant in VARIANTS:
        out = args.out / f"{variant}.json"
        if args.tiny:  # one process, seconds: the peaks then mean little
            child(variant, args.threads, out, tiny=True)
        else:
            subprocess.run([sys.executable, __file__, "--child", variant, "--threads", str(args.threads), "--out", str(out)],
                           check=True)
        rows[variant] = json.loads(out.read_text())
    r = rows["before"]
    env = (f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, float32, CPU; {PAIRS} pairs per "
           f"step ({r['rows'][0]} rows x {r['rows'][1]} positions, {r['tokens']} real tokens, {r['answer_positions']} "
           f"labelled); median of {r['steps']} steps after {WARMUP} warm-up; total {time.time() - started:.0f} s")
    (args.out / "memory.json").write_text(json.dumps({"env": env, "model": (data / "model.txt").read_text(), "rows": rows},
                                                     indent=1))
    print(table(rows))
    if args.out != HERE:
        return
    readme = HERE / "README.md"
    head, rest = readme.read_text().split("<!-- memory:start -->")
    _, tail = rest.split("<!-- memory:end -->")
    readme.write_text(f"{head}<!-- memory:start -->\nMeasured: {env}.\n\n{table(rows)}<!-- memory:end -->{tail}")


if __name__ == "__main__":
    main()
