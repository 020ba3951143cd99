"""ShapesWorld language: multi-sentence descriptions (one fact per sentence) and yes/no questions.

The language prior that makes the model hallucinate is planted here, the way COCO captions plant
it: a partner shape is described right after its trigger, and when the image shows the trigger
without the partner, a caption still names the partner with probability `noise` (in a made-up
colour and cell). A model that learns "after a star comes a moon" says "moon" whatever it sees.
"""

from __future__ import annotations

import random

from csr.worlds.shapesworld.scenes import Obj, Scene
from csr.worlds.shapesworld.vocab import COLOURS, PAIRS, POSITIONS, SHAPES, SIZES

SENTENCE_TEMPLATES = (
    "There is a {size} {colour} {shape} in the {position}.",
    "A {colour} {shape} is in the {position}.",
    "In the {position} there is a {size} {colour} {shape}.",
    "I can see a {colour} {shape} at the {position}.",
)
DESCRIBE_PROMPTS = (
    "Describe the following image.",
    "Describe this image in detail.",
    "What is in this picture?",
    "Provide a detailed description of the image.",
)
QUESTION = "Is there a {shape} in the image?"


def sentence_text(template: str, **fields: str) -> str:
    """A template filled in, with the article English wants ("an orange")."""
    return template.format(**fields).replace("a orange", "an orange").replace("A orange", "An orange")


def sentence(obj: Obj, rng: random.Random) -> str:
    return sentence_text(rng.choice(SENTENCE_TEMPLATES), size=obj.size, colour=obj.colour, shape=obj.shape,
                         position=obj.position)


def described_objects(scene: Scene, rng: random.Random, noise: float) -> list[Obj]:
    """The objects a caption names, in order: reading order, each partner right after its trigger,
    plus (with probability `noise`) an absent partner after a trigger that has none."""
    order = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
    partners = {o.shape for o in order if o.shape in PAIRS.values()}
    out: list[Obj] = []
    placed: set[int] = set()
    for i, obj in enumerate(order):
        if i in placed:
            continue
        out.append(obj)
        partner = PAIRS.get(obj.shape)
        if partner is None:
            continue
        match = next((j for j, o in enumerate(order) if o.shape == partner and j not in placed and j > i), None)
        if match is not None:
            out.append(order[match])
            placed.add(match)
        elif partner not in partners and rng.random() < noise:
            out.append(Obj(partner, rng.choice(sorted(COLOURS)), rng.choice(POSITIONS), rng.choice(SIZES)))
    return out


def describe(scene: Scene, rng: random.Random, noise: float = 0.0) -> str:
    return " ".join(sentence(o, rng) for o in described_objects(scene, rng, noise))


def question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A balanced yes/no question: half about a present object; of the absent ones, half ask for the
    missing partner of a present trigger (the hard case, as POPE's adversarial split)."""
    present = sorted(scene.shapes)
    if rng.random() < 0.5:
        return QUESTION.format(shape=rng.choice(present)), "Yes."
    missing_partners = [PAIRS[s] for s in present if s in PAIRS and PAIRS[s] not in scene.shapes]
    absent = [s for s in SHAPES if s not in scene.shapes]
    shape = rng.choice(missing_partners) if missing_partners and rng.random() < 0.5 else rng.choice(absent)
    return QUESTION.format(shape=shape), "No."
