"""Rendered ShapesWorld images held in memory for training (uint8, normalised per batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from csr.worlds.shapesworld.scenes import Scene, make

# open_clip's and CLIPImageProcessor's default normalisation (OpenAI CLIP).
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass
class Pool:
    scenes: list[Scene]
    pixels: torch.Tensor  # [N, 64, 64, 3] uint8
    seeds: list[int]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalised float images [B, 3, 64, 64] (what the processor would give)."""
        x = self.pixels[idx].permute(0, 3, 1, 2).float() / 255.0
        return (x - MEAN) / STD


def render_pool(first_seed: int, n: int, cooccurrence: float, desc: str = "rendering") -> Pool:
    scenes, arrays, seeds = [], [], []
    for seed in tqdm(range(first_seed, first_seed + n), desc=desc, leave=False):
        scene, image = make(seed, cooccurrence)
        scenes.append(scene)
        arrays.append(np.asarray(image))
        seeds.append(seed)
    return Pool(scenes, torch.from_numpy(np.stack(arrays)), seeds)
