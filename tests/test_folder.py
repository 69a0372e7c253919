"""Which files are inputs: every image format by name or by content, directory links followed with
loops guarded, what is skipped counted by reason, odd names kept distinct."""
from __future__ import annotations

import os

from facray.data.folder import list_images, printable_name, printable_names

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 40
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def test_every_image_format_is_listed_by_name(tmp_path):
    names = ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.bmp", "f.gif", "g.tif", "h.tiff", "i.avif", "j.heic"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")  # by name: readability is the decoder's to judge (error rows)
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07onnx")
    listing = list_images(tmp_path)
    assert [os.path.basename(p) for p in listing.paths] == names
    assert listing.skipped == {"not an image": 2}
    assert "not an image 2" in listing.format_skipped()


def test_content_decides_where_the_suffix_does_not(tmp_path):
    (tmp_path / "face.dat").write_bytes(JPEG)          # an image under an unknown suffix
    (tmp_path / "export").write_bytes(PNG)             # no suffix at all
    (tmp_path / "meta.json").write_text("{}")          # a sidecar: skipped, counted
    (tmp_path / "LICENSE.txt").write_text("MIT")
    listing = list_images(tmp_path)
    assert [os.path.basename(p) for p in listing.paths] == ["export", "face.dat"]
    assert listing.skipped == {"not an image": 2}


def test_directory_links_are_followed_and_loops_guarded(tmp_path):
    for run in ("gen_run1", "gen_run2"):
        (tmp_path / run).mkdir()
        for i in range(2):
            (tmp_path / run / f"{i}.png").write_bytes(PNG)
    src = tmp_path / "to_label"
    src.mkdir()
    (src / "extra.png").write_bytes(PNG)
    os.symlink("../gen_run1", src / "run1")
    os.symlink("../gen_run2", src / "run2")
    os.symlink(".", tmp_path / "gen_run1" / "self")  # a link to its own folder: a loop
    os.symlink("../to_label", tmp_path / "gen_run2" / "back")  # back to an ancestor: a loop
    listing = list_images(src)
    rel = [os.path.relpath(p, src) for p in listing.paths]
    assert rel == ["extra.png", "run1/0.png", "run1/1.png", "run2/0.png", "run2/1.png"]
    assert listing.skipped == {"directory link loop": 2}
    globbed = list_images(str(src) + "/**/*.png")
    assert [os.path.relpath(p, src) for p in globbed.paths] == rel


def test_fifos_are_not_opened_and_dangling_links_stay_inputs(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "gone.dat", tmp_path / "dangling.dat")
    listing = list_images(tmp_path)
    assert [os.path.basename(p) for p in listing.paths] == ["dangling.png"]
    assert listing.skipped == {"not a regular file": 1, "broken link": 1}


def test_list_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.png\r\n# comment\r\n")
    assert list_images(tmp_path / "list.txt").paths == [str(tmp_path / "a.png")]


def test_non_utf8_names_are_escaped_and_never_collide():
    raw = os.fsdecode(b"/x/caf\xe9.jpg")
    literal = "/x/caf\\xe9.jpg"  # a real file whose name holds a backslash
    assert printable_name(raw) == literal and printable_name("/x/café.png") == "/x/café.png"
    names = printable_names([raw, literal, "/x/good.jpg"])
    assert len(set(names)) == 3 and names[1] == literal and names[2] == "/x/good.jpg"
    assert names[0].startswith(literal)
    # Stable: the same inputs give the same names (resuming keys rows by them).
    assert printable_names([raw, literal, "/x/good.jpg"]) == names


def test_a_label_list_entry_cannot_climb_out_of_its_folder(tmp_path):
    import pytest

    from facray.data.errors import DatasetError
    (tmp_path / "lists").mkdir()
    (tmp_path / "secret.png").write_bytes(PNG)
    (tmp_path / "lists" / "ok.png").write_bytes(PNG)
    (tmp_path / "lists" / "l.txt").write_text("ok.png\n..\\secret.png\n")
    with pytest.raises(DatasetError, match=r"l.txt:2: '..\\\\secret.png' leaves the list's folder"):
        list_images(tmp_path / "lists" / "l.txt")
    (tmp_path / "lists" / "abs.txt").write_text(f"ok.png\n{tmp_path / 'secret.png'}\n")  # absolute: named by the user
    assert len(list_images(tmp_path / "lists" / "abs.txt").paths) == 2
