"""Loading and saving VLM checkpoints in Hugging Face format, strictly offline, for any family."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoProcessor, PreTrainedConfig
from transformers.processing_utils import ProcessorMixin

from csr.config import choices
from csr.config.choices import FAMILIES
from csr.core.errors import CSRError
from csr.core.io import safetensors_write_errors
from csr.models.families import Family, family_of, get_family

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in choices.DTYPES}  # model.dtype: torch's names


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_checkpoint_files(path: str) -> None:
    """A local checkpoint directory holds a readable config.json naming its model_type and safetensors
    weights: pickle weights (pytorch_model.bin) are refused, as unpickling a stranger's file can run code."""
    directory = Path(path)
    if not directory.is_dir():
        return  # a model name in the Hugging Face cache: model_type() says whether it is there
    config = directory / "config.json"
    if not config.is_file():
        raise CSRError(f"model.path={path!r}: no config.json: not a Hugging Face checkpoint directory (config.json, "
                       "*.safetensors weights and the processor's files)")
    try:
        content = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CSRError(f"model.path={path!r}: config.json is not readable JSON ({err})") from None
    if not isinstance(content, dict) or not content.get("model_type"):
        raise CSRError(f"model.path={path!r}: config.json names no model_type: not a transformers model config")
    if not any(directory.glob("*.safetensors")):
        pickles = sorted(f.name for f in directory.iterdir() if f.suffix in PICKLE_SUFFIXES)
        raise CSRError(f"model.path={path!r}: incomplete checkpoint: no *.safetensors weights" + (
            f"; {', '.join(pickles)} is pickle, which csr does not load (unpickling can run code): convert it to "
            "safetensors" if pickles else ""))


def model_type(path: str) -> str | None:
    """Read model_type from the raw config.json, so unknown architectures still give a clear error."""
    check_checkpoint_files(path)
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(path, local_files_only=True)
    except OSError as err:
        raise CSRError(
            f"model.path={path!r}: not a local checkpoint directory and not found in the "
            "Hugging Face cache (offline)"
        ) from err
    return config_dict.get("model_type")


def load_model(
    path: str,
    family: Family | str = "llava",
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    device: str = "cpu",
) -> tuple[Any, ProcessorMixin]:
    """Load a VLM of `family` (in eval mode) and its processor from a local dir or the HF cache.

    family: the run's Family, resolved once from model.family (csr/loop.py; csr-plan and csr-make-tiny
    at their start), or for a caller outside a run (a test, a benchmark) a family's name. Here, and
    only here, the checkpoint's model_type is checked against it: every stage's model goes through
    this load."""
    if dtype not in DTYPES:
        raise CSRError(f"model.dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    fam = family if isinstance(family, Family) else get_family(family)
    found = model_type(path)
    if found not in fam.model_types:
        other = family_of(found)
        hint = (f": set model.family={other}" if other else
                f", which no csr family loads (families: {', '.join(FAMILIES)}; docs/adding-a-family.md)")
        raise CSRError(f"model.path={path!r}: model.family={fam.name} expects a {' or '.join(fam.model_types)} "
                       f"checkpoint, found model_type={found!r}{hint}")
    try:
        model, loading = fam.model_class.from_pretrained(
            path,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            local_files_only=True,
            trust_remote_code=False,
            output_loading_info=True,
            use_safetensors=True,
        )
    except OSError as err:  # config present but weights missing
        raise CSRError(f"model.path={path!r}: incomplete checkpoint: {err}") from err
    except SafetensorError as err:  # e.g. a merged model cut short by a full disk or a copy
        raise CSRError(_corrupt_weights(path, err)) from None
    except RuntimeError as err:  # a tensor of another shape than the config gives it
        if "ignore_mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
            raise
        raise CSRError(f"model.path={path!r}: a weight in the checkpoint has another shape than config.json gives "
                       "it (transformers' load report above names it): another model's weights, or a damaged copy") from None
    _check_weights(path, loading)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise CSRError(f"model.path={path!r}: the processor's files (tokenizer, image processor, chat template) are "
                       f"missing or unreadable: {str(err).split('. ')[0]}; copy them from the checkpoint this model "
                       "was made from") from None
    # Batched generation appends new tokens on the right, so prompts must be padded on the left.
    processor.tokenizer.padding_side = "left"
    problems = fam.processor_problems(model, processor)
    if problems:
        raise CSRError(f"model.path={path!r}: processor does not match the model: {'; '.join(problems)}")
    model.to(device)
    model.eval()
    return model, processor


def _check_weights(path: str, loading: dict[str, Any]) -> None:
    """Every weight the model has must come from the checkpoint, and every tensor in it must be used:
    transformers fills a missing one with random values and only reports it. Tied weights (lm_head to
    the embeddings) are not reported missing."""
    for kind, what in (("missing_keys", "missing from"), ("unexpected_keys", "not used by the model in"),
                       ("mismatched_keys", "of another shape in")):
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in loading.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise CSRError(f"model.path={path!r}: {len(keys)} weight(s) {what} the checkpoint: {shown}; it is "
                           "not the checkpoint config.json describes (another model, or a damaged copy)")


def _corrupt_weights(path: str, err: Exception) -> str:
    """Which weights file is unreadable, and the command that writes it again."""
    bad = next((f for f in sorted(Path(path).glob("*.safetensors")) if not _readable(f)), None)
    what = f"{bad} is truncated or corrupt" if bad else "a weights file is truncated or corrupt"
    run = re.fullmatch(r"iter_(\d+)", Path(path).parent.name) if Path(path).name == "merged" else None
    again = (f"csr stage=merge iteration={run[1]} run_dir={Path(path).parent.parent}" if run
             else "the stage or tool that wrote it")
    return f"model.path={path!r}: {what} ({err}): rerun {again}"


def _readable(file: Path) -> bool:
    try:
        with safe_open(str(file), "pt") as f:
            f.keys()
        return True
    except (SafetensorError, OSError):
        return False


def save_model(model: Any, processor: ProcessorMixin, out_dir: str) -> None:
    """Save model and processor side by side; transformers 5 always writes safetensors."""
    with safetensors_write_errors(out_dir):
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def special_token_ids(processor: ProcessorMixin, end_ids: set[int] | None = None) -> list[int]:
    """Ids generation must never emit (pad, bos, unk, image, extra specials); the tokens that end an
    answer (`end_ids`, by default the tokenizer's eos) are kept so it can stop."""
    tokenizer = processor.tokenizer
    end_ids = {tokenizer.eos_token_id} if end_ids is None else end_ids
    ids = set(tokenizer.all_special_ids)
    # Some checkpoints register <image> only as a special added token, not as a named special token.
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    image_token_id = getattr(processor, "image_token_id", None)
    if image_token_id is not None:
        ids.add(image_token_id)
    return sorted(ids - end_ids)
