"""ShapesWorld's well-formedness and attribute binding (csr/worlds/shapesworld/grammar.py), on hand-made
descriptions and scenes."""

from __future__ import annotations

import random

import pytest

from csr.worlds.shapesworld.grammar import binding_errors, grammar_metrics, parse, sentences
from csr.worlds.shapesworld.scenes import sample_scene
from csr.worlds.shapesworld.text import describe

SCENE = [{"shape": "star", "colour": "red", "position": "top left", "size": "small"},
         {"shape": "circle", "colour": "blue", "position": "bottom right", "size": "large"}]


@pytest.mark.parametrize(("text", "fields"), [
    ("There is a small orange star in the top left.",
     {"size": "small", "colour": "orange", "shape": "star", "position": "top left"}),
    ("An orange moon is in the bottom right.", {"colour": "orange", "shape": "moon", "position": "bottom right"}),
    ("I can see a red ring at the top right.", {"colour": "red", "shape": "ring", "position": "top right"}),
    ("A orange moon is in the bottom right.", None),  # text.py writes "An orange"
    ("An red moon is in the bottom right.", None),
    ("A red moon is in the middle.", None),  # not a cell of the grid
    ("A moon red is in the top left.", None),  # word order
    ("There is a red small star in the top left.", None),
    ("A red moon is in the top left", None),  # no full stop
    ("A purple dog is in the top left.", None),  # not a shape of this world
])
def test_parse_accepts_exactly_the_templates(text, fields):
    assert parse(text) == fields


def test_every_generated_description_parses():
    rng = random.Random(0)
    for _ in range(200):
        text = describe(sample_scene(rng, 0.95), rng, noise=0.7)
        assert all(parse(s) is not None for s in sentences(text)), text


def test_sentences_keep_an_unfinished_tail():
    assert sentences("A red star is in the top left. A blue moon is") == [
        "A red star is in the top left.", "A blue moon is"]
    assert sentences("") == []


@pytest.mark.parametrize(("text", "wrong"), [
    ("A red star is in the top left.", set()),
    ("A blue star is in the top left.", {"colour"}),  # blue is the circle's
    ("A green star is in the top left.", set()),  # wrong, but no object is green: not a binding error
    ("There is a large red star in the top left.", {"size"}),  # large is the circle's size
    ("There is a large blue star in the top left.", {"colour", "size"}),
    ("A blue moon is in the top left.", set()),  # no moon: a hallucination, CHAIR's business
])
def test_binding_errors(text, wrong):
    assert binding_errors(parse(text), SCENE) == wrong


def test_grammar_metrics_by_hand():
    answers = [
        "A red star is in the top left. A blue star is in the top left.",  # 2 parse; 1 of 2 bound wrong
        "A blue circle is in the bottom right. Star red top.",  # 1 of 2 parse; 0 of 1 wrong
        "There is a large blue star in the top left. A blue moon is in the top left.",  # 2 parse; the star wrong
    ]
    got = grammar_metrics(answers, [SCENE] * 3)
    # sentences 6, parsed 5; answers all parsed 2 of 3; about shown shapes 4 (not the moon), wrong 2:
    # colour in 2 (the blue stars), size in 1 (the large star)
    assert got == pytest.approx({"well_formed": 5 / 6, "well_formed_answers": 2 / 3, "binding_errors": 2 / 4,
                                 "colour_binding_errors": 2 / 4, "size_binding_errors": 1 / 4})
    assert grammar_metrics([], []) == {"well_formed": 0.0, "well_formed_answers": 0.0, "binding_errors": 0.0,
                                       "colour_binding_errors": 0.0, "size_binding_errors": 0.0}
