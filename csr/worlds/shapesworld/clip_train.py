"""Training ShapesWorld's CLIP: the pre-trained tower (frozen) + a small text encoder, sentence level.

Sigmoid loss over every (image, sentence) pair of a batch, with hard negatives that differ from a
true sentence only where hallucinations do: an absent partner, another shape in the same colour
and cell, another colour. R_I is then high for a true sentence and low for a hallucinated one.
"""

from __future__ import annotations

import logging
import random

import torch
import torch.nn.functional as F
from tqdm import tqdm

from csr.worlds.shapesworld.pool import Pool
from csr.worlds.shapesworld.scenes import Obj, Scene
from csr.worlds.shapesworld.text import sentence
from csr.worlds.shapesworld.vocab import COLOURS, PAIRS, POSITIONS, SHAPES, SIZES

log = logging.getLogger(__name__)


def negatives(scene: Scene, rng: random.Random) -> list[tuple[Obj, str]]:
    """False objects for a scene, each tagged with the kind of error it is."""
    present = scene.shapes
    absent = [s for s in SHAPES if s not in present]
    obj = rng.choice(scene.objects)
    out = [(Obj(rng.choice(absent), obj.colour, obj.position, obj.size), "shape_swap")]
    others = [c for c in sorted(COLOURS) if c != obj.colour]
    out.append((Obj(obj.shape, rng.choice(others), obj.position, obj.size), "colour_swap"))
    missing = [PAIRS[s] for s in present if s in PAIRS and PAIRS[s] not in present]
    shape = rng.choice(missing) if missing else rng.choice(absent)
    kind = "absent_partner" if missing else "absent"
    out.append((Obj(shape, rng.choice(sorted(COLOURS)), rng.choice(POSITIONS), rng.choice(SIZES)), kind))
    return out


def is_true(obj: Obj, scene: Scene) -> bool:
    """A sentence is true when its shape, colour and cell match an object (size is not judged)."""
    return any((o.shape, o.colour, o.position) == (obj.shape, obj.colour, obj.position) for o in scene.objects)


def sentence_batch(pool: Pool, idx: list[int], rng: random.Random) -> tuple[list[str], torch.Tensor, list[str]]:
    texts, objs, kinds = [], [], []
    for i in idx:
        scene = pool.scenes[i]
        for obj in rng.sample(scene.objects, min(2, len(scene.objects))):
            objs.append(obj)
            kinds.append("true")
        for obj, kind in negatives(scene, rng):
            objs.append(obj)
            kinds.append(kind)
    texts = [sentence(o, rng) for o in objs]
    labels = torch.tensor([[float(is_true(o, pool.scenes[i])) for o in objs] for i in idx])
    return texts, labels, kinds


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())


def train_clip(model, tokenizer, pool: Pool, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Train the text side (and the image projection) of an open_clip model in place."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    for p in model.visual.parameters():
        p.requires_grad_(False)
    model.visual.proj.requires_grad_(True)
    scale, bias = torch.nn.Parameter(torch.tensor(10.0)), torch.nn.Parameter(torch.tensor(-5.0))
    params = [p for p in model.parameters() if p.requires_grad] + [scale, bias]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    n_train = len(pool.scenes) - 512
    model.train()
    model.visual.eval()
    for _ in tqdm(range(steps), desc="clip"):
        idx = rng.sample(range(n_train), batch_size)
        texts, labels, _ = sentence_batch(pool, idx, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = F.normalize(model.encode_image(pool.batch(torch.tensor(idx))).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)
        logits = scale * img @ txt.T + bias
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return evaluate_clip(model, tokenizer, pool, range(n_train, len(pool.scenes)), seed)


@torch.no_grad()
def evaluate_clip(model, tokenizer, pool: Pool, indices, seed: int) -> dict:
    """AUC of R_I: true sentences against each kind of false one, on held-out images."""
    rng = random.Random(seed + 1)
    scores: dict[str, list[float]] = {}
    for i in indices:
        texts, labels, kinds = sentence_batch(pool, [i], rng)
        img = F.normalize(model.encode_image(pool.batch(torch.tensor([i]))), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        r_i = (100 * img @ txt.T).clamp(min=0)[0]
        for r, label, kind in zip(r_i.tolist(), labels[0].tolist(), kinds, strict=True):
            scores.setdefault("true" if label else kind, []).append(r)
    pos = torch.tensor(scores.pop("true"))
    metrics = {f"clip/auc_{kind}": auc(pos, torch.tensor(v)) for kind, v in sorted(scores.items())}
    metrics["clip/auc_all"] = auc(pos, torch.tensor([x for v in scores.values() for x in v]))
    metrics["clip/mean_r_i_true"] = float(pos.mean())
    log.info("clip: %s", metrics)
    return metrics
