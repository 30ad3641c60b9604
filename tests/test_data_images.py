"""Image decoding and path safety: format conversions, huge and broken files, path escapes."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import load_image
from bench.data.images import safe_image_path
from bench.errors import BenchError


def jpeg_bytes(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def uniform_grey_jpeg(width: int, height: int) -> bytes:
    """A valid baseline greyscale JPEG of any size without ever holding its pixels.

    Headers come from a tiny JPEG that Pillow writes with the standard Huffman tables; the scan is
    written by hand: every 8x8 block is DC difference 0 ("00") then end-of-block ("1010"), i.e.
    mid-grey. Four blocks are exactly 3 bytes, so a 20000x20000 image is about 4.7 MB.
    """
    small = jpeg_bytes(Image.new("L", (16, 16), 128), quality=90)
    pos, header = 2, bytearray(small[:2])
    while True:
        marker, length = small[pos : pos + 2], struct.unpack(">H", small[pos + 2 : pos + 4])[0]
        segment = bytearray(small[pos : pos + 2 + length])
        if marker == b"\xff\xc0":  # SOF0: precision, height, width
            segment[5:9] = struct.pack(">HH", height, width)
        header += segment
        pos += 2 + length
        if marker == b"\xff\xda":  # start of scan: the entropy-coded data follows
            break
    blocks = -(-width // 8) * -(-height // 8)
    bits = "001010" * blocks
    bits += "1" * (-len(bits) % 8)  # pad the last byte with 1s, as the standard says
    full, rest = divmod(blocks, 4)
    data = b"\x28\xa2\x8a" * full + int(bits[full * 24 :] or "0", 2).to_bytes(len(bits[full * 24 :]) // 8, "big")
    return bytes(header) + data + b"\xff\xd9"


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (the pixel data is a stub): only the header is read."""
    raw = io.BytesIO()
    Image.new("RGB", (4, 4)).save(raw, format="PNG")
    data = bytearray(raw.getvalue())
    ihdr = 8  # after the signature: length(4) 'IHDR'(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


# --- conversions ---------------------------------------------------------------------------------

def test_png_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue -> white
    im.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (4, 2)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((1, 0)))
    assert out.getpixel((2, 1)) == (255, 0, 0)
    for mode in ("LA", "P"):
        other = im.convert(mode)
        if mode == "P":
            other.info["transparency"] = other.getpixel((0, 0))
        other.save(tmp_path / f"{mode}.png", **({"transparency": other.info["transparency"]} if mode == "P" else {}))
        converted = load_image(tmp_path / f"{mode}.png")
        assert converted.mode == "RGB" and converted.getpixel((0, 0)) == (255, 255, 255), mode


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    (tmp_path / "c.jpg").write_bytes(jpeg_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95))
    out = load_image(tmp_path / "c.jpg")
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 230 and g < 25 and b < 25  # cyan 0, magenta+yellow full: red


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (4, 4, 4)]


def test_one_by_one_image(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 200).save(tmp_path / "p.jpg")
    out = load_image(tmp_path / "p.jpg")
    assert out.size == (1, 1) and out.mode == "RGB"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (20, 10), (0, 128, 0)).save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 20)


# --- huge images ---------------------------------------------------------------------------------

def test_synthesized_jpeg_helper_is_a_valid_image(tmp_path: Path) -> None:
    (tmp_path / "s.jpg").write_bytes(uniform_grey_jpeg(40, 24))
    im = Image.open(tmp_path / "s.jpg")
    im.load()
    assert im.size == (40, 24) and im.getextrema() == (128, 128)


def test_20000x20000_jpeg_is_decoded_downscaled_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    path.write_bytes(uniform_grey_jpeg(20000, 20000))
    assert path.stat().st_size < 6_000_000
    # In a fresh process so its peak memory is this decode's alone (full size would be >= 400 MB).
    code = (
        "import re, sys; from bench.data import load_image\n"
        "im = load_image(sys.argv[1]); print(im.size, im.mode, im.getpixel((5, 5)))\n"
        # VmHWM belongs to this process's own address space; ru_maxrss would carry over the
        # (large) high-water mark of the pytest worker that forked it.
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    size_line, rss_mb = out.stdout.strip().splitlines()
    assert size_line == "(2048, 2048) RGB (128, 128, 128)"
    assert int(rss_mb) < 250


def test_huge_non_jpeg_is_refused_from_its_header(tmp_path: Path) -> None:
    # Over bench's max_pixels (and under Pillow's own limit): refused with the size, nothing decoded.
    path = png_with_size(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(BenchError, match=r"big\.png: image is 8000x8000 = 64000000 pixels, more than the 40000000"):
        load_image(path)
    # Far over: Pillow's decompression-bomb guard answers first; still one line naming the file.
    path = png_with_size(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(BenchError, match=r"huge\.png: image is too large to decode"):
        load_image(path)


def test_large_png_is_downscaled(tmp_path: Path) -> None:
    Image.new("RGB", (3000, 1000), (9, 9, 9)).save(tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png").size == (2048, 683)
    assert load_image(tmp_path / "wide.png", max_side=None).size == (3000, 1000)


# --- broken files --------------------------------------------------------------------------------

def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = jpeg_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchError, match=r"t\.jpg: corrupt or truncated image"):
        load_image(tmp_path / "t.jpg")


def test_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    with pytest.raises(BenchError, match=r"c\.jpg: corrupt or truncated image"):
        load_image(tmp_path / "c.jpg")
    (tmp_path / "n.png").write_bytes(b"plain text, not an image")
    with pytest.raises(BenchError, match=r"n\.png: not an image file"):
        load_image(tmp_path / "n.png")


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"gone\.jpg: image file not found"):
        load_image(tmp_path / "gone.jpg")


def test_load_image_pickles_for_dataloader_workers() -> None:
    assert pickle.loads(pickle.dumps(load_image)) is load_image


# --- path escapes --------------------------------------------------------------------------------

def test_safe_image_path_accepts_names_inside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert safe_image_path(tmp_path, "sub/a.jpg") == (tmp_path / "sub" / "a.jpg").resolve()
    assert safe_image_path(tmp_path, "sub/../a.jpg") == (tmp_path / "a.jpg").resolve()


@pytest.mark.parametrize("name", ["../../etc/passwd", "sub/../../x.jpg", "/etc/passwd"])
def test_path_escaping_images_dir_is_refused(tmp_path: Path, name: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(BenchError, match=r"captions\.txt line 4: image path .* (leads outside|is absolute)"):
        safe_image_path(images, name, context="captions.txt line 4")


def test_symlink_pointing_out_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (2, 2)).save(secret)
    os.symlink(secret, images / "link.jpg")
    with pytest.raises(BenchError, match=r"image path 'link\.jpg' leads outside the images folder"):
        safe_image_path(images, "link.jpg")
