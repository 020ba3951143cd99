"""The check's models and data: full-width random-weight VLMs built from the published configs
(configs/*.json), processors around a synthetic tokenizer of the real vocabulary size, images, prompts
and DPO pairs; narrow copies of the same configs for --cpu-dry-run.

Random weights change no speed or memory figure: the arithmetic and the tensors are the 7B's. The real
tokenizers are not on the machine (no hub), so the tokenizer is a byte-level BPE with the real special
tokens at their real ids, padded with filler words to the real vocabulary size: every id a random
model writes decodes to text, and the LM head and token choice are as wide as the real ones.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerFast, Qwen2VLImageProcessor

from csr.core.io import atomic_write_text
from csr.models.families import get_family
from csr.models.families.llava import make_processor as llava_processor
from csr.models.tiny import train_byte_bpe

CONFIGS = Path(__file__).resolve().parent / "configs"
MODELS = {"llava": "llava-1.5-7b", "qwen": "qwen2.5-vl-7b"}
IMAGE_SIZE = (640, 480)  # a COCO-sized photo: 576 tokens on LLaVA-1.5, 391 on Qwen2.5-VL
PROMPTS = ["Describe this image in detail.", "What is in this picture? Describe it.",
           "Provide a detailed description of the image.", "What do you see in the image?"]
WORDS = ["red", "blue", "green", "yellow", "circle", "square", "triangle", "star", "left", "right", "top",
         "bottom", "small", "large", "next", "to", "the", "a", "is", "there"]


@dataclass
class Spec:
    name: str  # configs/<name>.json
    family: str  # csr's model.family
    preset: str  # conf/model/<preset>.yaml
    config: PretrainedConfig
    generation: dict
    processor: dict
    tokens: dict[str, int]  # special token -> its id in the real vocabulary
    expected_params: int | None  # the published model's parameter count (None for a narrow copy)
    narrow: bool


NARROW_VOCAB = 2048  # the dry run's vocabulary: the LM head and token choice dominate a narrow model on a CPU


def _remap_ids(node, remap: dict[int, int]):
    """Every `*token_id(s)` / `*token_index` value of a config, its ids moved by `remap`."""
    if isinstance(node, dict):
        return {k: (_remap_ids(v, remap) if isinstance(v, dict) else
                    [remap.get(i, i) for i in v] if isinstance(v, list) and k.endswith(("token_id", "token_ids")) else
                    remap.get(v, v) if isinstance(v, int) and k.endswith(("token_id", "token_index")) else v)
                for k, v in node.items()}
    return node


def narrow(raw: dict) -> dict:
    """The same architecture, 2 layers, a small width, a 2048-token vocabulary (the special tokens moved
    to its top) and small images: what the CPU dry run can afford. The head layout (grouped-query
    ratio, mRoPE), the image pipeline and the token roles stay."""
    raw = json.loads(json.dumps(raw))
    top = sorted(i for i in raw["tokens"].values() if i >= NARROW_VOCAB)
    remap = {i: NARROW_VOCAB - len(top) + k for k, i in enumerate(top)}
    raw["tokens"] = {t: remap.get(i, i) for t, i in raw["tokens"].items()}
    raw["generation"] = _remap_ids(raw["generation"], remap)
    config = _remap_ids(raw["config"], remap)
    full_hidden = config.get("text_config", config).get("hidden_size", 4096)  # LLaVA's file leaves Llama's default
    if raw["family"] == "llava":
        config["text_config"].update(vocab_size=NARROW_VOCAB, hidden_size=128, intermediate_size=344,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
        config["vision_config"].update(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=2, projection_dim=64, image_size=112)
        raw["processor"]["image_size"] = 112  # 64 image tokens
    else:  # Qwen2.5-VL: 7 query heads per key/value head and head_dim 16 (mRoPE sections sum to 8)
        config.update(vocab_size=NARROW_VOCAB, hidden_size=112, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=7, num_key_value_heads=1, max_window_layers=2,
                      rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        config["vision_config"].update(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                       out_hidden_size=112, fullatt_block_indexes=[1])
        raw["processor"]["max_pixels"] = 224 * 224  # a 640x480 image: 48 tokens
    # Weights drawn at the full width's scale per unit of width (std x sqrt(full / narrow hidden)), so that
    # attention and the logits are as peaked as the 7B's: at std 0.02 a 128-wide model attends almost
    # uniformly and writes near-uniform log-probs, and a wrong position or context would barely show.
    text = config.get("text_config", config)
    config["initializer_range"] = text["initializer_range"] = 0.02 * math.sqrt(full_hidden / text["hidden_size"])
    raw["config"] = config
    return raw


def load_spec(model: str, narrow_copy: bool = False, text_layers: int | None = None) -> Spec:
    """configs/<MODELS[model]>.json as a transformers config (narrowed for the dry run; `text_layers`:
    the same widths with fewer decoder layers, what the merge check runs on)."""
    raw = json.loads((CONFIGS / f"{MODELS[model]}.json").read_text())
    exact = not narrow_copy and text_layers is None
    if narrow_copy:
        raw = narrow(raw)
    config = json.loads(json.dumps(raw["config"]))
    if text_layers is not None:
        text = config.get("text_config", config)
        text["num_hidden_layers"] = text_layers
        if "max_window_layers" in config:
            config["max_window_layers"] = text_layers
    config = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    return Spec(MODELS[model], raw["family"], raw["preset"], config, raw["generation"], raw["processor"],
                raw["tokens"], raw["expected_params"] if exact else None, narrow_copy)


# -- tokenizer and processor ----------------------------------------------------------------------------


def full_vocab_tokenizer(vocab_size: int, specials: dict[str, int]) -> Tokenizer:
    """A byte-level BPE trained on a small corpus (decode(encode(text)) == text), its tokens moved off the
    special ids, filler words (" w<id>") in every other slot up to `vocab_size`."""
    base = json.loads(train_byte_bpe([]).to_str())
    learned = sorted(base["model"]["vocab"], key=base["model"]["vocab"].get)
    free = (i for i in range(vocab_size) if i not in specials.values())
    vocab = dict(zip(learned, free, strict=False))
    vocab.update((f"\u0120w{i}", i) for i in free)  # \u0120: byte-level BPE's space
    vocab.update(specials)
    base["model"]["vocab"] = vocab
    base["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in sorted(specials.items(), key=lambda x: x[1])]
    return Tokenizer.from_str(json.dumps(base))


def build_processor(spec: Spec):
    """The family's processor with the published image settings and the synthetic tokenizer."""
    family = get_family(spec.family)
    backend = full_vocab_tokenizer(spec.config.get_text_config().vocab_size, spec.tokens)
    p = spec.processor
    if spec.family == "llava":
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                            unk_token="<unk>", pad_token="<pad>", extra_special_tokens=["<image>"],
                                            add_bos_token=True, add_eos_token=False)
        return llava_processor(tokenizer, p["image_size"], p["patch_size"])
    named = ("<|im_end|>", "<|endoftext|>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        extra_special_tokens=[t for t in spec.tokens if t not in named])
    shared = dict(patch_size=p["patch_size"], merge_size=p["merge_size"], temporal_patch_size=p["temporal_patch_size"],
                  size={"shortest_edge": p["min_pixels"], "longest_edge": p["max_pixels"]})
    return family.processor_class(image_processor=Qwen2VLImageProcessor(**shared), tokenizer=tokenizer,
                                  video_processor=family.video_processor_class(**shared),
                                  chat_template=family.chat_template)


def build_model(spec: Spec, device: str, dtype: torch.dtype, seed: int = 0):
    """Random weights (transformers' own init), built directly on `device`: a 7B inits in seconds on a GPU."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = get_family(spec.family).model_class._from_config(spec.config, dtype=dtype)
    for key, value in spec.generation.items():
        setattr(model.generation_config, key, value)
    return model.eval()


# -- data -------------------------------------------------------------------------------------------------


def write_images(out: Path, n: int, seed: int = 0) -> list[str]:
    """`n` COCO-sized images of coloured shapes under out/; returns their file names."""
    out.mkdir(parents=True, exist_ok=True)
    rng, names = random.Random(seed), []
    for i in range(n):
        image = Image.new("RGB", IMAGE_SIZE, tuple(rng.randint(60, 200) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(2, 6)):
            x, y, r = rng.randint(0, 560), rng.randint(0, 400), rng.randint(20, 80)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + r, y + r), fill=tuple(rng.randint(0, 255) for _ in range(3)))
        names.append(f"{i:04d}.png")
        image.save(out / names[-1])
    return names


def answer_text(rng: random.Random, sentences: int) -> str:
    """`sentences` sentences of common words (about 9 tokens each)."""
    return " ".join(f"There is a {rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)}."
                    for _ in range(sentences))


def write_pairs(path: Path, images: list[str], n: int, sentences: int, seed: int = 0) -> list[dict]:
    """`n` DPO pairs in pairs.jsonl's format (prompt, image, chosen, rejected), answers of `sentences` sentences."""
    rng = random.Random(seed)
    pairs = [{"id": f"p{i}", "image": images[i % len(images)], "prompt": PROMPTS[i % len(PROMPTS)],
              "chosen": answer_text(rng, sentences), "rejected": answer_text(rng, sentences)} for i in range(n)]
    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in pairs))
    return pairs
