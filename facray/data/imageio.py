"""Decode image bytes into 8-bit BGR arrays, or say exactly why not.

Pure numpy/OpenCV; runs wherever images are decoded (driver for ``data check``, Ray Data actors for
``prepare`` and ``label``). Every failure is an :class:`ImageError` whose message names the file
and the problem, so callers can turn it into an error row instead of losing the job.

What is handled rather than refused: grayscale and 16-bit images (converted to 8-bit BGR), RGBA
(alpha dropped after compositing on white), CMYK JPEGs (OpenCV converts), and EXIF orientation in
every format that carries one: the pixels come out upright as a viewer shows them. JPEG APP1, PNG
``eXIf`` and WebP ``EXIF`` are read by one rule (:func:`exif_orientation`, :func:`apply_orientation`);
OpenCV's TIFF reader and the HEIF/AVIF libraries turn their images upright themselves. What is refused: empty files, files that are not images,
truncated JPEG/PNG, formats this install cannot decode (an error naming the format, e.g. HEIC
without ``pillow-heif``), images smaller than ``min_side`` and images over ``max_pixels`` (checked from
the header of every accepted format before the pixels are decoded, so a decompression bomb costs
nothing, be it a PNG or a 2 KB lossless WebP of 8000x8000).

Truncation is judged by the file's structure, not its last bytes: a JPEG is complete when an
end-of-image marker follows its first scan, a PNG when its chunks run to IEND. Bytes after the
image (phone "motion photos", padded files) are fine, as they are to OpenCV and Pillow.
"""
from __future__ import annotations

import io
import struct

import cv2
import numpy as np

from facray import storage

MAX_PIXELS = 50_000_000  # 50 MP: larger than any face photo, small enough to bound memory
MIN_SIDE = 16

_MAGIC = {
    b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"BM": "bmp",
    b"RIFF": "webp", b"GIF8": "gif", b"II*\x00": "tiff", b"MM\x00*": "tiff",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n": "jpeg2000", b"\xff\x4f\xff\x51": "jpeg2000",
    b"\xff\x0a": "jxl", b"\x00\x00\x00\x0cJXL \r\n\x87\n": "jxl",
}
# ISO base media files (HEIF, AVIF) start with an ``ftyp`` box: its major and compatible brands.
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
# Formats OpenCV's wheel decodes here; the others go to Pillow (with its AVIF support, and HEIF
# when the pillow-heif plugin is installed) or are refused naming the format.
_OPENCV_FORMATS = {"jpeg", "png", "bmp", "webp", "gif", "tiff", "jpeg2000", "pnm"}


class ImageError(ValueError):
    """An image could not be used; ``kind`` is a short machine-readable reason."""

    def __init__(self, path: str, kind: str, detail: str):
        self.path, self.kind, self.detail = path, kind, detail
        super().__init__(f"{path}: {detail}")


def sniff_format(data: bytes) -> str | None:
    """The image format ``data``'s first bytes (64 suffice) announce, or None."""
    if data[4:8] == b"ftyp":
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(len(data), 64) - 3, 4)}
        return "avif" if brands & _AVIF_BRANDS else "heif" if brands & _HEIF_BRANDS else None
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n":
        return "pnm"
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            if fmt == "webp" and data[8:12] != b"WEBP":
                continue
            return fmt
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header without decoding pixels; None if not found."""
    try:
        if fmt == "png" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if fmt == "jpeg":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    i += 1 if marker == 0xFF else 2
                    continue
                seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                i += 2 + seg_len
        if fmt == "bmp" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
    except struct.error:
        pass
    return _pillow_size(data)


def _pillow():
    """Pillow's ``Image``, with HEIF added when the optional ``pillow-heif`` plugin is installed."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None  # facray applies its own cap, with its own message
    try:
        import pillow_heif
        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    return Image


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from Pillow's lazy open, which reads the header only (WebP, TIFF, GIF, ...)."""
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse: size unknown
        return None


def _pillow_decode(data: bytes) -> np.ndarray | None:
    """Formats OpenCV's wheel does not read (AVIF, HEIF with pillow-heif, JPEG XL with a plugin):
    an 8-bit BGR array from Pillow, or None. Their libraries apply the container's rotation."""
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - any decoder failure is the caller's "corrupt"
        return None
    return np.ascontiguousarray(rgb[..., ::-1])


def _exif_block(data: bytes, fmt: str) -> bytes | None:
    """The EXIF (TIFF-structured) block of a JPEG (APP1), PNG (``eXIf``) or WebP (``EXIF``) file;
    None when there is none. Walks the container's segments or chunks. TIFF has none to give:
    OpenCV's TIFF reader turns the pixels upright itself, whatever the read flags (checked for all
    eight orientations by tests/test_imageio.py)."""
    if fmt == "jpeg":
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
                i += 1 if marker == 0xFF else 2
                continue
            if marker in (0xDA, 0xD9):  # the image data starts: EXIF comes before it
                return None
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
                return data[i + 10:i + 2 + length]
            i += 2 + length
    elif fmt == "png":
        i = 8
        while i + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[i:i + 8])
            if kind == b"eXIf":
                return data[i + 8:i + 8 + length]
            if kind == b"IEND":
                return None
            i += 12 + length
    elif fmt == "webp":
        i = 12
        while i + 8 <= len(data):
            kind, length = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
            if kind == b"EXIF":
                block = data[i + 8:i + 8 + length]
                return block[6:] if block.startswith(b"Exif\x00\x00") else block
            i += 8 + length + (length & 1)  # RIFF chunks are padded to even sizes
    return None


def exif_orientation(data: bytes, fmt: str) -> int:
    """The EXIF Orientation tag (274; 1-8, 1 = upright) of an image file's bytes, 1 when absent or
    unreadable. The EXIF block is found by :func:`_exif_block` and parsed by Pillow."""
    block = _exif_block(data, fmt)
    if not block:
        return 1
    try:
        exif = _pillow().Exif()
        exif.load(block)
        value = int(exif.get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block: show the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


# EXIF 2.3, tag 274: how the stored pixels must be turned to show the image upright.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],                   # mirrored left-right
    3: lambda a: a[::-1, ::-1],                # turned 180 degrees
    4: lambda a: a[::-1],                      # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),         # mirrored across the main diagonal
    6: lambda a: np.rot90(a, -1),              # turned 90 degrees clockwise to show
    7: lambda a: np.rot90(a.transpose(1, 0, 2), 2),  # mirrored across the other diagonal
    8: lambda a: np.rot90(a, 1),               # turned 90 degrees anticlockwise to show
}


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels as stored -> upright as a viewer shows them, for EXIF ``orientation``."""
    turn = _ORIENTATIONS.get(orientation)
    return img if turn is None else np.ascontiguousarray(turn(img))


def jpeg_is_complete(data: bytes) -> bool:
    """True when an end-of-image marker (FF D9) follows the first start-of-scan (FF DA).

    In entropy-coded data every FF byte is stuffed (FF 00) or a restart marker, so the first FF D9
    after the scan starts is the image's end; what follows it (a motion photo's video) is ignored.
    A thumbnail's own FF D9 sits in an APP segment, before the first scan.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False  # lost in the segment chain: not a JPEG libjpeg will finish either
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            return False  # end of image before any scan
        if marker == 0xDA:
            return data.find(b"\xff\xd9", i + 2) != -1
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return False


def png_is_complete(data: bytes) -> bool:
    """True when the chunk chain, followed from the signature, reaches a whole IEND chunk."""
    i = 8
    while i + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        i += 12 + length
        if kind == b"IEND":
            return i <= len(data)
    return False


def decode_image(data: bytes, path: str = "<bytes>", max_pixels: int = MAX_PIXELS,
                 min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode ``data`` to an (H, W, 3) uint8 BGR array or raise :class:`ImageError`."""
    if len(data) == 0:
        raise ImageError(path, "empty", "empty file (0 bytes)")
    fmt = sniff_format(data[:64])
    if fmt is None:
        raise ImageError(path, "not_an_image", "not an image (unrecognised file header)")
    size = header_size(data, fmt)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(path, "too_large", f"image is {size[0]}x{size[1]} = "
                         f"{size[0] * size[1] / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP cap")
    if size is None and fmt not in _OPENCV_FORMATS:
        hint = " (pip install pillow-heif adds HEIC/HEIF)" if fmt == "heif" else ""
        raise ImageError(path, "unsupported", f"{fmt.upper()} image: this install cannot decode {fmt.upper()}{hint}")
    if size is None:
        raise ImageError(path, "corrupt", f"corrupt {fmt.upper()} (no image size in its header)")
    if fmt == "jpeg" and not jpeg_is_complete(data):
        # libjpeg fills a truncated JPEG with grey and only warns; refuse it instead.
        raise ImageError(path, "truncated", "truncated JPEG (no end-of-image marker after the image data)")
    if fmt == "png" and not png_is_complete(data):
        raise ImageError(path, "truncated", "truncated PNG (its chunks stop before IEND)")
    buf = np.frombuffer(data, np.uint8)
    if fmt == "jpeg":
        # COLOR converts grey/CMYK JPEGs to BGR in one pass; orientation is applied below, as for
        # every format, so it is never applied twice.
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    elif fmt in _OPENCV_FORMATS:
        # UNCHANGED keeps alpha and 16-bit depth so they can be converted deliberately below (and
        # never applies orientation).
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    else:
        img = _pillow_decode(data)
    if img is None:
        raise ImageError(path, "corrupt", f"corrupt {fmt.upper()} (it could not be decoded)")
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / np.iinfo(img.dtype).max
        img = (img[..., :3] * alpha + np.iinfo(img.dtype).max * (1 - alpha)).astype(img.dtype)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    img = apply_orientation(img, exif_orientation(data, fmt))
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise ImageError(path, "too_large", f"image is {w}x{h}, over the {max_pixels / 1e6:.0f} MP cap")
    if min(h, w) < min_side:
        raise ImageError(path, "too_small", f"image is {w}x{h}, smaller than {min_side} px on a side")
    return np.ascontiguousarray(img)


def read_bytes(path: str) -> bytes:
    """A local path, or any URI pyarrow reads (s3://, gs://, hdfs://, file://)."""
    if "://" in path:
        return storage.read_bytes(path)
    with open(path, "rb") as f:
        return f.read()


def read_image(path: str, **kwargs) -> np.ndarray:
    """Read and decode a file; a missing or unreadable file is an :class:`ImageError` too."""
    try:
        data = read_bytes(path)
    except OSError as e:
        raise ImageError(path, "unreadable", f"cannot read file ({getattr(e, 'strerror', None) or e})") from e
    return decode_image(data, path, **kwargs)
