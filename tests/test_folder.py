"""Listing unlabelled images: every format the decoder reads, lists with a BOM, odd names."""
from __future__ import annotations

import os

from facray.data.folder import list_images, printable_name


def test_every_decodable_format_is_listed(tmp_path):
    names = ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.bmp", "f.gif", "g.tif", "h.tiff"]
    for n in names + ["notes.txt", "model.onnx"]:
        (tmp_path / n).write_bytes(b"x")
    assert [os.path.basename(p) for p in list_images(tmp_path)] == names


def test_list_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.png\r\n# comment\r\n")
    assert list_images(tmp_path / "list.txt") == [str(tmp_path / "a.png")]


def test_non_utf8_names_are_escaped_for_output():
    raw = os.fsdecode(b"/x/caf\xe9.png")
    assert printable_name(raw) == "/x/caf\\xe9.png" and printable_name("/x/café.png") == "/x/café.png"
