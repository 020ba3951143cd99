"""CHAIR (Rohrbach et al. 2018): how many objects a caption mentions that are not in the image.

CHAIR_S is the fraction of captions with at least one hallucinated object, CHAIR_I the fraction of
object mentions that are hallucinated.  COCO CHAIR comes in two variants (`eval.chair.variant`):
`original` (the default) is the original utils/chair.py as the literature runs it, quirks included
(csr.eval.chair_original); `fixed` is this module's reading, used for ShapesWorld too.  The metrics
of coco_chair() say which one produced them (`chair_variant`).

`fixed` reads captions the way the original does in outline: lowercase, split into words,
singularise, match multi-word phrases ("hot dog", "teddy bear") before single words, then map every
synonym to its category.  Deliberate differences from the original:
  * Singularisation is a short suffix rule set guided by the table's own words (the original used
    pattern.en), so it only ever turns a word into a word the table knows.
  * Phrases of any length match, longest first (the original only looked two words ahead).
  * A caption's mentions are its distinct categories: "a dog and another dog" is one mention, and a
    hallucinated category counts once per caption (the original counted every occurrence).
  * "toilet seat" is handled as a phrase only; the original also dropped "seat" anywhere in a
    caption that said "toilet".
  * Words are runs of letters, so "hot-dog" is "hot dog" and "dog.A" is "dog", "a"; synonyms are
    matched lowercased ("iPhone") and trimmed (" motor bike", " cheesecake").
Like the original, negation is not handled: "there is no dog" mentions a dog.  ShapesWorld captions
never negate, and COCO-style captions rarely do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from csr.config.choices import CHAIR_VARIANTS
from csr.core.errors import CSRError
from csr.core.io import read_json, read_records
from csr.eval import chair_original
from csr.eval.coco_synonyms import (
    ANIMAL_WORDS,
    COCO_DOUBLE_WORDS,
    COCO_SYNONYMS,
    PHRASE_REWRITES,
    VEHICLE_WORDS,
)

StrPath = str | os.PathLike[str]
StrPaths = StrPath | Sequence[StrPath]  # one annotation file, or several read as one (train + val)

# Letters only: punctuation, digits and apostrophes split words ("dog's" -> "dog", "s").
_WORD = re.compile(r"[^\W\d_]+")

# Plurals no suffix rule reaches; "-men" (policemen, gentlemen) is handled by rule below.
_IRREGULAR = {"people": "person", "children": "child", "mice": "mouse", "geese": "goose",
              "oxen": "ox", "feet": "foot", "teeth": "tooth"}


@dataclass(frozen=True)
class _Index:
    table: dict[str, str]  # phrase (space-joined words) -> category; "" = consumed, names no object
    vocab: frozenset[str]  # every word of every phrase: the only targets singularisation may produce
    longest: int  # most words in one phrase


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _index(synonyms: dict[str, str]) -> _Index:
    table = {}
    for phrase, category in synonyms.items():
        words = _words(phrase)
        if words:
            table[" ".join(words)] = category
    vocab = frozenset(word for phrase in table for word in phrase.split(" "))
    return _Index(table, vocab, max((p.count(" ") + 1 for p in table), default=1))


def _singular(word: str, vocab: frozenset[str]) -> str:
    """The singular of `word` if that is a word the table knows, else `word` unchanged."""
    if word in vocab:  # also keeps plurals a table lists itself ("skis", "circles", "people")
        return word
    candidates = [_IRREGULAR.get(word, "")]
    if word.endswith("men"):
        candidates.append(word[:-3] + "man")
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("ves"):
        candidates += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    # Most specific rule first; a wrong strip is harmless unless it lands on a known word
    # ("horses" -> "hors" is not one, so "horse" from the plain "-s" rule wins).
    for candidate in candidates:
        if candidate in vocab:
            return candidate
    return word


def _mentions(text: str, index: _Index) -> list[str]:
    words = [_singular(word, index.vocab) for word in _words(text)]
    found: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(index.longest, len(words) - i), 0, -1):
            category = index.table.get(" ".join(words[i : i + n]))
            if category is not None:
                if category and category not in found:
                    found.append(category)
                i += n
                break
        else:
            i += 1
    return found


def coco_synonym_table() -> dict[str, str]:
    """CHAIR's COCO table, word or phrase -> one of the 80 categories, with the original's phrase rules."""
    table = {word.lower(): category for category, words in COCO_SYNONYMS.items() for word in words}
    for phrase in COCO_DOUBLE_WORDS:
        table.setdefault(phrase, "")  # "home plate", "train track": read as a unit, not an object
    for word in ANIMAL_WORDS:
        for qualifier in ("baby", "adult"):
            table[f"{qualifier} {word}"] = table.get(word, "")
    for word in VEHICLE_WORDS:
        table[f"passenger {word}"] = table.get(word, "")
    for phrase, word in PHRASE_REWRITES.items():
        table[phrase] = table[word]
    return table


def _report(text: str, gt: Collection[str], index: _Index) -> dict[str, list[str]]:
    mentioned = _mentions(text, index)
    return {
        "mentioned": mentioned,
        "hallucinated": [obj for obj in mentioned if obj not in gt],
        "covered": [obj for obj in mentioned if obj in gt],
    }


def caption_report(text: str, gt: Collection[str], synonyms: dict[str, str]) -> dict[str, list[str]]:
    """One caption's CHAIR details: mentioned categories, the hallucinated ones, the ground-truth ones."""
    return _report(text, set(gt), _index(synonyms))


def _ratio(numerator: float, denominator: float) -> float:
    # Empty input has no hallucination and nothing to recall; 0.0 keeps the result plain JSON.
    return numerator / denominator if denominator else 0.0


def chair_scores(captions: Sequence[str], gt: Sequence[Collection[str]], synonyms: dict[str, str]) -> dict:
    """CHAIR over a set of captions, `gt[k]` being the objects in caption k's image.

    chair_s: fraction of captions with a hallucinated object; chair_i: hallucinated mentions / all
    mentions; recall: ground-truth objects mentioned / all ground-truth objects (both pooled over the
    whole set); mean_mentions: mentions per caption; n: captions.  Undefined ratios are 0.0.
    """
    if len(captions) != len(gt):
        raise ValueError(f"{len(captions)} captions but {len(gt)} ground-truth sets")
    index = _index(synonyms)
    n_mentions = n_hallucinated = n_bad_captions = n_gt = n_covered = 0
    for text, objects in zip(captions, gt, strict=True):
        report = _report(text, set(objects), index)
        n_mentions += len(report["mentioned"])
        n_hallucinated += len(report["hallucinated"])
        n_bad_captions += bool(report["hallucinated"])
        n_gt += len(set(objects))
        n_covered += len(report["covered"])
    n = len(captions)
    return {
        "chair_s": _ratio(n_bad_captions, n),
        "chair_i": _ratio(n_hallucinated, n_mentions),
        "recall": _ratio(n_covered, n_gt),
        "mean_mentions": _ratio(n_mentions, n),
        "n": n,
    }


def _field(record: Any, key: str, kind: type, path: StrPath, where: str) -> Any:
    if not isinstance(record, dict):
        raise CSRError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise CSRError(f"{path}: {where}: missing {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):  # bool is an int to isinstance
        raise CSRError(f"{path}: {where}: {key!r} should be {kind.__name__}, got {value!r}")
    return value


def _coco_list(data: Any, key: str, path: StrPath) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key, []), list):
        raise CSRError(f"{path}: not a COCO annotation file (expected an object with a {key!r} list)")
    return data.get(key, [])


def _paths(files: StrPaths) -> list[StrPath]:
    return [files] if isinstance(files, str | os.PathLike) else list(files)


def _ground_truth(
    instances_files: StrPaths,
    captions_files: StrPaths,
    category_of: Callable[[str], str | None],
    caption_objects: Callable[[str], Iterable[str]],
) -> dict[int, set[str]]:
    """image id -> instance categories UNION what its reference captions mention, over all the files.

    `category_of` maps an instance file's category name to the variant's category, `caption_objects`
    reads a reference caption the variant's way.
    """
    objects: dict[int, set[str]] = {}
    for instances_json in _paths(instances_files):
        instances = read_json(instances_json)
        names: dict[int, str] = {}
        for i, cat in enumerate(_coco_list(instances, "categories", instances_json)):
            where = f"categories[{i}]"
            cat_id = _field(cat, "id", int, instances_json, where)
            name = _field(cat, "name", str, instances_json, where)
            category = category_of(name)
            if not category:
                raise CSRError(f"{instances_json}: {where}: category name {name!r} is not in the synonym table")
            names[cat_id] = category
        # Listed images with no annotation still exist: every object a caption names there is hallucinated.
        for i, image in enumerate(_coco_list(instances, "images", instances_json)):
            objects.setdefault(_field(image, "id", int, instances_json, f"images[{i}]"), set())
        for i, ann in enumerate(_coco_list(instances, "annotations", instances_json)):
            where = f"annotations[{i}]"
            image_id = _field(ann, "image_id", int, instances_json, where)
            cat_id = _field(ann, "category_id", int, instances_json, where)
            if cat_id not in names:
                raise CSRError(f"{instances_json}: {where}: category_id {cat_id} is not in 'categories'")
            objects.setdefault(image_id, set()).add(names[cat_id])
    for captions_json in _paths(captions_files):
        captions = read_json(captions_json)
        for i, image in enumerate(_coco_list(captions, "images", captions_json)):
            objects.setdefault(_field(image, "id", int, captions_json, f"images[{i}]"), set())
        for i, ann in enumerate(_coco_list(captions, "annotations", captions_json)):
            where = f"annotations[{i}]"
            image_id = _field(ann, "image_id", int, captions_json, where)
            text = _field(ann, "caption", str, captions_json, where)
            objects.setdefault(image_id, set()).update(caption_objects(text))
    return objects


def load_coco_ground_truth(
    instances_json: StrPaths, captions_json: StrPaths, synonyms: dict[str, str]
) -> dict[int, set[str]]:
    """image id -> its objects: instance annotations' categories UNION objects its reference captions name.

    The union is the original's choice: instance labels miss objects people see and mention, and a
    caption mentioning one should not be called a hallucination.  Category names must be in
    `synonyms` (COCO's 80 are in coco_synonym_table()).  Several files (train and val) are read as one.
    """
    index = _index(synonyms)
    return _ground_truth(instances_json, captions_json, lambda name: index.table.get(" ".join(_words(name))),
                         lambda text: _mentions(text, index))


def load_original_ground_truth(instances_json: StrPaths, captions_json: StrPaths) -> dict[int, set[str]]:
    """The same union, with names and reference captions read as the original chair.py reads them."""
    return _ground_truth(instances_json, captions_json, chair_original.category_of,
                         lambda text: [category for _, category in chair_original.caption_words(text)])


def _alias(record: dict[str, Any], keys: tuple[str, ...], path: StrPath, lineno: int) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    raise CSRError(f"{path}: line {lineno}: missing {' or '.join(repr(k) for k in keys)}")


def _read_generated(path: StrPath, gt: dict[int, set[str]], where: str) -> list[tuple[str, set[str]]]:
    pairs = []
    for lineno, record in read_records(path):
        image_id = _alias(record, ("image_id", "id"), path, lineno)
        caption = _alias(record, ("caption", "answer"), path, lineno)
        # Ids written as strings ("391895") are common in generation outputs; anything else is a mistake.
        if isinstance(image_id, str) and image_id.strip().isdigit():
            image_id = int(image_id)
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise CSRError(f"{path}: line {lineno}: image id should be an integer, got {image_id!r}")
        if not isinstance(caption, str):
            raise CSRError(f"{path}: line {lineno}: caption should be a string, got {caption!r}")
        if image_id not in gt:
            raise CSRError(f"{path}: line {lineno}: image {image_id} is in neither {where}")
        pairs.append((caption, gt[image_id]))
    return pairs


def coco_chair(generated_jsonl: StrPath, instances_json: StrPaths, captions_json: StrPaths, *,
               variant: str = "original") -> dict:
    """CHAIR of generated captions, JSONL of {"image_id" (or "id"): int, "caption" (or "answer"): str}.

    `instances_json` / `captions_json`: one COCO annotation file each, or lists read as one (the
    original reads train2014 and val2014).  `variant`: "original" (chair.py as papers ran it) or
    "fixed" (csr's corrections).  The result: chair_s, chair_i, recall, mean_mentions, n, and
    chair_variant (a string, which MLflow's metric log leaves out).  `original` skips captions that
    are exactly "", as LURE's to_chair.py (the converter CSR's CHAIR went through) does, and says
    how many in `n_empty_skipped`.
    """
    if variant not in CHAIR_VARIANTS:
        raise CSRError(f"CHAIR variant {variant!r}: expected one of {', '.join(CHAIR_VARIANTS)}")
    where = " nor ".join(", ".join(str(p) for p in _paths(files)) for files in (instances_json, captions_json))
    if variant == "fixed":
        table = coco_synonym_table()
        gt = load_coco_ground_truth(instances_json, captions_json, table)
        pairs = _read_generated(generated_jsonl, gt, where)
        if not pairs:
            raise CSRError(f"{generated_jsonl}: no captions")
        scores = chair_scores([c for c, _ in pairs], [o for _, o in pairs], table)
        return {**scores, "chair_variant": variant}
    gt = load_original_ground_truth(instances_json, captions_json)
    pairs = _read_generated(generated_jsonl, gt, where)
    kept = [(c, o) for c, o in pairs if c != ""]
    if not kept:
        raise CSRError(f"{generated_jsonl}: no captions")
    scores = chair_original.chair_scores([c for c, _ in kept], [o for _, o in kept])
    return {**scores, "n_empty_skipped": len(pairs) - len(kept), "chair_variant": variant}
