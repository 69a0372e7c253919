"""Every bad image named in the preprocessing issue gives a clear error or a correct decode."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from facray.data.imageio import ImageError, decode_image, read_image


def _jpeg(img, quality=90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


FACE = np.random.default_rng(0).integers(0, 255, (60, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("data, kind, text", [
    (b"", "empty", "empty file (0 bytes)"),
    (b"hello, I am a text file\n", "not_an_image", "not an image"),
    (_jpeg(FACE)[:300], "truncated", "truncated JPEG"),
    (cv2.imencode(".png", FACE)[1].tobytes()[:-30], "truncated", "truncated PNG"),
    (_jpeg(np.zeros((8, 8, 3), np.uint8)), "too_small", "8x8"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9", "corrupt", "corrupt JPEG"),
])
def test_bad_bytes_name_the_file_and_the_problem(data, kind, text):
    with pytest.raises(ImageError) as e:
        decode_image(data, "faces/x.jpg")
    assert e.value.kind == kind and text in str(e.value) and str(e.value).startswith("faces/x.jpg: ")


def test_enormous_image_is_refused_from_the_header():
    png = bytearray(cv2.imencode(".png", FACE)[1].tobytes())
    png[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # claims 400 MP
    with pytest.raises(ImageError, match="20000x20000 = 400 MP, over the 50 MP cap") as e:
        decode_image(bytes(png), "big.png")
    assert e.value.kind == "too_large"
    with pytest.raises(ImageError, match="over the 0 MP cap"):
        decode_image(_jpeg(FACE), "cap.jpg", max_pixels=1000)  # the JPEG header path


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read file") as e:
        read_image(str(tmp_path / "nope.jpg"))
    assert e.value.kind == "unreadable"


def test_grayscale_rgba_and_16bit_become_8bit_bgr():
    grey = decode_image(cv2.imencode(".png", FACE[..., 0])[1].tobytes())
    assert grey.shape == (60, 40, 3) and (grey[..., 0] == FACE[..., 0]).all()
    rgba = np.dstack([FACE, np.full(FACE.shape[:2], 255, np.uint8)])
    assert (decode_image(cv2.imencode(".png", rgba)[1].tobytes()) == FACE).all()
    transparent = np.dstack([FACE, np.zeros(FACE.shape[:2], np.uint8)])
    assert (decode_image(cv2.imencode(".png", transparent)[1].tobytes()) == 255).all()  # on white
    deep = FACE.astype(np.uint16) * 257
    assert (decode_image(cv2.imencode(".png", deep)[1].tobytes()) == FACE).all()
    assert decode_image(_jpeg(FACE[..., 0])).shape == (60, 40, 3)


def test_cmyk_jpeg_and_exif_rotation():
    Image = pytest.importorskip("PIL.Image")
    rgb = Image.fromarray(np.full((60, 40, 3), (200, 30, 30), np.uint8))
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG", quality=95)
    out = decode_image(buf.getvalue(), "cmyk.jpg")
    assert out.shape == (60, 40, 3) and out[..., 2].mean() > 150 and out[..., 0].mean() < 90  # still red
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rgb.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), "rot.jpg").shape == (40, 60, 3)


def test_bytes_after_the_image_are_not_truncation():
    """Motion photos and padded files: data after EOI / IEND decodes as OpenCV and Pillow do."""
    jpeg, png = _jpeg(FACE), cv2.imencode(".png", FACE)[1].tobytes()
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40  # what a motion photo appends
    assert decode_image(jpeg + video, "motion.jpg").shape == (60, 40, 3)
    assert decode_image(jpeg + b"\x00" * 4096, "padded.jpg").shape == (60, 40, 3)
    assert (decode_image(png + b"trailing junk" * 100, "padded.png") == FACE).all()
    # A truncated file whose thumbnail-like early FF D9 must not pass: cut inside the scan.
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(jpeg[: len(jpeg) - 40], "cut.jpg")


@pytest.mark.parametrize("fmt", ["webp", "tiff", "gif"])
def test_memory_bombs_in_other_formats_are_refused_from_the_header(fmt):
    """A tiny lossless WebP / TIFF / GIF that decodes to 8000x8000 is refused before decoding."""
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.new("L" if fmt == "gif" else "RGB", (8000, 8000)).save(
        buf, fmt.upper(), **({"lossless": True} if fmt == "webp" else {"compression": "tiff_lzw"} if fmt == "tiff" else {}))
    data = buf.getvalue()
    assert len(data) < 2_000_000  # small on disk, 192 MB decoded
    with pytest.raises(ImageError, match="8000x8000 = 64 MP, over the 50 MP cap") as e:
        decode_image(data, f"bomb.{fmt}")
    assert e.value.kind == "too_large"


@pytest.mark.parametrize("fmt", ["webp", "tiff", "gif"])
def test_other_formats_decode(fmt):
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(FACE[..., ::-1]).save(buf, fmt.upper(), **({"lossless": True} if fmt == "webp" else {}))
    out = decode_image(buf.getvalue(), f"face.{fmt}")
    assert out.shape == (60, 40, 3)
    if fmt != "gif":  # GIF is palettised: colours change
        assert np.abs(out.astype(int) - FACE).mean() < 3


def _with_orientation(rgb: np.ndarray, fmt: str, orientation: int) -> bytes:
    Image = pytest.importorskip("PIL.Image")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(rgb).save(buf, fmt, exif=exif.tobytes(), **extra)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_format_is_shown_upright_as_a_viewer_shows_it(fmt, orientation):
    """Pillow's exif_transpose is the reference viewer; lossless formats must match it exactly."""
    ImageOps = pytest.importorskip("PIL.ImageOps")
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    data = _with_orientation(rgb, fmt, orientation)
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[..., ::-1]
    got = decode_image(data, f"x.{fmt.lower()}")
    assert got.shape == viewer.shape
    assert np.abs(got.astype(int) - viewer).max() <= (4 if fmt == "JPEG" else 0)


def test_a_turned_face_decodes_to_the_upright_pixels_in_png_and_webp():
    """The issue's case: the same pixels stored turned 90 degrees with Orientation 6 (PNG eXIf,
    lossless WebP) decode to exactly the upright PNG's pixels."""
    upright = np.random.default_rng(5).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # turned anticlockwise: 6 turns it back
    reference = decode_image(cv2.imencode(".png", upright[..., ::-1])[1].tobytes(), "up.png")
    for fmt in ("PNG", "WEBP"):
        assert np.array_equal(decode_image(_with_orientation(stored, fmt, 6), f"turned.{fmt}"), reference)


def test_avif_decodes_and_heif_without_a_decoder_is_named():
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    try:
        Image.fromarray(FACE[..., ::-1]).save(buf, "AVIF", quality=90)
    except (KeyError, OSError):
        pytest.skip("this Pillow writes no AVIF")
    assert decode_image(buf.getvalue(), "x.avif").shape == FACE.shape
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    try:  # pillow-heif is optional; without it the error names the format
        import pillow_heif  # noqa: F401
    except ImportError:
        with pytest.raises(ImageError, match=r"x.heic: HEIF image: this install cannot decode HEIF") as e:
            decode_image(heic, "x.heic")
        assert e.value.kind == "unsupported"
