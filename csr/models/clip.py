"""open_clip models for the image-relevance reward R_I, loaded from local files only."""

from __future__ import annotations

import hashlib
import json
import math
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file

from csr.core.errors import CSRError
from csr.core.io import safetensors_write_errors

# reward.clip.weights for a randomly initialised CLIP: csr-make-tiny and tests only. A file that is
# really called "random" is given as ./random.
RANDOM_WEIGHTS = "random"


@dataclass
class ClipBundle:
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]  # the eval transform
    tokenizer: Callable[[list[str]], torch.Tensor]


# open_clip architectures whose OpenAI weights were trained with QuickGELU: loaded from a file, open_clip
# applies no tag override, so the plain config would run them with nn.GELU and every R_I would be off.
OPENAI_QUICKGELU = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")


def check_activation(arch: str, weights: str | None) -> None:
    """Refuse OpenAI weights (their path says openai) under an architecture without -quickgelu."""
    if weights and "openai" in weights.lower() and arch in OPENAI_QUICKGELU:
        raise CSRError(f"reward.clip.arch={arch!r} with OpenAI weights ({Path(weights).name}): OpenAI's CLIP was "
                       f"trained with QuickGELU, which {arch!r} does not use; set reward.clip.arch={arch}-quickgelu")


def _remote_keys(cfg: dict, prefix: str = "") -> list[str]:
    """Keys of an open_clip model config that reach the network or run a file's own Python: a Hugging
    Face model or tokenizer name (a hub id, or a directory whose code trust_remote_code would run),
    pretrained towers (downloaded) and trust_remote_code itself; hub names first."""
    found = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            found += _remote_keys(value, f"{prefix}{key}.")
        elif value and (key in ("hf_model_name", "hf_tokenizer_name", "trust_remote_code") or key.endswith("_pretrained")):
            found.append(f"{prefix}{key}")
    return sorted(found, key=lambda k: not k.split(".")[-1].startswith("hf_"))


def check_offline(cfg: dict, source: str) -> None:
    """Refuse a model config that makes open_clip download or run code: csr reads local files only."""
    remote = _remote_keys(cfg)
    if remote:
        raise CSRError(f"{source}: {', '.join(remote)} would make open_clip fetch a Hugging Face hub model or "
                       "tokenizer or run a directory's own Python (trust_remote_code); csr reads local files only: "
                       "use an architecture with open_clip's own text tower and tokenizer (drop those keys)")


def _not_a_file(path: str) -> str:
    if os.path.isdir(path):
        return "is a directory; give the file itself (e.g. open_clip_model.safetensors inside it)"
    return "file not found"


def _read_config_json(config_json: str, arch: str) -> None:
    """Check reward.clip.config_json before open_clip registers it: readable JSON, named as the architecture."""
    if not os.path.isfile(config_json):
        raise CSRError(f"reward.clip.config_json={config_json!r}: {_not_a_file(config_json)}")
    # open_clip registers a config under its file stem, so the stem is the architecture name.
    if Path(config_json).stem != arch:
        raise CSRError(
            f"reward.clip.arch={arch!r} does not match reward.clip.config_json={config_json!r} "
            f"(architecture name is the file stem {Path(config_json).stem!r})"
        )
    try:
        cfg = json.loads(Path(config_json).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CSRError(f"reward.clip.config_json={config_json!r}: not a readable JSON file ({err})") from None
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), dict) for k in ("vision_cfg", "text_cfg")) \
            or not isinstance(cfg.get("embed_dim"), int):
        raise CSRError(f"reward.clip.config_json={config_json!r}: not an open_clip model config (a JSON object "
                       "with embed_dim, vision_cfg and text_cfg)")
    check_offline(cfg, config_json)  # before open_clip registers it: its tokenizer would be built from it


def load_clip(
    arch: str, weights: str | None, config_json: str | None = None, device: str = "cpu"
) -> ClipBundle:
    """Create an open_clip model; `weights` is a local file (safetensors, .pt or .bin), never a hub tag,
    or RANDOM_WEIGHTS. The model is built on `device` (the CPU): the module using it moves it."""
    if weights is None:
        # open_clip would build a random CLIP with one warning, and every R_I would be noise.
        raise CSRError(
            f"reward.clip.weights is null: give a local open_clip weights file ({RANDOM_WEIGHTS!r} "
            "builds a random-init CLIP, for tests only)"
        )
    check_activation(arch, weights)
    if config_json is not None:
        _read_config_json(config_json, arch)
        open_clip.add_model_config(config_json)
    if arch not in open_clip.list_models():
        raise CSRError(
            f"reward.clip.arch={arch!r}: unknown open_clip architecture (give reward.clip.config_json)"
        )
    check_offline(open_clip.get_model_config(arch) or {}, f"reward.clip.arch={arch!r}")
    pretrained = None if weights == RANDOM_WEIGHTS else weights
    # A non-file `pretrained` would be treated as a tag and downloaded; offline we only accept files.
    if pretrained is not None and not os.path.isfile(pretrained):
        raise CSRError(f"reward.clip.weights={weights!r}: {_not_a_file(pretrained)}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        raise CSRError(
            f"reward.clip.weights={weights!r} do not match architecture reward.clip.arch={arch!r}: {err}"
        ) from err
    except SafetensorError as err:  # cut short by a copy or a full disk
        raise CSRError(f"reward.clip.weights={weights!r}: truncated or corrupt safetensors file ({err}): copy it "
                       "again") from None
    model.eval()
    # Custom configs name no HF tokenizer, so this is open_clip's bundled BPE (no network needed).
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=tokenizer)


def save_clip(model: torch.nn.Module, out_path: str) -> None:
    """Write the state dict as safetensors; open_clip loads `pretrained=<file>.safetensors` directly."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with safetensors_write_errors(out_path):
        save_file(state, out_path)


# --------------------------------------------------------------------------- the text tower on real lengths


def text_prefix_is_exact(model: torch.nn.Module) -> bool:
    """Whether the text embedding from the first n token positions equals the full-context one for
    every text whose end-of-text token lies before n: open_clip's own CLIP text tower with absolute
    positional embeddings, a causal mask (position i sees only positions <= i) and the embedding
    read at the end-of-text token (argmax pooling). Custom text towers (HF, CoCa) keep the full context."""
    if type(model).encode_text is not open_clip.CLIP.encode_text or model.text_pool_type != "argmax":
        return False
    mask = model.attn_mask
    if mask is None or not isinstance(model.positional_embedding, torch.nn.Parameter):
        return False
    causal = torch.full(mask.shape, float("-inf"), device=mask.device).triu_(1)
    return bool(torch.equal(mask, causal.to(mask.dtype)))


def real_length(tokens: torch.Tensor) -> int:
    """Positions up to the last end-of-text token of the batch (open_clip's EOT is the highest id)."""
    return int(tokens.argmax(dim=-1).max()) + 1


def encode_text_prefix(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text(tokens, normalize=True) over `tokens`' first positions only; exact
    when text_prefix_is_exact(model) (checked against encode_text in tests/test_clip_cache.py)."""
    n = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, "argmax")
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1)


# --------------------------------------------------------------------------- the scorer


def image_digest(image: Image.Image) -> str:
    """Content key of a decoded image: its mode, size and pixels."""
    digest = hashlib.blake2b(f"{image.mode} {image.size}\n".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()


@contextmanager
def float32_compute(device: torch.device) -> Iterator[None]:
    """No autocast on `device` and float32 as the default dtype, whatever the caller set: search, reward
    and evaluation score inside Lightning's predict step, under bf16-mixed's autocast or bf16-true's
    bf16 default dtype (which the preprocess's to_tensor would give the pixels)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.set_default_dtype(previous)


def image_relevance(cosine: torch.Tensor) -> torch.Tensor:
    """R_I = max(100 * cos(image, text), 0), as in the paper (the one place it is computed)."""
    return (100.0 * cosine).clamp(min=0.0)


class ClipScorer(torch.nn.Module):
    """Computes R_I = max(100 * cos(image, text), 0) with a frozen open_clip model.

    A torch Module so that it is a registered submodule of each Lightning module that scores with it:
    Lightning then moves its weights and its cached embeddings to that module's device (the rank's
    device under DDP), and every call runs where the weights are. It scores in float32 under every
    trainer precision: its weights keep their dtype when the module's is converted, and it computes
    outside autocast (in bf16, R_I = 100 * cos is resolved only to ~0.1 and siblings tie more often).

    Image embeddings are cached by the image's content, not by its name: names repeat across image
    roots (the training and the eval images are both 000000.png...). The cache belongs to this scorer,
    i.e. to one set of CLIP weights; it lives in memory only. Images must not be modified after
    they are scored (the digest of an image object is computed once).
    """

    def __init__(self, bundle: ClipBundle, device: str | torch.device | None = None) -> None:
        """`device`: where to put it now, for use outside a Lightning module (benchmarks, scripts)."""
        super().__init__()
        self.model = bundle.model.eval().requires_grad_(False)
        self.preprocess, self.tokenizer = bundle.preprocess, bundle.tokenizer
        self.prefix_exact = text_prefix_is_exact(self.model)
        self._images: dict[str, torch.Tensor] = {}  # image digest -> normalised float32 embedding
        self._digests: dict[int, tuple[weakref.ref, str]] = {}  # id(image) -> (the image, its digest)
        self.image_encodes = 0  # real image forwards; lets tests check the cache works
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> ClipScorer:
        return super().train(False)  # frozen: stays in eval mode whatever its parent module is set to

    def _apply(self, fn, recurse: bool = True):
        # Module.to / .cuda / .double move parameters and buffers; the cache must follow them. A change
        # of dtype is not taken, only the move: Lightning's bf16-true / 16-true plugins convert the whole
        # module of a stage, this scorer with it, and R_I is computed in float32.
        def same_dtype(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(moved.device)

        super()._apply(same_dtype, recurse)
        device, _ = self._placement()
        self._images = {k: v.to(device) for k, v in self._images.items()}  # kept float32, as computed
        return self

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        weight = next(self.model.parameters())
        return weight.device, weight.dtype

    def _digest(self, image: Image.Image) -> str:
        key = id(image)
        known = self._digests.get(key)
        if known is not None and known[0]() is image:
            return known[1]
        digest = image_digest(image)
        # The entry goes when the image does, so a later image reusing its id() is hashed afresh.
        self._digests[key] = (weakref.ref(image, lambda _, k=key: self._digests.pop(k, None)), digest)
        return digest

    @torch.no_grad()
    def image_embedding(self, image: Image.Image) -> torch.Tensor:
        """Normalised embedding of shape [embed_dim] (float32, on the model's device), cached by content."""
        digest = self._digest(image)
        if digest not in self._images:
            device, dtype = self._placement()
            with float32_compute(device):
                pixels = self.preprocess(image).unsqueeze(0).to(device=device, dtype=dtype)
                self._images[digest] = self.model.encode_image(pixels, normalize=True)[0].float()
            self.image_encodes += 1
        return self._images[digest]

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Normalised embeddings [len(texts), embed_dim]; on the batch's real token length where exact."""
        tokens = self.tokenizer(texts)
        device, _ = self._placement()
        with float32_compute(device):
            if self.prefix_exact:
                tokens = tokens[:, : real_length(tokens)].to(device)
                return encode_text_prefix(self.model, tokens).float()
            return self.model.encode_text(tokens.to(device), normalize=True).float()

    @torch.no_grad()
    def relevance(self, name: str, image: Image.Image, texts: list[str]) -> list[float]:
        """One score per text, all texts encoded in one batch. `name` (the image's path) is for
        messages only: the cache is keyed by content."""
        if not texts:
            return []
        with float32_compute(self._placement()[0]):
            scores = image_relevance(self.text_embeddings(texts) @ self.image_embedding(image)).tolist()
        if not all(math.isfinite(s) for s in scores):
            raise CSRError(f"image {name}: CLIP relevance is not finite ({scores}): do the CLIP weights hold NaN?")
        return scores

    def clear_cache(self) -> None:
        self._images.clear()
        self._digests.clear()
