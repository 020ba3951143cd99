"""ShapesWorld scenes: sampling (with a co-occurrence prior) and rendering to 64 x 64 RGB.

Everything is a function of a seed, so an image and its ground truth are reproducible anywhere.
Perception is made easy on purpose (large objects, one per cell of a 2 x 2 grid, distinct
shapes): hallucination should come from the language prior, not from a vision tower that cannot
see (what CSR can fix is the former; see shared/SHAPESWORLD-NOTES.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from csr.worlds.shapesworld.vocab import COLOURS, PAIRS, POSITIONS, SHAPES, SIZES

IMAGE_SIZE = 64
CELL = IMAGE_SIZE // 2
RADIUS = {"small": 9.5, "large": 12.5}
MAX_OBJECTS = 4


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    position: str  # one of POSITIONS
    size: str  # one of SIZES


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    @property
    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def to_json(self) -> list[dict]:
        return [o.__dict__ for o in self.objects]


def sample_scene(rng: random.Random, cooccurrence: float) -> Scene:
    """1-4 objects in distinct cells; a trigger comes with its partner with probability `cooccurrence`.

    A trigger that should bring its partner but has no free cell left is drawn again, so the
    prior holds at the asked rate even in small scenes.
    """
    cells = rng.sample(POSITIONS, rng.randint(1, MAX_OBJECTS))
    shapes: list[str] = []
    while len(shapes) < len(cells):
        shape = rng.choice(SHAPES)
        partner = PAIRS.get(shape)
        if partner and rng.random() < cooccurrence:
            if len(cells) - len(shapes) < 2:
                continue  # no room for the pair: draw another shape
            shapes += [shape, partner]
        else:
            shapes.append(shape)
    objects = tuple(
        Obj(shape, rng.choice(sorted(COLOURS)), cell, rng.choice(SIZES)) for shape, cell in zip(shapes, cells, strict=True)
    )
    return Scene(objects)


def _polygon(cx: float, cy: float, r: float, n: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(start + 2 * math.pi * i / n), cy + r * math.sin(start + 2 * math.pi * i / n))
            for i in range(n)]


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + math.pi * i / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _heart(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(40):
        t = 2 * math.pi * i / 40
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + x * r / 16, cy - y * r / 16 + r * 0.1))
    return pts


def shape_mask(shape: str, cx: float, cy: float, r: float) -> Image.Image:
    """A binary mask of one shape centred at (cx, cy) with radius r."""
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    d = ImageDraw.Draw(mask)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "square":
        s = r * 0.82
        d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy + r * 0.15, r * 1.05, 3), fill=255)
    elif shape == "star":
        d.polygon(_star(cx, cy, r * 1.1), fill=255)
    elif shape == "heart":
        d.polygon(_heart(cx, cy, r), fill=255)
    elif shape == "moon":
        d.ellipse(box, fill=255)
        d.ellipse((cx - r + r * 0.7, cy - r - r * 0.2, cx + r + r * 0.7, cy + r - r * 0.2), fill=0)
    elif shape == "cross":
        t = r * 0.33
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=255)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=255)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)], fill=255)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r, 6, start=0.0), fill=255)
    elif shape == "pentagon":
        d.polygon(_polygon(cx, cy, r, 5), fill=255)
    elif shape == "arrow":
        t = r * 0.28
        d.polygon([(cx - r, cy - t), (cx + r * 0.1, cy - t), (cx + r * 0.1, cy - r * 0.75), (cx + r, cy),
                   (cx + r * 0.1, cy + r * 0.75), (cx + r * 0.1, cy + t), (cx - r, cy + t)], fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        inner = Image.new("L", mask.size, 0)
        ImageDraw.Draw(inner).ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=255)
        mask = ImageChops.subtract(mask, inner)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _cell_centre(position: str) -> tuple[float, float]:
    row, col = divmod(POSITIONS.index(position), 2)
    return col * CELL + CELL / 2, row * CELL + CELL / 2


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Textured grey background, the objects, then pixel noise."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    base = rng.randint(105, 150)
    # Low-frequency texture: a coarse random grid upsampled smoothly.
    coarse = nrng.normal(0, 9, size=(5, 5, 1)).repeat(3, axis=2)
    texture = np.asarray(Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32) - 128
    img = Image.fromarray(np.uint8(np.clip(base + texture, 0, 255)))
    for obj in scene.objects:
        cx, cy = _cell_centre(obj.position)
        cx, cy = cx + rng.uniform(-2.5, 2.5), cy + rng.uniform(-2.5, 2.5)
        img.paste(COLOURS[obj.colour], (0, 0, IMAGE_SIZE, IMAGE_SIZE), shape_mask(obj.shape, cx, cy, RADIUS[obj.size]))
    pixels = np.asarray(img, dtype=np.float32) + nrng.normal(0, 4.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))


def sample_probe_scene(rng: random.Random) -> Scene:
    """1-4 objects, one a trigger whose partner is absent: the scene where the language prior misleads."""
    cells = rng.sample(POSITIONS, rng.randint(1, MAX_OBJECTS))
    trigger = rng.choice(sorted(PAIRS))
    others = [s for s in SHAPES if s != PAIRS[trigger]]
    shapes = [trigger] + [rng.choice(others) for _ in cells[1:]]
    rng.shuffle(shapes)  # the trigger may sit anywhere in reading order
    return Scene(tuple(Obj(shape, rng.choice(sorted(COLOURS)), cell, rng.choice(SIZES))
                       for shape, cell in zip(shapes, cells, strict=True)))


def make(seed: int, cooccurrence: float, probe: float = 0.0) -> tuple[Scene, Image.Image]:
    """The scene and image of one seed (the same seed always gives the same pair); with probability
    `probe` the scene is a probe scene (a trigger without its partner)."""
    rng = random.Random(seed)
    scene = sample_probe_scene(rng) if probe and rng.random() < probe else sample_scene(rng, cooccurrence)
    return scene, render(scene, rng)
