"""Tiny random-weight VLM (any family) and open_clip checkpoints, so the whole pipeline runs offline on a CPU.

They are saved in the same formats as real checkpoints and must be loaded back through
`load_model` / `load_clip`, so tests exercise the real loading code path.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from csr.config.choices import FAMILIES
from csr.core.errors import CSRError
from csr.data.tiny import write_tiny_prompts
from csr.models.clip import load_clip, save_clip
from csr.models.families import Family, get_family

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
IMAGE_SIZE = 32
PATCH_SIZE = 8
CLIP_ARCH = "tiny-clip"
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "patch_size": PATCH_SIZE},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
MARKER = "tiny.json"  # written last, so its presence means every file is complete
STARTED = ".csr-make-tiny"  # written first by csr-make-tiny: a directory it made (a killed build is resumed)


@dataclass
class TinyPaths:
    llava: str
    clip_weights: str
    clip_config: str
    clip_arch: str


def train_byte_bpe(special_tokens: list[str], unk_token: str | None = None, corpus: list[str] | None = None,
                   vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE trained on the tiny corpus: decode(encode(text)) == text, and punctuation never
    merges into words. Every family's tiny tokenizer wraps one, with its own special tokens."""
    backend = Tokenizer(models.BPE(unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus or _corpus(), trainer)
    return backend


def build_chatml_tokenizer(special_tokens: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer shaped like Qwen2's (no bos, <|im_end|> the eos, <|endoftext|> the pad),
    with `special_tokens` (<|endoftext|> first, as at the real vocabulary's first special id)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(special_tokens), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in special_tokens if t not in ("<|im_end|>", "<|endoftext|>")],
    )


def _corpus() -> list[str]:
    """~200 simple image descriptions plus prompt words, so common text gets real BPE merges."""
    colors = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
    things = ["circle", "square", "triangle", "star", "line", "dog", "cat", "car", "tree", "house"]
    places = ["top left", "top right", "bottom left", "bottom right", "center", "middle"]
    rng = random.Random(0)  # fixed: the tokenizer must not depend on the weight seed
    sentences = [
        "USER: Describe the image. ASSISTANT: The image shows a picture.",
        "What is in the picture? Describe it in detail.",
    ]
    for _ in range(200):
        c1, c2 = rng.sample(colors, 2)
        t1, t2 = rng.sample(things, 2)
        place = rng.choice(places)
        sentences.append(
            rng.choice(
                [
                    f"There is a {c1} {t1} in the {place}.",
                    f"A {c1} {t1} is next to a {c2} {t2}.",
                    f"The image shows a {c1} {t1} and a {c2} {t2}.",
                    f"In the {place}, there are two {c1} {t1}s.",
                ]
            )
        )
    return sentences


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """The tiny LLaVA's tokenizer: byte-level BPE (train_byte_bpe) with Llama's special tokens."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(SPECIAL_TOKENS, "<unk>", corpus, vocab_size),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["<image>"],  # transformers 5 name for additional_special_tokens
        add_bos_token=True,  # like the Llama tokenizer of LLaVA-1.5
        add_eos_token=False,
    )
    return tokenizer


def _build_clip(clip_dir: str, seed: int) -> tuple[str, str]:
    config_path = os.path.join(clip_dir, f"{CLIP_ARCH}.json")
    weights_path = os.path.join(clip_dir, f"{CLIP_ARCH}.safetensors")
    with open(config_path, "w") as f:
        json.dump(CLIP_CONFIG, f, indent=2)
    torch.manual_seed(seed)
    bundle = load_clip(CLIP_ARCH, weights="random", config_json=config_path)
    save_clip(bundle.model, weights_path)
    return config_path, weights_path


def build_tiny(out_dir: str, seed: int = 0) -> TinyPaths:
    """Build (or reuse, if already complete for this seed) the tiny checkpoints under out_dir."""
    out_dir = os.path.abspath(out_dir)  # recorded paths must not depend on the caller's cwd
    marker = os.path.join(out_dir, MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            built = json.load(f)
        if built.get("seed") == seed:
            return TinyPaths(**built["paths"])
    llava_dir = os.path.join(out_dir, "llava")
    clip_dir = os.path.join(out_dir, "clip")
    os.makedirs(llava_dir, exist_ok=True)
    os.makedirs(clip_dir, exist_ok=True)
    get_family("llava").build_tiny(llava_dir, seed)
    clip_config, clip_weights = _build_clip(clip_dir, seed)
    paths = TinyPaths(
        llava=llava_dir, clip_weights=clip_weights, clip_config=clip_config, clip_arch=CLIP_ARCH
    )
    with open(marker, "w") as f:
        json.dump({"seed": seed, "paths": asdict(paths)}, f, indent=2)
    return paths


def build_tiny_family(out_dir: str, family: Family, seed: int = 0) -> str:
    """The tiny checkpoint of `family` under out_dir/<its name> (built, or reused if complete for this seed)."""
    model_dir = os.path.join(os.path.abspath(out_dir), family.name)
    marker = os.path.join(model_dir, MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f).get("seed") == seed:
                return model_dir
    os.makedirs(model_dir, exist_ok=True)
    family.build_tiny(model_dir, seed)
    with open(marker, "w") as f:
        json.dump({"seed": seed, "family": family.name}, f)
    return model_dir


def claim_out_dir(out: Path) -> None:
    """csr-make-tiny writes (and overwrites) its files only in a new or empty directory or one it made
    (its start marker, or the tiny.json it writes last); anything else is refused before it writes."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CSRError(f"{out}: {'it' if existing == out else f'part of the path ({existing})'} is a file, not a "
                       "directory: pass a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / STARTED).exists() and not (out / MARKER).exists():
        raise CSRError(f"{out} is not empty and was not made by csr-make-tiny (no {MARKER}): it writes prompts.json, "
                       "images and checkpoints there, overwriting what it finds; pass a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / STARTED).touch()


MAX_TINY_PROMPTS = 999_999  # six-digit image names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build tiny random-weight LLaVA and CLIP checkpoints, plus a few prompts and images."
    )
    # The same place conf/model/tiny_random.yaml and conf/data/tiny.yaml read from.
    parser.add_argument("out_dir", nargs="?", default=os.environ.get("CSR_TINY_DIR", ".tiny"),
                        help="where to write them (default: $CSR_TINY_DIR, else ./.tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=8, help="synthetic prompts written to OUT_DIR/data")
    parser.add_argument("--family", choices=FAMILIES, default="llava",
                        help="the model family; a family other than llava is written to OUT_DIR/<family>")
    args = parser.parse_args(argv)
    # Checked before anything is written: 0 or fewer prompts made a prompt file csr refuses later, an
    # enormous count ran until memory ran out, a seed past 64 bits ended in torch's traceback.
    if not 1 <= args.prompts <= MAX_TINY_PROMPTS:
        parser.error(f"--prompts {args.prompts}: give 1 to {MAX_TINY_PROMPTS} (the images are named 000000.png ...)")
    if not 0 <= args.seed < 2**63:
        parser.error(f"--seed {args.seed}: give an integer from 0 to 2**63 - 1")
    family = get_family(args.family)  # once, at the start: the family of the checkpoint built beside the tiny LLaVA
    try:
        claim_out_dir(Path(args.out_dir))
    except CSRError as err:
        raise SystemExit(f"csr-make-tiny: {err}") from None
    paths = asdict(build_tiny(args.out_dir, args.seed))
    if family.name != "llava":
        paths[family.name] = build_tiny_family(args.out_dir, family, args.seed)
    paths["prompts"] = str(write_tiny_prompts(os.path.join(args.out_dir, "data"), args.prompts, args.seed))
    print(json.dumps(paths, indent=2))


if __name__ == "__main__":
    main()
