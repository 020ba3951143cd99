"""pattern.en 3.6's `singularize`, the one the original CHAIR (utils/chair.py) calls on every token.

pattern itself no longer installs cleanly (and `pattern.en` downloads WordNet on import), so the rule
tables come from textblob, which carries pattern's English inflection module.  textblob has changed
that module since it was copied, and the original's numbers depend on the old behaviour, so this
file runs pattern 3.6's procedure over textblob's tables with the entries put back as pattern had them:

  * pattern returns a word ending in one of its "-ie" nouns + "s" *unchanged* ("collies" stays
    "collies", so the original never sees a dog there); textblob returns the singular.
  * pattern has no "-s singular" step: textblob's returns the table word itself, so "airbuses"
    becomes "bus" instead of pattern's "airbus" (an airplane synonym).
  * pattern looks irregular plurals up in alphabetical order; a few table entries differ (below).

Checked in a scratch directory against pattern 3.6 (clips/pattern, = PatternLite 3.6) on 123,596 words
(punkt's English vocabulary, every COCO synonym and their plurals, in three cases): identical on all.
pattern's other quirks are kept, as the original had them: "bus" -> "bu", "glass" -> "glas",
"ties" -> "ty" (tests/test_chair.py lists them).
"""

from __future__ import annotations

import re
from functools import cache
from typing import NamedTuple


class _Tables(NamedTuple):
    uninflected: frozenset[str]
    uncountable: frozenset[str]
    ie: frozenset[str]
    irregular: tuple[tuple[str, str], ...]  # (plural ending, singular), pattern's (alphabetical) order
    rules: tuple[tuple[re.Pattern[str], str], ...]
    prepositions: frozenset[str]


@cache
def _tables() -> _Tables:
    from textblob.en import inflect  # imported here: textblob (and nltk under it) load slowly

    # Where textblob's tables differ from pattern 3.6's (set differences measured on both).
    uninflected = set(inflect.singular_uninflected) - {
        "offspring", "moose", "antelope", "jeans", "aircraft", "cattle"} | {"christmas"}
    uncountable = set(inflect.singular_uncountable) - {"cannabis"}
    ie = set(inflect.singular_ie) - {"algerie", "bookie"} | {"alergie", "newbie"}
    irregular = {k: v for k, v in inflect.singular_irregular.items() if k != "lynxes"}
    return _Tables(frozenset(uninflected), frozenset(uncountable), frozenset(ie),
                   tuple(sorted(irregular.items())), tuple(inflect.singular_rules),
                   frozenset(inflect.plural_prepositions))


@cache
def singularize(word: str) -> str:
    """The singular of `word` exactly as pattern.en 3.6 gives it (quirks included, see the module doc)."""
    t = _tables()
    parts = word.split("-")
    if len(parts) > 1 and parts[1] in t.prepositions:  # "mothers-in-law" -> "mother-in-law"
        return singularize(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):  # "dogs'" -> "dog's"
        return singularize(word[:-1]) + "'s"
    lower = word.lower()
    # pattern tests whether a table word *ends with* the input, so short inputs ("s", "a") match too.
    if any(w.endswith(lower) for w in t.uninflected) or any(w.endswith(lower) for w in t.uncountable):
        return word
    if any(lower.endswith(w + "s") for w in t.ie):
        return lower  # pattern's slip: the plural itself, not the "-ie" singular
    for plural, singular in t.irregular:
        if lower.endswith(plural):
            return re.sub("(?i)" + plural + "$", singular, word)
    for suffix, inflection in t.rules:
        match = suffix.search(word)
        if match:
            # A group that took no part in the match is replaced by nothing, as pattern does.
            for k, group in enumerate(match.groups(), start=1):
                if group is None:
                    inflection = inflection.replace(f"\\{k}", "")
            return suffix.sub(inflection, word)
    return word
