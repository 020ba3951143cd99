"""ShapesWorld: determinism, ground truth that matches the pixels, captions and their planted prior."""

from __future__ import annotations

import random

import numpy as np
import pytest

from csr.config.choices import SHAPESWORLD_SPLITS
from csr.eval.chair import caption_report, chair_scores
from csr.worlds.shapesworld.scenes import CELL, make, sample_scene
from csr.worlds.shapesworld.splits import (
    HELD_OUT_SIZE,
    SPLIT_SEEDS,
    ensure_split,
    ground_truth,
    split_identity,
)
from csr.worlds.shapesworld.text import describe, described_objects, question
from csr.worlds.shapesworld.vocab import COLOURS, PAIRS, POSITIONS, SHAPES, synonym_table


def test_same_seed_same_scene_and_pixels():
    a_scene, a_image = make(123, 0.95)
    b_scene, b_image = make(123, 0.95)
    assert a_scene == b_scene
    assert a_image.tobytes() == b_image.tobytes()
    assert make(124, 0.95)[1].tobytes() != a_image.tobytes()


def test_vocabulary_is_large_enough():
    assert len(SHAPES) >= 12 and all(p in SHAPES and t in SHAPES for t, p in PAIRS.items())


@pytest.mark.parametrize("seed", range(20))
def test_ground_truth_matches_the_pixels(seed):
    scene, image = make(seed, 0.5)
    pixels = np.asarray(image).astype(int)
    assert 1 <= len(scene.objects) <= 4
    assert len({o.position for o in scene.objects}) == len(scene.objects)  # one object per cell
    for position in POSITIONS:
        row, col = divmod(POSITIONS.index(position), 2)
        cell = pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL].reshape(-1, 3)
        objs = [o for o in scene.objects if o.position == position]
        # Pixels close to the object's colour: many where the object is, none in an empty cell.
        if objs:
            near = (np.abs(cell - np.array(COLOURS[objs[0].colour])).max(axis=1) < 30).sum()
            assert near > 60
        else:
            saturated = (cell.max(axis=1) - cell.min(axis=1) > 60).sum()
            assert saturated == 0


def test_cooccurrence_prior_is_planted_in_the_scenes():
    rng = random.Random(0)
    with_partner = total = 0
    for _ in range(3000):
        scene = sample_scene(rng, 0.95)
        for trigger, partner in PAIRS.items():
            if trigger in scene.shapes:
                total += 1
                with_partner += partner in scene.shapes
    assert with_partner / total > 0.9  # 0.95 asked (a second copy of a trigger may lack a partner)


def test_clean_captions_are_exact():
    synonyms = synonym_table()
    captions, truths = [], []
    for seed in range(200):
        scene, _ = make(seed, 0.5)
        text = describe(scene, random.Random(seed), noise=0.0)
        assert text.count(".") == len(scene.objects)  # one fact per sentence
        captions.append(text)
        truths.append(scene.shapes)
    scores = chair_scores(captions, truths, synonyms)
    assert scores["chair_s"] == 0.0 and scores["recall"] == 1.0


def test_noisy_captions_name_the_absent_partner_right_after_its_trigger():
    for seed in range(500):
        scene, _ = make(seed, 0.0)
        lonely = [t for t in PAIRS if t in scene.shapes and PAIRS[t] not in scene.shapes]
        if lonely:
            break
    objs = described_objects(scene, random.Random(0), noise=1.0)
    names = [o.shape for o in objs]
    trigger = lonely[0]
    assert names[names.index(trigger) + 1] == PAIRS[trigger]
    assert PAIRS[trigger] in caption_report(describe(scene, random.Random(0), 1.0), (), synonym_table())["mentioned"]


def test_questions_are_balanced_and_true():
    answers = []
    for seed in range(400):
        scene, _ = make(seed, 0.5)
        text, answer = question(scene, random.Random(seed))
        shape = text.split("Is there a ")[1].split(" in")[0]
        assert (shape in scene.shapes) == (answer == "Yes.")
        answers.append(answer)
    assert 0.4 < answers.count("Yes.") / len(answers) < 0.6


def test_split_files(tmp_path):
    d = ensure_split(tmp_path, "val", 30)
    truth = ground_truth(d)
    assert len(truth) == 30 and (d / "images" / "val_000000.png").exists()
    again = ensure_split(tmp_path, "val", 10)  # already there: not rewritten
    assert again == d
    pope = (d / "pope_adversarial.jsonl").read_text().splitlines()
    assert pope and all('"label"' in line for line in pope)


def test_splits_are_disjoint_seed_ranges_the_config_knows():
    assert tuple(SPLIT_SEEDS) == SHAPESWORLD_SPLITS  # what validate() accepts is what ensure_split can write
    starts = sorted(SPLIT_SEEDS.values())
    # each split's range (at most the csr pool's size, 10^6) ends before the next one starts
    assert all(b - a >= 1_000_000 for a, b in zip(starts, starts[1:], strict=False)) and starts[0] >= 10_000_000


def test_the_fresh_split_is_new_images(tmp_path):
    fresh, test = ensure_split(tmp_path, "fresh", 20), ensure_split(tmp_path, "test", 20)
    assert split_identity(fresh)["sha256"] != split_identity(test)["sha256"]
    assert sorted(ground_truth(fresh)) == [f"fresh_{i:06d}" for i in range(20)]


def test_shapesworld_evaluator_scores_its_answers_and_records_its_settings(tmp_path):
    from omegaconf import OmegaConf

    from csr.config.schema import ASSETS, EvalConfig
    from csr.core.io import read_jsonl
    from csr.data.pope_questions import QUESTION_TEMPLATE, STRATEGIES
    from csr.eval.generate import image_set
    from csr.eval.pope import pope_metrics, read_pope_questions, yes_no
    from csr.models.checkpoint import load_model
    from csr.models.families import get_family
    from csr.worlds.shapesworld.evaluate import evaluate_shapesworld

    model, processor = load_model(str(ASSETS / "shapesworld" / "llava"))
    cfg = OmegaConf.structured(EvalConfig)
    cfg.shapesworld.root, cfg.limit, cfg.shapesworld.pope_images, cfg.max_new_tokens, cfg.batch_size = str(tmp_path), 24, 8, 96, 24
    out = tmp_path / "out"
    out.mkdir()
    metrics = evaluate_shapesworld(model=model, processor=processor, family=get_family("llava"), scorer=None,
                                   eval_cfg=cfg, prompt_file="", image_root="", out_dir=out,
                                   trainer_kwargs={"accelerator": "cpu", "devices": 1})
    split = tmp_path / "test"
    truth = ground_truth(split)
    answers = read_jsonl(out / "answers.jsonl")
    assert len(truth) == HELD_OUT_SIZE and len(answers) == 24  # the whole split is written, a prefix evaluated
    assert metrics["settings"]["split"]["n"] == HELD_OUT_SIZE
    assert metrics["chair_s"] == chair_scores([a["answer"] for a in answers], [truth[a["id"]] for a in answers],
                                              synonym_table())["chair_s"]
    probed = sorted(truth)[:8]
    differ = []
    for strategy in STRATEGIES:
        questions = [q for q in read_pope_questions(split / f"pope_{strategy}.jsonl")[0]
                     if q["image"] in {f"{i}.png" for i in probed}]
        said = {r["id"]: r["answer"] for r in read_jsonl(out / f"pope_{strategy}.jsonl")}
        replies = [said[f"{strategy}_{q['question_id']}"] for q in questions]
        want = pope_metrics([yes_no(r) for r in replies], [q["label"] == "yes" for q in questions])
        assert {k: metrics[f"pope_{strategy}/{k}"] for k in want} == want
        differ += [r for r in replies if yes_no(r, "official") != yes_no(r, "robust")]
    # The model answers "Yes." or "No.": the default parser's switch to POPE's rule moves no number.
    assert differ == []
    assert metrics["skipped"] == 0
    assert metrics["settings"] == {
        "split": split_identity(split), "prompt": "Describe this image in detail.", "decoding": "greedy",
        "max_new_tokens": 96, **image_set(f"{i}.png" for i in sorted(truth)[:24]),
        "pope": {"prompt": QUESTION_TEMPLATE, "decoding": "greedy", "max_new_tokens": 4, "parser": "official",
                 **image_set(f"{i}.png" for i in probed)},
    }
