"""ShapesWorld splits on disk, in the formats the rest of csr reads.

A split is a range of seeds, so it is the same on every machine: written on first use
(`ensure_split`) as PNG images, a prompt file in the reference format, the ground truth, and POPE
question files. What is written is a pure function of (split, size): a split is always written whole
at the size asked for (the held-out splits at the fixed HELD_OUT_SIZE, of which an evaluation takes a
prefix), never grown from an earlier smaller write, because POPE's "popular" negatives are ranked over
the whole split and a shuffled prompt pool is drawn from all of it. Held-out splits are where the co-occurrence prior misleads, as COCO is for LLaVA-1.5
(CHAIR_S 48.8): half of their scenes are probe scenes (a trigger without its partner), the other
half break the prior at random (partner present half the time). The CSR prompt pool (`csr`) is
drawn the same way, so most preference pairs are about what the prior gets wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tqdm import tqdm

from csr.core.errors import CSRError
from csr.core.io import atomic_write_json, atomic_write_text
from csr.data.pope_questions import STRATEGIES, cooccurrence_counts, sample_pope_questions
from csr.worlds.shapesworld.scenes import make, sample_scene
from csr.worlds.shapesworld.text import DESCRIBE_PROMPTS
from csr.worlds.shapesworld.vocab import SHAPES

# first seed of each split; training images use seeds below 10^7 (the weak CLIP's from 10^7 up, the csr
# split's range, at the training co-occurrence). `fresh` is a seed range no model, study or tuning used
# before it was added: a second test set, to check that a result is not a property of `test`'s images.
SPLIT_SEEDS = {"csr": 10_000_000, "val": 20_000_000, "test": 30_000_000, "fresh": 50_000_000}
HELD_OUT_COOCCURRENCE = 0.5
PROBE_FRACTION = 0.5
# Bumped whenever the files of a split change, so splits cached on disk are written again
# (3: the marker carries the content hash; the scenes are those of version 2).
SPLIT_VERSION = 3
TRAIN_COOCCURRENCE = 0.95
MARKER = "split.json"
# val and test are always this size; an evaluation of `eval.limit` images takes the first ones.
HELD_OUT_SIZE = 500
# What defines a split's content (images follow from the seeds in ground_truth.json).
IDENTITY_FILES = ("prompts.json", "ground_truth.json", *(f"pope_{s}.jsonl" for s in STRATEGIES))


def training_cooccurrence(n: int = 4000) -> dict[str, dict[str, int]]:
    """Co-occurrence counts of the training distribution: what POPE's adversarial negatives use."""
    rng = random.Random(0)
    return cooccurrence_counts({str(i): sample_scene(rng, TRAIN_COOCCURRENCE).shapes for i in range(n)})


def write_split(out_dir: Path, split: str, n: int, pope_per_image: int = 2) -> None:
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    prompts, truth = [], {}
    for i in tqdm(range(n), desc=f"ShapesWorld {split}", leave=False):
        seed = SPLIT_SEEDS[split] + i
        scene, image = make(seed, HELD_OUT_COOCCURRENCE, PROBE_FRACTION)
        name = f"{split}_{i:06d}"
        image.save(images / f"{name}.png")
        prompts.append({"id": name, "image": f"{name}.png",
                        "input": DESCRIBE_PROMPTS[i % len(DESCRIBE_PROMPTS)] + "\n<image>"})
        truth[name] = {"seed": seed, "objects": scene.to_json()}
    atomic_write_json(out_dir / "prompts.json", prompts)
    atomic_write_json(out_dir / "ground_truth.json", truth)
    objects = {f"{k}.png": {o["shape"] for o in v["objects"]} for k, v in truth.items()}
    cooccurrence = training_cooccurrence()
    for strategy in STRATEGIES:
        questions = sample_pope_questions(objects, list(SHAPES), strategy, pope_per_image,
                                          random.Random(SPLIT_SEEDS[split]), cooccurrence)
        atomic_write_text(out_dir / f"pope_{strategy}.jsonl", "".join(json.dumps(q) + "\n" for q in questions))
    atomic_write_json(out_dir / MARKER, {"split": split, "n": n, "first_seed": SPLIT_SEEDS[split],
                                         "version": SPLIT_VERSION, "sha256": content_hash(out_dir)})


def content_hash(split_dir: Path) -> str:
    """sha256 over the files that define a split (prompts, ground truth, POPE questions)."""
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        digest.update(name.encode() + b"\0" + (split_dir / name).read_bytes())
    return digest.hexdigest()


def ensure_split(root: str | Path, split: str, n: int) -> Path:
    """The directory of `split` written with exactly n images (rewritten if it holds another size or
    version); returns it."""
    out_dir = Path(root) / split
    marker = out_dir / MARKER
    if marker.exists():
        written = json.loads(marker.read_text())
        if written["n"] == n and written.get("version") == SPLIT_VERSION:
            have = content_hash(out_dir)
            if have != written.get("sha256"):  # verified, not trusted: a number must be of the data it names
                raise CSRError(f"ShapesWorld split {out_dir}: its files changed since csr wrote them ({MARKER} records "
                               f"sha256 {written.get('sha256')}, the files hash to {have}): delete {out_dir} to have "
                               "csr write the split again")
            return out_dir
    write_split(out_dir, split, n)
    return out_dir


def split_identity(split_dir: str | Path) -> dict:
    """What an evaluation records to say which data it ran on: split, version, size and content hash."""
    written = json.loads((Path(split_dir) / MARKER).read_text())
    return {**{k: written[k] for k in ("split", "version", "n")}, "sha256": content_hash(Path(split_dir))}


def ground_truth(split_dir: str | Path) -> dict[str, set[str]]:
    """prompt id -> the categories really in the image."""
    return {k: {o["shape"] for o in objects} for k, objects in scene_objects(split_dir).items()}


def scene_objects(split_dir: str | Path) -> dict[str, list[dict]]:
    """prompt id -> the image's objects ({"shape", "colour", "position", "size"})."""
    truth = json.loads((Path(split_dir) / "ground_truth.json").read_text())
    return {k: v["objects"] for k, v in truth.items()}
