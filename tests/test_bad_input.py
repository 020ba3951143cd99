"""The troubleshooting table (docs/troubleshooting.md, "Bad input"), row by row: each bad input gives
the message the table shows (naming the file, record or key), or the counted skip, or the conversion
it promises.

The rows are read from docs/troubleshooting.md, so the table and this test cannot drift apart: a row
without a case here fails, and so does a case whose row is gone.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from bad_input_clip import CASES as CLIP_CASES
from bad_input_commands import CASES as COMMAND_CASES
from bad_input_dpo import CASES as DPO_CASES
from bad_input_rundir import CASES as RUNDIR_CASES
from bad_input_runtime import CASES as RUNTIME_CASES
from bad_input_security import CASES as SECURITY_CASES
from compose_config import compose_config
from PIL import Image
from scratch_prompts import Ctx

from csr.config.schema import validate
from csr.core.errors import CSRError
from csr.data.images import load_image
from csr.data.prompts import load_prompts
from csr.models.chat import drop_overlong
from csr.models.checkpoint import load_model
from csr.models.clip import load_clip
from csr.models.families import get_family
from csr.reward.rules.mean import select_pair

TROUBLESHOOTING = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
SHAPESWORLD = Path(__file__).resolve().parent.parent / "csr" / "assets" / "shapesworld"


def table_rows() -> list[tuple[str, str, str]]:
    text = TROUBLESHOOTING.read_text(encoding="utf-8").split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and line.startswith("|") and cells[0] not in ("input", "---"):
            rows.append((cells[0], cells[1].replace("`", ""), cells[2]))
    return rows


def record(rid: str = "r1", image: str = "good.png", text: str = "Describe the image.\n<image>") -> dict:
    return {"id": rid, "image": image, "input": text}


def _overlong(ctx: Ctx) -> dict[str, int]:
    model, processor = load_model(ctx.tiny.llava)
    path = ctx.write([record("long", text="word " * 600 + "<image>")])
    records, _ = load_prompts(path, str(ctx.images))
    _, skipped = drop_overlong(records, processor, model, get_family("llava"), str(ctx.images), 16, ctx.on_error, path)
    return {"too_long": skipped}


def _bad_file(ctx: Ctx, data: bytes) -> Image.Image:
    (ctx.images / "bad.png").write_bytes(data)
    return ctx.image("bad.png")


def _truncated(ctx: Ctx) -> Image.Image:
    Image.effect_noise((64, 64), 50).convert("RGB").save(ctx.images / "noise.png")  # a header, then much data
    data = (ctx.images / "noise.png").read_bytes()
    return _bad_file(ctx, data[: len(data) // 2])


def _symlink_out(ctx: Ctx) -> dict[str, int]:
    outside = ctx.tmp / "secret.png"
    shutil.copy(ctx.images / "good.png", outside)
    os.symlink(outside, ctx.images / "link.png")
    return ctx.prompts([record(image="link.png")])


def _grayscale(ctx: Ctx) -> str:
    Image.new("L", (2, 2), 77).save(ctx.images / "g.png")
    out = ctx.image("g.png")
    assert out.getpixel((0, 0)) == (77, 77, 77)
    return out.mode


def _rgba(ctx: Ctx) -> str:
    img = Image.new("RGBA", (1, 1), (255, 0, 0, 0))
    img.save(ctx.images / "a.png")
    out = ctx.image("a.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    return out.mode


def _cmyk(ctx: Ctx) -> str:
    Image.new("CMYK", (1, 1), (255, 0, 0, 0)).save(ctx.images / "c.tif")
    out = ctx.image("c.tif")
    assert out.getpixel((0, 0)) == (0, 255, 255)
    return out.mode


def _sixteen_bit(ctx: Ctx) -> str:
    img = Image.new("I;16", (1, 1))
    img.putpixel((0, 0), 256 * 128)
    img.save(ctx.images / "s.png")
    out = ctx.image("s.png")
    assert out.getpixel((0, 0)) == (128, 128, 128)
    return out.mode


def _bomb(ctx: Ctx) -> Image.Image:
    Image.new("L", (200, 200)).save(ctx.images / "big.png")
    return load_image(str(ctx.images), "big.png", max_pixels=10_000)


def _config(*overrides: str) -> Callable[[Ctx], object]:
    return lambda ctx: validate(compose_config(*overrides))


def _unknown_key(ctx: Ctx) -> object:
    from omegaconf import open_dict

    cfg = compose_config()
    with open_dict(cfg):
        cfg.search.beam_widht = 3
    return validate(cfg)


def _processor_mismatch(ctx: Ctx) -> object:
    model = ctx.tmp / "model"
    shutil.copytree(ctx.tiny.llava, model)
    for f in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        shutil.copy(SHAPESWORLD / "llava" / f, model / f)  # another checkpoint's processor
    return load_model(str(model))


def _clip_mismatch(ctx: Ctx) -> object:
    weights = SHAPESWORLD / "clip" / "shapesworld-clip.safetensors"
    return load_clip(ctx.tiny.clip_arch, str(weights), ctx.tiny.clip_config)


def _pairs(scores: list[float], texts: list[str]) -> Callable[[Ctx], dict[str, int]]:
    return lambda ctx: {select_pair(scores, texts).skip: 1}


CASES: dict[tuple[str, str], Callable[[Ctx], object]] = {
    ("prompt file", "missing"): lambda ctx: load_prompts(str(ctx.tmp / "prompts.json"), str(ctx.images)),
    ("prompt file", "not JSON"): lambda ctx: ctx.prompts(None, raw=b"[{not json"),
    ("prompt file", "not UTF-8"): lambda ctx: ctx.prompts(None, raw=b'[{"id": "\xff\xfe"}]'),
    ("prompt file", "not a list of records"): lambda ctx: ctx.prompts({"id": "1"}),
    ("prompt file", "empty list"): lambda ctx: ctx.prompts([]),
    ("prompt file", "record without id / image / input"): lambda ctx: ctx.prompts([{"id": "r1", "image": "good.png"}]),
    ("prompt file", "duplicate id"): lambda ctx: ctx.prompts([record("ok")]),
    ("prompt file", "no <image> placeholder"): lambda ctx: ctx.prompts([record(text="Describe the image.")]),
    ("prompt file", "two <image> placeholders"): lambda ctx: ctx.prompts([record(text="<image> and <image>")]),
    ("prompt file", "prompt longer than the model context"): _overlong,
    ("image", "missing"): lambda ctx: ctx.prompts([record(image="absent.png")]),
    ("image", "zero bytes"): lambda ctx: _bad_file(ctx, b""),
    ("image", "truncated"): _truncated,
    ("image", "not an image"): lambda ctx: _bad_file(ctx, b"plain text, not a PNG"),
    ("image", "enormous dimensions"): _bomb,
    ("image", "path with .."): lambda ctx: ctx.prompts([record(image="../images/good.png/../../x.png")]),
    ("image", "absolute path"): lambda ctx: ctx.prompts([record(image=str(ctx.images / "good.png"))]),
    ("image", "symlink out of the image root"): _symlink_out,
    ("image", "grayscale"): _grayscale,
    ("image", "RGBA"): _rgba,
    ("image", "CMYK"): _cmyk,
    ("image", "16-bit"): _sixteen_bit,
    ("config", "unknown key"): _unknown_key,
    ("config", "wrong type"): _config("search.beam_width=five"),
    ("config", "reward.lam outside [0, 1]"): _config("reward.lam=1.5"),
    ("config", "beam width 0 or negative"): _config("search.beam_width=-1"),
    ("config", "keep_top + keep_bottom > beam width"): _config("search.keep_top=3", "search.keep_bottom=3"),
    ("config", "model path missing"): lambda ctx: load_model(str(ctx.tmp / "no_model")),
    ("config", "processor that does not match the model"): _processor_mismatch,
    ("config", "CLIP weights that do not match the architecture"): _clip_mismatch,
    ("pairs", "chosen == rejected"): _pairs([0.9, 0.1], [" A cat.", "A cat. "]),
    ("pairs", "NaN score"): _pairs([0.9, float("nan")], [" A cat.", " A dog."]),
    **CLIP_CASES,
    **DPO_CASES,
    **RUNDIR_CASES,
    **RUNTIME_CASES,
    **SECURITY_CASES,
    **COMMAND_CASES,
}
# What each error must name besides the problem, so a user can find it.
NAMES = {"prompt file": "prompts.json", "image": ".png", "config": "'"}


def test_every_row_has_a_case_and_every_case_a_row():
    rows = {(i, p) for i, p, _ in table_rows()}
    assert rows == set(CASES)


@pytest.mark.parametrize(("input_", "problem", "says"), table_rows(), ids=lambda v: v if len(v) < 30 else v[:30])
def test_row(input_: str, problem: str, says: str, tmp_path: Path, tiny_models) -> None:
    fragments = re.findall(r"`([^`]*)`", says)
    case = CASES[(input_, problem)]
    if says.startswith("error"):
        with pytest.raises(CSRError) as info:
            case(Ctx(tmp_path / "raise", tiny_models, "raise"))
        message = str(info.value)
        assert fragments[0] in message
        if input_ in NAMES and problem != "model path missing":
            assert NAMES[input_] in message, f"the message does not say which {input_}: {message}"
        if "(skip:" in says:  # the same record with data.on_error=skip: dropped and counted
            assert case(Ctx(tmp_path / "skip", tiny_models, "skip")) == {fragments[1]: 1}
    elif says.startswith("converted"):
        assert case(Ctx(tmp_path, tiny_models, "raise")) == fragments[0]
    elif says.startswith("recomputed"):  # a cache that no longer matches: redone, and the log says so
        assert fragments[0] in case(Ctx(tmp_path, tiny_models, "raise"))
    else:
        assert says.startswith("skipped, counted")
        assert case(Ctx(tmp_path, tiny_models, "raise")) == {fragments[0]: 1}
