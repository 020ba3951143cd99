"""ShapesWorld, the embedded default world: everything about it in one package.

The world: vocab.py (shapes, colours, sizes, positions, the planted pairs), scenes.py (seeded scenes
and their rendering), text.py (descriptions and questions), splits.py (prompt and held-out splits,
ground truth, POPE questions). Its models, re-created by `csr-train-shapesworld` (build.py): pool.py
(rendered training images), tower.py (vision tower pre-training), clip_train.py (the reward's CLIP),
sft.py (LLaVA instruction tuning), convert.py (open_clip tower -> HF). Its evaluator: evaluate.py, with grammar.py (well-formed sentences,
attribute binding errors).
Its hooks into the loop: hooks.py. The trained weights are data, in csr/assets/shapesworld/.
"""
