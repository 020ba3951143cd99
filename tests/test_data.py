import json
import os
from pathlib import Path
from typing import Any

import pytest
from bad_input_clip import write_tiff
from PIL import Image

from csr.core.errors import CSRError
from csr.data.images import load_image
from csr.data.prompts import PromptRecord, load_prompts, resolve_image_path

REFERENCE = Path("/work/shared/reference/csr_prompts_12k.json")


def _write_prompts(path: Path, records: Any) -> str:
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An image root with five tiny images a.jpg .. e.jpg."""
    images = tmp_path / "images"
    images.mkdir()
    for name in "abcde":
        Image.new("RGB", (4, 4), (10, 20, 30)).save(images / f"{name}.jpg")
    return images


def _rec(rid: Any, image: str = "a.jpg", text: str = "Describe the following image.\n<image>") -> dict:
    return {"id": rid, "image": image, "input": text}


def test_placeholder_before_or_after_gives_same_prompt(tmp_path: Path, root: Path) -> None:
    path = _write_prompts(
        tmp_path / "p.json",
        [
            _rec("000000442786", "a.jpg", "Describe the following image.\n<image>"),
            _rec(7, "b.jpg", "<image>\nDescribe the following image."),
            _rec("x", "c.jpg", "  Describe the following image. <image>  "),
        ],
    )
    records, skipped = load_prompts(path, str(root))
    assert skipped == {}
    assert records[0] == PromptRecord(
        id="000000442786",
        image="a.jpg",
        prompt="Describe the following image.",
        raw="Describe the following image.\n<image>",
    )
    assert records[1].id == "7"  # integer ids become strings
    assert {r.prompt for r in records} == {"Describe the following image."}


@pytest.mark.parametrize(
    ("record", "reason", "fragment"),
    [
        ("just a string", "bad_record", "expected an object"),
        ({"id": "bad", "image": "a.jpg"}, "bad_record", "missing key"),
        (_rec(True), "bad_record", "'id'"),
        (_rec("bad", image=""), "bad_record", "'image'"),
        ({"id": "bad", "image": "a.jpg", "input": 3}, "bad_record", "'input'"),
        (_rec("a1"), "duplicate_id", "duplicate id"),
        (_rec("bad", text="Describe it."), "no_placeholder", "no <image>"),
        (_rec("bad", text="<image> and <image>"), "two_placeholders", "2 <image>"),
        (_rec("bad", text=" <image>\n "), "empty_prompt", "no text"),
        (_rec("bad", image="/etc/passwd"), "unsafe_path", "absolute"),
        (_rec("bad", image="../outside.jpg"), "unsafe_path", "outside image_root"),
        (_rec("bad", image="a.jpg\0.png"), "unsafe_path", "contains a NUL byte"),
        (_rec("bad", image="\ud800.jpg"), "unsafe_path", "contains a lone surrogate"),
        (_rec("bad", image="missing.jpg"), "missing_image", "not found"),
    ],
)
def test_record_errors_raise_or_skip(
    tmp_path: Path, root: Path, record: Any, reason: str, fragment: str
) -> None:
    (tmp_path / "outside.jpg").write_bytes(b"x")  # exists, so only the path check can reject it
    path = _write_prompts(tmp_path / "prompts.json", [_rec("a1"), _rec("b2", "b.jpg"), record])
    with pytest.raises(CSRError) as info:
        load_prompts(path, str(root))
    message = str(info.value)
    assert "prompts.json" in message and "record 2" in message and fragment in message
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        assert repr(record["id"]) in message

    records, skipped = load_prompts(path, str(root), on_error="skip")
    assert [r.id for r in records] == ["a1", "b2"]
    assert skipped == {reason: 1}


def test_symlink_escaping_root_is_unsafe(tmp_path: Path, root: Path) -> None:
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (2, 2)).save(secret)
    os.symlink(secret, root / "link.jpg")
    os.symlink(root / "a.jpg", root / "inside.jpg")  # a link within the root is fine
    assert resolve_image_path(root, "inside.jpg") == (root / "a.jpg").resolve()
    assert resolve_image_path(root, "sub/../b.jpg") == (root / "b.jpg").resolve()
    path = _write_prompts(tmp_path / "p.json", [_rec("ok"), _rec("lnk", "link.jpg")])
    with pytest.raises(CSRError, match=r"p\.json: record 1 \(id='lnk'\).*outside image_root"):
        load_prompts(path, str(root))
    with pytest.raises(CSRError, match="outside image_root"):
        load_image(str(root), "link.jpg")


def test_symlink_loop_is_one_error_naming_the_record(tmp_path: Path, root: Path) -> None:
    os.symlink(root / "loop2.jpg", root / "loop1.jpg")
    os.symlink(root / "loop1.jpg", root / "loop2.jpg")
    path = _write_prompts(tmp_path / "p.json", [_rec("ok"), _rec("lp", "loop1.jpg")])
    with pytest.raises(CSRError, match=r"p\.json: record 1 \(id='lp'\): image path 'loop1.jpg' .* is a symlink loop"):
        load_prompts(path, str(root))
    assert load_prompts(path, str(root), on_error="skip")[1] == {"unsafe_path": 1}
    with pytest.raises(CSRError, match="'loop1.jpg' under image_root .* is a symlink loop"):
        load_image(str(root), "loop1.jpg")
    for bad, fragment in (("x\0.jpg", "NUL byte"), ("\udcff.jpg", "lone surrogate")):
        with pytest.raises(CSRError, match=fragment):
            load_image(str(root), bad)


def test_skip_mode_counts_several_reasons(tmp_path: Path, root: Path) -> None:
    path = _write_prompts(
        tmp_path / "p.json",
        [
            _rec("1"),
            _rec("2", "nope.jpg"),
            _rec("3", "nope2.jpg"),
            _rec("1", "b.jpg"),
            _rec("4", text="no placeholder"),
            _rec("5", "c.jpg"),
        ],
    )
    records, skipped = load_prompts(path, str(root), on_error="skip")
    assert [r.id for r in records] == ["1", "5"]
    assert skipped == {"missing_image": 2, "duplicate_id": 1, "no_placeholder": 1}
    # Without the image check, missing files are not a problem.
    records, skipped = load_prompts(path, str(root), on_error="skip", check_images=False)
    assert [r.id for r in records] == ["1", "2", "3", "5"]
    assert skipped == {"duplicate_id": 1, "no_placeholder": 1}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('[{"id": "1",\n "image": }]', "invalid JSON at line 2 column 11"),
        ('{"id": "1"}', "must be a JSON list"),
        ("[]", "empty"),
    ],
)
def test_file_level_errors_raise_even_in_skip_mode(
    tmp_path: Path, root: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(content)
    for on_error in ("raise", "skip"):
        with pytest.raises(CSRError, match="prompts.json") as info:
            load_prompts(str(path), str(root), on_error=on_error)
        assert fragment in str(info.value)


def test_missing_file_bad_option_and_nothing_usable(tmp_path: Path, root: Path) -> None:
    with pytest.raises(CSRError, match=r"absent\.json: prompt file not found"):
        load_prompts(str(tmp_path / "absent.json"), str(root))
    path = _write_prompts(tmp_path / "p.json", [_rec("1", "gone.jpg")])
    with pytest.raises(CSRError, match="data.on_error"):
        load_prompts(path, str(root), on_error="ignore")
    with pytest.raises(CSRError, match="data.limit"):
        load_prompts(path, str(root), limit=0)
    with pytest.raises(CSRError, match=r"p\.json: no usable records.*missing_image"):
        load_prompts(path, str(root), on_error="skip")


def test_limit_and_shuffle_are_deterministic(tmp_path: Path, root: Path) -> None:
    recs = [_rec(str(i), f"{'abcde'[i % 5]}.jpg") for i in range(20)]
    recs.insert(3, _rec("bad", "gone.jpg"))
    path = _write_prompts(tmp_path / "p.json", recs)

    plain, _ = load_prompts(path, str(root), limit=5, on_error="skip")
    assert [r.id for r in plain] == ["0", "1", "2", "3", "4"]  # limit counts good records only

    first, _ = load_prompts(path, str(root), limit=6, shuffle_seed=13, on_error="skip")
    again, _ = load_prompts(path, str(root), limit=6, shuffle_seed=13, on_error="skip")
    other, _ = load_prompts(path, str(root), limit=6, shuffle_seed=14, on_error="skip")
    full, _ = load_prompts(path, str(root), shuffle_seed=13, on_error="skip")
    assert first == again
    assert first != other
    assert first == full[:6]  # shuffle happens before the limit
    assert sorted(int(r.id) for r in full) == list(range(20))


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference prompt file not available")
def test_reference_prompt_file_parses(tmp_path: Path) -> None:
    records, skipped = load_prompts(str(REFERENCE), str(tmp_path), check_images=False)
    assert skipped == {}
    assert len(records) == 12856
    assert len({r.prompt for r in records}) == 11
    assert all("<image>" not in r.prompt and r.prompt == r.prompt.strip() for r in records)


# ---- images -----------------------------------------------------------------


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    img.save(tmp_path / "rgba.png")
    out = load_image(str(tmp_path), "rgba.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)


def test_sixteen_bit_grayscale_scaled_not_clipped(tmp_path: Path) -> None:
    img = Image.new("I;16", (4, 1))
    for x, v in enumerate([0, 256 * 64, 256 * 128, 65535]):
        img.putpixel((x, 0), v)
    img.save(tmp_path / "g16.png")
    out = load_image(str(tmp_path), "g16.png")
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(4)] == [
        (0, 0, 0),
        (64, 64, 64),
        (128, 128, 128),
        (255, 255, 255),
    ]


def test_cmyk_grayscale_palette_to_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # no ink -> white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # full cyan
    cmyk.save(tmp_path / "cmyk.tif")
    out = load_image(str(tmp_path), "cmyk.tif")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 255, 255)

    Image.new("L", (1, 1), 77).save(tmp_path / "gray.png")
    assert load_image(str(tmp_path), "gray.png").getpixel((0, 0)) == (77, 77, 77)

    pal = Image.new("P", (2, 1))
    pal.putpalette([200, 100, 50, 0, 0, 0])
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "pal.png")
    pal.save(tmp_path / "pal_transparent.png", transparency=1)  # index 1 is see-through
    out = load_image(str(tmp_path), "pal.png")
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(2)] == [(200, 100, 50), (0, 0, 0)]
    out = load_image(str(tmp_path), "pal_transparent.png")
    assert [out.getpixel((x, 0)) for x in range(2)] == [(200, 100, 50), (255, 255, 255)]


def test_bad_image_files_raise_naming_the_file(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notimage.jpg").write_bytes(b"this is plain text, not a JPEG" * 10)
    cases = {
        "absent.jpg": "not found",
        "empty.jpg": "empty",
        "truncated.png": "truncated or corrupt",
        "notimage.jpg": "not a recognised image",
    }
    for name, problem in cases.items():
        with pytest.raises(CSRError) as info:
            load_image(str(tmp_path), name)
        assert name in str(info.value) and problem in str(info.value)
    assert load_image(str(tmp_path), "good.png").size == (64, 64)


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(CSRError, match=r"big\.png: 100x100 = 10000 pixels exceeds max_pixels=9999"):
        load_image(str(tmp_path), "big.png", max_pixels=9_999)
    assert load_image(str(tmp_path), "big.png", max_pixels=10_000).size == (100, 100)


def test_pillow_bomb_warning_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    # Between Pillow's limit and twice it, Pillow only warns; we must refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)
    with pytest.raises(CSRError, match=r"big\.png: too many pixels"):
        load_image(str(tmp_path), "big.png")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (255, 0, 0))
    img.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: stored row 0 is the visual right side, column 0 the top
    img.save(tmp_path / "rotated.png", exif=exif)
    out = load_image(str(tmp_path), "rotated.png")
    assert out.size == (1, 2)
    assert [out.getpixel((0, y)) for y in range(2)] == [(255, 0, 0), (0, 0, 255)]  # as a viewer shows it


def test_float_image_read_as_intensities_in_0_1(tmp_path: Path) -> None:
    img = Image.new("F", (4, 1))
    for x, v in enumerate([0.0, 0.25, 0.5, 1.0]):
        img.putpixel((x, 0), v)
    img.save(tmp_path / "f.tif")
    out = load_image(str(tmp_path), "f.tif")
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]  # rint(v * 255)
    for name, values, fragment in (("hdr.tif", [0.0, 3.5], r"\[0.0, 3.5\]"), ("neg.tif", [-0.5, 0.5], "-0.5"),
                                   ("nan.tif", [float("nan"), 0.5], "nan")):
        img = Image.new("F", (2, 1))
        for x, v in enumerate(values):
            img.putpixel((x, 0), v)
        img.save(tmp_path / name)
        with pytest.raises(CSRError, match=rf"{name}: mode 'F' samples in .*{fragment}.* must hold intensities in \[0, 1\]"):
            load_image(str(tmp_path), name)


def test_integer_images_scaled_by_their_declared_range(tmp_path: Path) -> None:
    write_tiff(tmp_path / "s16.tif", [0, 128 * 128, 32767], 16, 2)  # signed 16-bit: 0..32767 -> 0..255
    with Image.open(tmp_path / "s16.tif") as img:
        assert img.mode == "I"
    out = load_image(str(tmp_path), "s16.tif")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    write_tiff(tmp_path / "neg.tif", [0, -100], 16, 2)
    with pytest.raises(CSRError, match=r"neg\.tif: mode 'I' with negative samples \(min -100\)"):
        load_image(str(tmp_path), "neg.tif")
    write_tiff(tmp_path / "i32.tif", [0, 70000], 32, 2)
    with pytest.raises(CSRError, match=r"i32\.tif: 32-bit integer samples have no standard display range"):
        load_image(str(tmp_path), "i32.tif")
    (tmp_path / "g16.pgm").write_bytes(b"P5 3 1 65535\n" + bytes([0, 0, 128, 0, 255, 255]))  # PGM: 'I'
    out = load_image(str(tmp_path), "g16.pgm")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_modes_without_a_faithful_conversion_are_refused(tmp_path: Path) -> None:
    from csr.data import images

    cards = ["SIMPLE  = T", "BITPIX  = 32", "NAXIS   = 2", "NAXIS1  = 1", "NAXIS2  = 1", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    (tmp_path / "i.fits").write_bytes(header + (7).to_bytes(4, "big").ljust(2880, b"\0"))  # FITS: mode 'I'
    with pytest.raises(CSRError, match=r"i\.fits: mode 'I' \(32-bit integer\) from a FITS file has no declared"):
        load_image(str(tmp_path), "i.fits")
    with pytest.raises(images._Unconvertible, match="mode 'La' has no faithful RGB conversion"):
        images._to_rgb(Image.new("La", (1, 1)))
