"""Memory plan: the predicted peak memory per device of each stage, from model dimensions alone.

Pure arithmetic (no model library is imported here): `csr/models/planning.py` reads the dimensions
from a config, `csr/commands/plan.py` prints the result, `csr` warns at start when it exceeds the GPU
(start_warning), the search turns its byte cap into tokens (batch_token_cap) and the merge decides
where to run with it (merge_check_gpu, fits). Every stage's peak is a dict of named parts in bytes; `total` adds them.
What is counted, and why, is written next to each term; `experiments/plan/README.md` checks the
totals against peaks measured on the CPU and says where the formulas are bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from csr.config.choices import DTYPES

DTYPE_BYTES = {name: int(name[-2:]) // 8 for name in DTYPES}  # model.dtype's bytes: its bits end its name
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GIB = 1 << 30
# A stage "fits" a device when its predicted peak leaves this share of the device's memory free. It
# covers what the formulas do not count: the CUDA context and cuBLAS / NCCL workspaces (~1-2 GiB on
# an 80 GiB card), allocator rounding and the fragmentation left with expandable segments, and the
# formulas' own error (checked within 8.4% on CPU peaks, experiments/plan/; GPU-only kernels unmeasured).
HEADROOM = 0.10
MERGE_CHECK_PAIRS = 4  # pairs whose log-probs the merged model must reproduce (csr/merge/stage.py)


# --- dimensions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMDims:
    """A Llama-style decoder (SwiGLU MLP, RMSNorm, rotary positions, grouped-query attention)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ViTDims:
    """A CLIP ViT tower: LLaVA's vision tower (HF CLIPVisionModel) or open_clip's image encoder."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    mlp: int  # MLP hidden width
    seq: int = 0  # tokens the tower runs on per image when not a square grid (dynamic resolution, tiles)

    @property
    def patches(self) -> int:
        return self.seq or (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class LlavaDims:
    """A VLM: a decoder, a vision tower, and what one image costs in the prompt. LLaVA-1.5's parameter
    count follows from the dimensions (llava_params); other families pass the count of the model
    built from their config (`params`)."""

    lm: LMDims
    vision: ViTDims
    image_tokens: int  # per image, as the processor writes them into the prompt
    params: int = 0  # the model's parameter count, when known exactly (0: llava_params)


@dataclass(frozen=True)
class ClipDims:
    """open_clip's CLIP (the reward model): a ViT and a text transformer, projected to embed_dim."""

    embed_dim: int
    vision: ViTDims
    context: int
    text_vocab: int
    text_width: int
    text_layers: int
    text_mlp: int


# --- parameter counts -----------------------------------------------------------------------------


def block_params(width: int, mlp: int) -> int:
    """One pre-LN transformer block with biases (CLIP's): attention 4 (w^2 + w), MLP, two LayerNorms."""
    return 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width) + 4 * width


def lm_params(d: LMDims) -> int:
    attention = d.hidden * d.q + 2 * d.hidden * d.kv + d.q * d.hidden
    attention += (d.q + 2 * d.kv + d.hidden) if d.attention_bias else 0
    mlp = 3 * d.hidden * d.intermediate + ((2 * d.intermediate + d.hidden) if d.mlp_bias else 0)
    layer = attention + mlp + 2 * d.hidden  # two RMSNorm weights
    head = 0 if d.tied else d.vocab * d.hidden
    return d.vocab * d.hidden + d.layers * layer + d.hidden + head


def hf_vision_params(v: ViTDims) -> int:
    """HF CLIPVisionModel: patch conv (no bias), class + position embeddings, pre/post LayerNorm."""
    return 3 * v.patch_size**2 * v.width + v.width + (v.patches + 1) * v.width + 4 * v.width + v.layers * block_params(v.width, v.mlp)


def llava_params(d: LlavaDims) -> int:
    projector = d.vision.width * d.lm.hidden + d.lm.hidden + d.lm.hidden * d.lm.hidden + d.lm.hidden  # mlp2x_gelu
    return lm_params(d.lm) + hf_vision_params(d.vision) + projector


def model_params(d: LlavaDims) -> int:
    return d.params or llava_params(d)


def clip_params(c: ClipDims) -> int:
    v, w = c.vision, c.text_width
    vision = 3 * v.patch_size**2 * v.width + v.width + (v.patches + 1) * v.width + 4 * v.width
    vision += v.layers * block_params(v.width, v.mlp) + v.width * c.embed_dim
    text = c.text_vocab * w + c.context * w + c.text_layers * block_params(w, c.text_mlp) + 2 * w + w * c.embed_dim
    return vision + text + 1  # + logit_scale


def lora_params(d: LMDims, r: int, modules: tuple[str, ...] = LORA_MODULES) -> int:
    """r (in + out) per targeted linear layer of every decoder layer."""
    shapes = {"q_proj": (d.hidden, d.q), "k_proj": (d.hidden, d.kv), "v_proj": (d.hidden, d.kv),
              "o_proj": (d.q, d.hidden), "gate_proj": (d.hidden, d.intermediate),
              "up_proj": (d.hidden, d.intermediate), "down_proj": (d.intermediate, d.hidden)}
    return d.layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in modules)


def kv_bytes_per_token(d: LMDims, act: int) -> int:
    return 2 * d.layers * d.kv * act


def batch_token_cap(max_batch_tokens: int, max_batch_kv_gib: float | None, kv_per_token: int) -> int:
    """The decode batch's token cap: search.max_batch_tokens, lowered to what search.max_batch_kv_gib
    of KV cache holds at this model's bytes per token (null: the token cap alone). A byte budget means
    the same memory for every family: 57 KB a token (Qwen2.5-VL-7B) or 524 KB (LLaVA-1.5-7B)."""
    if max_batch_kv_gib is None:
        return max_batch_tokens
    return max(1, min(max_batch_tokens, int(max_batch_kv_gib * GIB) // kv_per_token))


# --- activations ----------------------------------------------------------------------------------


def inference_transient(d: LlavaDims, images: int, rows: int, length: int, act: int) -> int:
    """The largest short-lived tensors of a no-grad forward of `rows` sequences of `length` tokens (a
    prefill). Vision phase: the tower keeps every layer's hidden states (LLaVA picks one of them). LM
    phase: the input embeddings (held by the caller throughout), the padding mask (bool, and as float
    inside SDPA), and in one decoder layer the residual, the normed input and the MLP's act(gate), up and
    their product alive together."""
    v, lm = d.vision, d.lm
    vision = images * (v.patches + 1) * act * ((v.layers + 1) * v.width + 2 * v.mlp)
    tokens = rows * length
    mask = rows * length * length * (1 + act)
    layer = tokens * act * max(3 * lm.hidden + 3 * lm.intermediate, 3 * lm.hidden + 2 * lm.q + 2 * lm.kv)
    return max(vision, tokens * lm.hidden * act + mask + layer)


def saved_per_token_layer(d: LMDims, act: int, r: int, dropout: bool, modules: tuple[str, ...] = LORA_MODULES,
                          mask_bytes: int = 1) -> int:
    """Bytes autograd keeps per token and decoder layer when LoRA trains every linear layer (frozen base).

    A frozen linear layer saves nothing of its input; LoRA's A saves its (dropped-out) input, B the
    r-wide A output. RMSNorm saves its input as float32. SDPA saves q, k, v and its output; o_proj's
    LoRA saves the output's contiguous copy; the MLP saves gate (SiLU), SiLU(gate) and up (product),
    and down's LoRA the product. Dropout > 0 gives every LoRA its own dropped copy and its mask: a bool
    on CUDA (fused dropout), a tensor of the input's dtype on the CPU (`mask_bytes`). Flash / efficient
    attention also keeps a float32 log-sum-exp per head.
    """
    h, i = d.hidden, d.intermediate
    norms = 2 * 4 * h
    attention = act * (2 * d.q + 2 * d.kv) + 4 * d.heads
    mlp = act * 3 * i
    inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": d.q, "gate_proj": h, "up_proj": h, "down_proj": i}
    if dropout:
        lora_in = sum((act + mask_bytes) * inputs[m] for m in modules)
        unsaved = {"o_proj": 0, "down_proj": 0}  # their inputs are saved as dropout copies instead
    else:  # one saved input per distinct tensor: q/k/v share the normed input, gate/up theirs
        distinct = {("norm1" if m in ("q_proj", "k_proj", "v_proj") else "norm2" if m in ("gate_proj", "up_proj") else m)
                    for m in modules}
        lora_in = sum(act * h for k in distinct if k in ("norm1", "norm2"))
        unsaved = {}
    o_copy = act * d.q if "o_proj" in modules and "o_proj" not in unsaved else 0
    down_in = act * i if "down_proj" in modules and "down_proj" not in unsaved else 0
    return norms + attention + mlp + lora_in + o_copy + down_in + len(modules) * act * r


def logits_peak(positions: int, vocab: int, act: int) -> int:
    """The log-softmax over the vocabulary in float32: forward holds the logits (model dtype), their
    float32 copy and the log-probs; backward the saved log-probs, their gradient and its result."""
    forward = act + 4 + (4 if act != 4 else 0)
    return positions * vocab * max(forward, 12)


# --- stages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchShape:
    prompts_per_batch: int
    beam_width: int
    candidates: int
    keep_top: int
    keep_bottom: int
    max_sentences: int
    sentence_tokens: int  # max_new_tokens_per_sentence
    answer_tokens: int  # max_answer_tokens
    max_batch_rows: int
    max_batch_tokens: int


def live_nodes(s: SearchShape) -> int:
    """Nodes a prompt keeps after a step: top + bottom when it has beam_width children, else all (< beam)."""
    return max(s.beam_width - 1, s.keep_top + s.keep_bottom, 1)


@dataclass(frozen=True)
class Step:
    """One search step (one sentence more for every live answer): the nodes it expands, the longest
    answer among them, and the sentence-cache tokens alive at its end (live paths + new children)."""

    nodes: int
    width: int
    cached_tokens: int


def cap_steps(s: SearchShape) -> list[Step]:
    """The steps at the config's caps: every sentence runs to max_new_tokens_per_sentence, every prompt
    keeps its most live nodes, no two paths share a sentence (the worst case)."""
    p, k, sent, live = s.prompts_per_batch, s.candidates, s.sentence_tokens, s.prompts_per_batch * live_nodes(s)
    steps = []
    for depth in range(s.max_sentences):
        nodes, width = (live if depth else p), min(depth * sent, s.answer_tokens)
        kept = depth + 1 < s.max_sentences  # the last depth keeps no sentence caches
        steps.append(Step(nodes, width, nodes * (width + (k * sent if kept else 0))))
    return steps


def search_peak(d: LlavaDims, s: SearchShape, prompt_tokens: int, act: int, clip_bytes: int = 0,
                steps: list[Step] | None = None) -> dict[str, int]:
    """Prefill of one prompt batch, then the decode batches: the prompts' KV prefix (shared by their rows),
    one decode batch (rows x (answer so far + one sentence of room), as many nodes as max_batch_rows and
    max_batch_tokens let in) and the sentence caches of `steps` (default: at the caps). The worst step
    is taken; the prefill's working set is gone before the first decode batch."""
    kvt = kv_bytes_per_token(d.lm, act)
    k, sent = s.candidates, s.sentence_tokens
    lp = d.image_tokens + prompt_tokens
    worst, best = -1, {}
    for step in steps if steps is not None else cap_steps(s):
        span = step.width + sent
        nodes = min(step.nodes, max(1, min(s.max_batch_rows // k, s.max_batch_tokens // (k * span))))
        rows = nodes * k
        parts = {"decode_kv": rows * span * kvt, "sentence_kv": step.cached_tokens * kvt,
                 # per layer while decoding: float32 attention scores and softmax, a row-selection copy
                 "decode_work": rows * d.lm.heads * (lp + span) * (4 + 4 + act) + rows * span * kvt // max(d.lm.layers, 1)}
        if sum(parts.values()) > worst:
            worst, best = sum(parts.values()), parts
    prefill = inference_transient(d, s.prompts_per_batch, s.prompts_per_batch, lp, act)
    phase = best if worst >= prefill else {"prefill_work": prefill}
    return {"weights": model_params(d) * act, "clip": clip_bytes, "prefix_kv": s.prompts_per_batch * lp * kvt, **phase}


def widest_search(d: LlavaDims, s: SearchShape, prompt_tokens: int, act: int, clip_bytes: int, budget: int,
                  most: int = 1024) -> SearchShape | None:
    """The search shape with the most prompts per batch, all their live nodes decoding in one batch,
    whose peak at the caps stays within `budget` bytes; None if even one prompt does not fit. More rows
    per decode step use a GPU better while reading its weights dominates a step."""
    best = None
    for prompts in range(1, most + 1):
        rows = prompts * live_nodes(s) * s.candidates
        shape = SearchShape(**{**s.__dict__, "prompts_per_batch": prompts, "max_batch_rows": rows,
                               "max_batch_tokens": rows * (s.answer_tokens + s.sentence_tokens)})
        if total(search_peak(d, shape, prompt_tokens, act, clip_bytes)) > budget:
            break
        best = shape
    return best


def reference_peak(d: LlavaDims, pairs: int, prompt_tokens: int, answer_tokens: int, act: int,
                   answer_logits: bool) -> dict[str, int]:
    """The reference pass: a no-grad forward of chosen + rejected (the vision tower once per pair's
    image), log-softmax for the labels."""
    rows, length = 2 * pairs, d.image_tokens + prompt_tokens + answer_tokens + 1
    positions = rows * (answer_tokens + 1) if answer_logits else rows * length
    # logits (model dtype), their float32 copy, the log-probs; the embeddings and the mask still held
    logits = positions * d.lm.vocab * (act + 4 + (4 if act != 4 else 0))
    held = rows * length * d.lm.hidden * act + rows * length * length
    return {"weights": model_params(d) * act,
            "working": max(inference_transient(d, pairs, rows, length, act), logits + held)}


@dataclass(frozen=True)
class Training:
    pairs: int  # dpo.batch_size: pairs per micro-batch
    lora_r: int
    lora_dropout: bool
    modules: tuple[str, ...] = LORA_MODULES
    strategy: str = "single"  # single | ddp | zero2 | zero3 | zero3_offload
    devices: int = 1
    reference: str = "precomputed"  # precomputed | adapter_disabled | frozen_copy
    checkpointing: bool = False
    answer_logits: bool = False  # log-softmax over answer positions only
    bucket: int = 16_777_216  # ZeRO reduce_bucket_size (elements)
    dropout_mask_bytes: int = 1  # CUDA's fused dropout keeps a bool mask; the CPU's a tensor of the input dtype


def lora_state_bytes(n: int, t: Training) -> int:
    """LoRA parameters, gradients and AdamW's two moments. Without DeepSpeed all float32 (peft keeps the
    adapter in float32), 16 B/param, DDP adds its gradient buckets (4 B). DeepSpeed bf16: 2 B weights
    kept whole below ZeRO-3, 2 B gradients and 12 B fp32 master + moments partitioned over the devices."""
    if t.strategy == "single":
        return 16 * n
    if t.strategy == "ddp":
        return 20 * n
    parts = max(t.devices, 1)
    if t.strategy == "zero2":
        return 2 * n + (2 + 12) * n // parts + 2 * t.bucket
    if t.strategy == "zero3":
        return 16 * n // parts + 2 * t.bucket
    if t.strategy == "zero3_offload":
        return 2 * t.bucket
    raise ValueError(f"unknown strategy {t.strategy!r}")


def dpo_peak(d: LlavaDims, t: Training, prompt_tokens: int, answer_tokens: int, act: int) -> dict[str, int]:
    """One DPO step on chosen + rejected (one concatenated forward) at the longest answers."""
    weights = model_params(d) * act
    copies = 2 if t.reference == "frozen_copy" else 1
    if t.strategy.startswith("zero3"):  # partitioned; about two layers gathered at a time
        layer = (lm_params(d.lm) // max(d.lm.layers, 1)) * act
        weights = (0 if t.strategy == "zero3_offload" else weights // max(t.devices, 1)) + 2 * layer
    rows, length = 2 * t.pairs, d.image_tokens + prompt_tokens + answer_tokens + 1
    tokens = rows * length
    per_layer = saved_per_token_layer(d.lm, act, t.lora_r, t.lora_dropout, t.modules, t.dropout_mask_bytes)
    per_layer_mask = rows * length * length * act  # SDPA keeps the padding mask as an additive bias
    if t.checkpointing:  # each layer's input kept, one layer's activations alive again during backward
        saved = tokens * d.lm.layers * d.lm.hidden * act + tokens * per_layer + per_layer_mask
    else:
        saved = d.lm.layers * (tokens * per_layer + per_layer_mask)
    saved += rows * length * length  # the bool mask the model builds once
    positions = rows * (answer_tokens + 1) if t.answer_logits else tokens
    peak = max(logits_peak(positions, d.lm.vocab, act), tokens * act * (3 * d.lm.intermediate + d.lm.hidden))
    if t.reference != "precomputed":  # a no-grad reference forward while the policy's graph is held
        peak = max(peak, positions * d.lm.vocab * (4 + act + 4 + (4 if act != 4 else 0)))
    return {"weights": copies * weights,
            "lora_states": lora_state_bytes(lora_params(d.lm, t.lora_r, t.modules), t),
            "activations": saved, "logits_and_backward": peak}


def eval_peak(d: LlavaDims, batch: int, prompt_tokens: int, new_tokens: int, act: int, clip_bytes: int = 0) -> dict[str, int]:
    """Greedy generation (transformers' generate): a growing KV cache of every row, the prefill's working
    set (the last position's logits only), and one layer's cache copy as the cache grows by a token."""
    kvt = kv_bytes_per_token(d.lm, act)
    tokens = d.image_tokens + prompt_tokens
    cache = batch * (tokens + new_tokens) * kvt
    return {"weights": model_params(d) * act, "clip": clip_bytes, "kv_cache": cache,
            "working": max(inference_transient(d, batch, batch, tokens, act), cache // max(d.lm.layers, 1))}


def largest_linear(d: LMDims) -> int:
    """Elements of the largest decoder weight LoRA can target (the MLP's)."""
    return max(d.hidden * d.intermediate, d.hidden * d.q)


def merge_host(d: LlavaDims, lora: int) -> dict[str, int]:
    """Host RAM of the merge (csr/merge/stage.py), which loads and merges on the CPU: the model and the
    adapter in float32, and the update statistics of one weight (float32 weight and delta, the stored
    update and the delta in float64, their products)."""
    return {"weights_fp32": model_params(d) * 4, "lora_fp32": lora * 4, "update_stats": 48 * largest_linear(d.lm)}


def merge_check_gpu(d: LlavaDims, lora: int, rows: int, length: int, answer_positions: int) -> dict[str, int]:
    """GPU memory of the merge's log-prob check when it runs there: the float32 model with its adapter,
    a no-grad float32 forward of `rows` sequences of `length` tokens, log-softmax at the answers."""
    logits = answer_positions * d.lm.vocab * (4 + 4)
    return {"weights_fp32": model_params(d) * 4 + lora * 4,
            "working": max(inference_transient(d, rows // 2, rows, length, 4), logits + rows * length * d.lm.hidden * 4)}


def total(parts: dict[str, int]) -> int:
    return sum(parts.values())


def fits(need: int, device: int, headroom: float = HEADROOM) -> bool:
    """A peak of `need` bytes fits a device of `device` bytes with `headroom` of it left free."""
    return need <= (1 - headroom) * device


def over_device(totals: dict[str, int], device: int | None, headroom: float = HEADROOM) -> list[str]:
    """The stages whose planned peak does not fit the device (none without a device: the CPU)."""
    return [] if not device else [stage for stage, need in totals.items() if not fits(need, device, headroom)]


def start_warning(totals: dict[str, int], device: int | None, headroom: float = HEADROOM) -> str | None:
    """The one line `csr` logs at start when a stage's plan exceeds the GPU it runs on; None when every
    stage fits or there is no GPU to compare with. The merge is not among `totals`: it moves to the
    CPU by itself when it does not fit."""
    over = over_device(totals, device, headroom)
    if not over:
        return None
    stages = ", ".join(f"{stage} {totals[stage] / GIB:.1f} GiB" for stage in over)
    return (f"csr-plan predicts more than {1 - headroom:.0%} of this GPU's {device / GIB:.1f} GiB for: {stages}; "
            "the run may stop out of memory (csr-plan with the same overrides shows the parts; lower "
            "search.max_batch_kv_gib or search.prompts_per_batch, or set dpo.gradient_checkpointing=true)")
