"""`--set key=value` for the training commands (csr-train-shapesworld, csr-train-shapesworld-weak-clip):
each value typed as its field's default is."""

from __future__ import annotations

from dataclasses import asdict


def set_fields(config, items: list[str]) -> None:
    """Set `config`'s dataclass fields from "key=value" strings; an unknown key exits naming the known ones."""
    for item in items:
        key, value = item.split("=", 1)
        if not hasattr(config, key):
            raise SystemExit(f"unknown {type(config).__name__} field {key!r}; known: {sorted(asdict(config))}")
        default = getattr(config, key)
        # bool("false") is True: booleans are read as words
        setattr(config, key, value.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(value))
