"""Pre-training the vision tower as a per-cell classifier (shape, colour, size of each of 4 cells).

A tower trained only through the language loss learns too little to see shapes apart (the
prototype's first round); supervised pre-training makes perception reliable, so what remains
for CSR to fix is the language prior.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from csr.worlds.shapesworld.pool import Pool
from csr.worlds.shapesworld.vocab import COLOURS, POSITIONS, SHAPES, SIZES

log = logging.getLogger(__name__)


def cell_labels(pool: Pool, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 4] targets for shape / colour / size per cell; index 0 means "empty"."""
    shape = torch.zeros(len(idx), 4, dtype=torch.long)
    colour, size = shape.clone(), shape.clone()
    colours = sorted(COLOURS)
    for b, i in enumerate(idx.tolist()):
        for obj in pool.scenes[i].objects:
            c = POSITIONS.index(obj.position)
            shape[b, c] = SHAPES.index(obj.shape) + 1
            colour[b, c] = colours.index(obj.colour) + 1
            size[b, c] = SIZES.index(obj.size) + 1
    return shape, colour, size


class CellHeads(nn.Module):
    def __init__(self, width: int, grid: int):
        super().__init__()
        self.grid = grid
        self.shape = nn.Linear(width, len(SHAPES) + 1)
        self.colour = nn.Linear(width, len(COLOURS) + 1)
        self.size = nn.Linear(width, len(SIZES) + 1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, w = tokens.shape
        g = self.grid
        # Mean over each cell's patches: [B, g, g, W] -> [B, 2, g/2, 2, g/2, W] -> [B, 4, W]
        cells = tokens.view(b, 2, g // 2, 2, g // 2, w).mean(dim=(2, 4)).reshape(b, 4, w)
        return self.shape(cells), self.colour(cells), self.size(cells)


def pretrain_tower(visual: nn.Module, pool: Pool, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Train `visual` (an open_clip VisionTransformer) in place; returns held-out accuracies."""
    torch.manual_seed(seed)
    visual.output_tokens = True
    grid = int(visual.grid_size[0])
    heads = CellHeads(visual.transformer.width, grid)
    params = list(visual.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    n_train = len(pool.scenes) - 512  # the last 512 images are held out
    loss_fn = nn.CrossEntropyLoss()
    visual.train()
    for _ in tqdm(range(steps), desc="vision tower"):
        idx = torch.randint(0, n_train, (batch_size,))
        targets = cell_labels(pool, idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, tokens = visual(pool.batch(idx))
            logits = heads(tokens.float())
        loss = sum(loss_fn(lg.float().reshape(-1, lg.shape[-1]), t.reshape(-1)) for lg, t in zip(logits, targets, strict=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    visual.eval()
    idx = torch.arange(n_train, len(pool.scenes))
    with torch.no_grad():
        _, tokens = visual(pool.batch(idx))
        preds = [lg.argmax(-1) for lg in heads(tokens)]
    targets = cell_labels(pool, idx)
    visual.output_tokens = False
    names = ("shape", "colour", "size")
    metrics = {f"tower/{n}_accuracy": float((p == t).float().mean()) for n, p, t in zip(names, preds, targets, strict=True)}
    log.info("vision tower: %s", metrics)
    return metrics
