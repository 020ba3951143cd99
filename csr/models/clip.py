"""open_clip models for the image-relevance reward R_I, loaded from local files only."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from csr.errors import CSRError
from csr.io import safetensors_write_errors


@dataclass
class ClipBundle:
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]  # the eval transform
    tokenizer: Callable[[list[str]], torch.Tensor]


def load_clip(
    arch: str, weights: str | None, config_json: str | None = None, device: str = "cpu"
) -> ClipBundle:
    """Create an open_clip model; `weights` is a local file (safetensors, .pt or .bin), never a hub tag."""
    if config_json is not None:
        if not os.path.isfile(config_json):
            raise CSRError(f"reward.clip.config_json={config_json!r}: file not found")
        # open_clip registers a config under its file stem, so the stem is the architecture name.
        if Path(config_json).stem != arch:
            raise CSRError(
                f"reward.clip.arch={arch!r} does not match reward.clip.config_json={config_json!r} "
                f"(architecture name is the file stem {Path(config_json).stem!r})"
            )
        open_clip.add_model_config(config_json)
    if arch not in open_clip.list_models():
        raise CSRError(
            f"reward.clip.arch={arch!r}: unknown open_clip architecture (give reward.clip.config_json)"
        )
    # A non-file `pretrained` would be treated as a tag and downloaded; offline we only accept files.
    if weights is not None and not os.path.isfile(weights):
        raise CSRError(f"reward.clip.weights={weights!r}: file not found")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights, device=device)
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        raise CSRError(
            f"reward.clip.weights={weights!r} do not match architecture reward.clip.arch={arch!r}: {err}"
        ) from err
    model.eval()
    # Custom configs name no HF tokenizer, so this is open_clip's bundled BPE (no network needed).
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=tokenizer)


def save_clip(model: torch.nn.Module, out_path: str) -> None:
    """Write the state dict as safetensors; open_clip loads `pretrained=<file>.safetensors` directly."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with safetensors_write_errors(out_path):
        save_file(state, out_path)


class ClipScorer:
    """Computes R_I = max(100 * cos(image, text), 0), encoding each image only once per key."""

    def __init__(self, bundle: ClipBundle, device: str = "cpu") -> None:
        self.bundle = bundle
        self.device = device
        self._images: dict[str, torch.Tensor] = {}
        self.image_encodes = 0  # real image forwards; lets tests check the cache works

    @torch.no_grad()
    def image_embedding(self, key: str, image: Image.Image) -> torch.Tensor:
        """Normalised embedding of shape [embed_dim], cached by `key`."""
        if key not in self._images:
            pixels = self.bundle.preprocess(image).unsqueeze(0).to(self.device)
            self._images[key] = self.bundle.model.encode_image(pixels, normalize=True)[0]
            self.image_encodes += 1
        return self._images[key]

    @torch.no_grad()
    def relevance(self, key: str, image: Image.Image, texts: list[str]) -> list[float]:
        """One score per text, all texts encoded in a single batch."""
        if not texts:
            return []
        image_emb = self.image_embedding(key, image)
        tokens = self.bundle.tokenizer(texts).to(self.device)
        text_emb = self.bundle.model.encode_text(tokens, normalize=True)
        scores = (100.0 * text_emb @ image_emb).clamp(min=0.0)
        return scores.tolist()

    def clear_cache(self) -> None:
        self._images.clear()
