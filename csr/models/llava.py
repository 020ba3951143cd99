"""Loading and saving LLaVA-style checkpoints in Hugging Face format, strictly offline."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration, PreTrainedConfig
from transformers.processing_utils import ProcessorMixin

from csr.errors import CSRError
from csr.io import safetensors_write_errors

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _model_type(path: str) -> str | None:
    """Read model_type from the raw config.json, so unknown architectures still give a clear error."""
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(path, local_files_only=True)
    except OSError as err:
        raise CSRError(
            f"model.path={path!r}: not a local checkpoint directory and not found in the "
            "Hugging Face cache (offline)"
        ) from err
    return config_dict.get("model_type")


def load_llava(
    path: str,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    device: str = "cpu",
) -> tuple[LlavaForConditionalGeneration, ProcessorMixin]:
    """Load a LLaVA model (in eval mode) and its processor from a local dir or the HF cache."""
    if dtype not in DTYPES:
        raise CSRError(f"model.dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    model_type = _model_type(path)
    if model_type != "llava":
        raise CSRError(f"model.path={path!r}: expected a llava checkpoint, found model_type={model_type!r}")
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            path,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            local_files_only=True,
            trust_remote_code=False,
        )
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except OSError as err:  # config present but weights or processor files missing
        raise CSRError(f"model.path={path!r}: incomplete checkpoint: {err}") from err
    except SafetensorError as err:  # e.g. a merged model cut short by a full disk or a copy
        raise CSRError(_corrupt_weights(path, err)) from None
    check_processor(model, processor, path)
    model.to(device)
    model.eval()
    # Batched generation appends new tokens on the right, so prompts must be padded on the left.
    processor.tokenizer.padding_side = "left"
    return model, processor


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


def check_processor(model: LlavaForConditionalGeneration, processor: ProcessorMixin, path: str) -> None:
    """A processor from another checkpoint fails late and obscurely (index errors, "image features
    and image tokens do not match") or, worse, runs on wrong token ids: refuse it at load."""
    problems = []
    embeddings = model.get_input_embeddings().num_embeddings
    if len(processor.tokenizer) > embeddings:
        problems.append(f"the tokenizer has {len(processor.tokenizer)} tokens but the model embeds only {embeddings}")
    image_token_id = getattr(processor, "image_token_id", None)
    if image_token_id != model.config.image_token_id:
        problems.append(f"the processor's image token id is {image_token_id}, the model's {model.config.image_token_id}")
    vision = model.config.vision_config
    probe = processor(images=Image.new("RGB", (vision.image_size, vision.image_size)), text=processor.image_token,
                      return_tensors="pt")
    if probe["pixel_values"].shape[-1] != vision.image_size:
        problems.append(f"the processor makes {probe['pixel_values'].shape[-1]}px images, the vision tower "
                        f"expects {vision.image_size}px")
    elif image_token_id == model.config.image_token_id:
        written = int((probe["input_ids"] == image_token_id).sum())
        expected = (vision.image_size // vision.patch_size) ** 2
        expected += model.config.vision_feature_select_strategy == "full"  # the CLS feature is kept too
        if written != expected:
            problems.append(f"the processor writes {written} image tokens per image, the model makes {expected} features")
    if problems:
        raise CSRError(f"model.path={path!r}: processor does not match the model: {'; '.join(problems)}")


def save_llava(model: LlavaForConditionalGeneration, processor: ProcessorMixin, out_dir: str) -> None:
    """Save model and processor side by side; transformers 5 always writes safetensors."""
    with safetensors_write_errors(out_dir):
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def special_token_ids(processor: ProcessorMixin) -> list[int]:
    """Ids generation must never emit (pad, bos, unk, image, extra specials); eos is kept so it can stop."""
    tokenizer = processor.tokenizer
    ids = set(tokenizer.all_special_ids)
    # Some checkpoints register <image> only as a special added token, not as a named special token.
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    image_token_id = getattr(processor, "image_token_id", None)
    if image_token_id is not None:
        ids.add(image_token_id)
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    return sorted(ids - eos_ids)
