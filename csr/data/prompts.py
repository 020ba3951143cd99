"""Loading the prompt file (the reference CSR format) into validated records.

The reference format is a JSON list of
``{"id": "000000442786", "image": "000000442786.jpg", "input": "Describe ...\\n<image>"}``.
We keep only the raw user text (placeholder removed): chat templating belongs
to the model wrapper, and a templated string here would get templated twice.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csr.config.choices import ON_ERROR
from csr.core.errors import CSRError
from csr.core.io import read_json

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class PromptRecord:
    id: str
    image: str  # relative to the image root
    prompt: str  # raw user text, placeholder removed, stripped
    raw: str  # the original "input" field, for provenance


class _RecordProblem(Exception):
    """A per-record problem; `reason` is the skip-count key used with on_error="skip"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def resolve_image_path(image_root: str | os.PathLike[str], rel: str) -> Path:
    """Resolve `rel` under `image_root`, refusing anything that would escape the root.

    Prompt files come from elsewhere; a path like ``../../etc/passwd`` or a
    symlink pointing out of the root must not let them read arbitrary files.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise CSRError(f"image path {rel!r} is empty or not a string")
    if "\0" in rel:
        raise CSRError(f"image path {rel!r} contains a NUL byte")
    if any("\ud800" <= c <= "\udfff" for c in rel):
        # JSON can escape half a surrogate pair; no file name is made of that.
        raise CSRError(f"image path {rel!r} contains a lone surrogate (not valid Unicode)")
    if os.path.isabs(rel) or Path(rel).is_absolute():
        raise CSRError(f"image path {rel!r} is absolute; it must be relative to image_root {image_root}")
    root = Path(image_root).resolve()
    loop = f"image path {rel!r} under image_root {root} is a symlink loop"
    # resolve() follows symlinks, so both ".." and links leaving the root are caught here.
    try:
        candidate = (root / rel).resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 says RuntimeError, 3.13 OSError(ELOOP)
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise CSRError(f"image path {rel!r} under image_root {root}: cannot resolve ({exc})") from None
        raise CSRError(loop) from None
    try:
        (root / rel).stat()  # Python 3.13's resolve() passes over a loop; stat says ELOOP
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CSRError(loop) from None
    if not candidate.is_relative_to(root):
        raise CSRError(f"image path {rel!r} resolves to {candidate}, outside image_root {root}")
    return candidate


def _parse_record(item: Any, image_root: str, check_images: bool, seen: set[str]) -> PromptRecord:
    if not isinstance(item, dict):
        raise _RecordProblem("bad_record", f"expected an object, got {type(item).__name__}")
    missing = [k for k in ("id", "image", "input") if k not in item]
    if missing:
        raise _RecordProblem("bad_record", f"missing key(s) {', '.join(missing)}")
    rid = item["id"]
    # bool is an int subclass, but True as an id is surely a mistake.
    if isinstance(rid, bool) or not isinstance(rid, str | int) or str(rid) == "":
        raise _RecordProblem("bad_record", f"'id' must be a non-empty string or integer, got {rid!r}")
    rid = str(rid)
    image, raw = item["image"], item["input"]
    if not isinstance(image, str) or not image:
        raise _RecordProblem("bad_record", f"'image' must be a non-empty string, got {image!r}")
    if not isinstance(raw, str):
        raise _RecordProblem("bad_record", f"'input' must be a string, got {type(raw).__name__}")
    if rid in seen:
        raise _RecordProblem("duplicate_id", f"duplicate id {rid!r}")
    seen.add(rid)

    count = raw.count(IMAGE_PLACEHOLDER)
    if count == 0:
        raise _RecordProblem("no_placeholder", f"'input' has no {IMAGE_PLACEHOLDER} placeholder")
    if count > 1:
        raise _RecordProblem("two_placeholders", f"'input' has {count} {IMAGE_PLACEHOLDER} placeholders")
    prompt = raw.replace(IMAGE_PLACEHOLDER, "").strip()
    if not prompt:
        raise _RecordProblem("empty_prompt", f"'input' has no text besides {IMAGE_PLACEHOLDER}")

    try:
        path = resolve_image_path(image_root, image)
    except CSRError as exc:
        raise _RecordProblem("unsafe_path", str(exc)) from None
    if check_images and not path.is_file():
        raise _RecordProblem("missing_image", f"image file {path} not found")
    return PromptRecord(id=rid, image=image, prompt=prompt, raw=raw)


def _read_list(path: Path) -> list[Any]:
    """File-level checks: these always raise, whatever on_error says."""
    items = read_json(path, what="prompt file")
    if not isinstance(items, list):
        raise CSRError(f"{path}: top level must be a JSON list of records, got {type(items).__name__}")
    if not items:
        raise CSRError(f"{path}: prompt list is empty")
    return items


def _describe(index: int, item: Any) -> str:
    rid = item.get("id") if isinstance(item, dict) else None
    return f"record {index}" + (f" (id={rid!r})" if rid is not None else "")


def load_prompts(
    path: str,
    image_root: str,
    limit: int | None = None,
    shuffle_seed: int | None = None,
    on_error: str = "raise",
    check_images: bool = True,
) -> tuple[list[PromptRecord], dict[str, int]]:
    """Load and validate prompts; returns (records, skip counts by reason).

    Order is file order, or a seeded shuffle of it; `limit` is applied last,
    after skipping bad records and shuffling, so it always yields `limit`
    good records when the file has that many.
    """
    if on_error not in ON_ERROR:
        raise CSRError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CSRError(f"data.limit must be a positive integer or null, got {limit!r}")
    file = Path(path)
    items = _read_list(file)
    if check_images and image_root and Path(image_root).is_file():
        # else every record would be skipped or refused as an image "not found" under it
        raise CSRError(f"data.image_root={str(image_root)!r} is a file, not a directory: give the folder the "
                       f"prompt file's image paths are relative to")

    records: list[PromptRecord] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            records.append(_parse_record(item, image_root, check_images, seen))
        except _RecordProblem as problem:
            where = f"{file}: {_describe(index, item)}"
            if on_error == "raise":
                raise CSRError(f"{where}: {problem}") from None
            skipped[problem.reason] += 1
            log.warning("skipping %s: %s", where, problem)
    if not records:
        raise CSRError(f"{file}: no usable records (skipped: {dict(skipped)})")
    if skipped:
        log.warning(
            "%s: skipped %d of %d records: %s", file, sum(skipped.values()), len(items), dict(skipped)
        )

    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(records)
    if limit is not None:
        records = records[:limit]
    return records, dict(skipped)
