"""ShapesWorld's vocabulary: object categories, their synonyms and plurals, colours, positions."""

from __future__ import annotations

SHAPES = (
    "circle", "square", "triangle", "star", "heart", "moon",
    "cross", "diamond", "hexagon", "pentagon", "arrow", "ring",
)

# Co-occurrence that the language model learns as a prior: trigger -> partner.
PAIRS = {"star": "moon", "heart": "arrow", "cross": "diamond", "hexagon": "ring"}

# Every word that names a category, as CHAIR's synonym table does for COCO (singular forms;
# plurals are derived below).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk", "dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "heart": ("heart",),
    "moon": ("moon", "crescent"),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "pentagon": ("pentagon",),
    "arrow": ("arrow",),
    "ring": ("ring", "donut", "doughnut"),
}

COLOURS = {
    "red": (215, 48, 39),
    "green": (26, 152, 80),
    "blue": (49, 100, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 80, 190),
    "orange": (245, 140, 30),
}

# 2 x 2 grid of cells on a 64 x 64 image.
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")


def plural(word: str) -> str:
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    return word + "s"


def synonym_table() -> dict[str, str]:
    """word or phrase (singular and plural) -> category."""
    table = {}
    for category, words in SYNONYMS.items():
        for word in words:
            table[word] = category
            *head, last = word.split(" ")
            table[" ".join([*head, plural(last)])] = category
    return table
