"""``facray data check``: counts and exit codes, through the real CLI entry point."""
from __future__ import annotations

from facray.cli import main


def test_check_prints_counts_and_balance(synth_root, capsys):
    assert main(["data", "check", str(synth_root)]) == 0
    out = capsys.readouterr().out
    assert "images (labelled): 120" in out
    assert "unreadable images: 0" in out
    assert "Eyeglasses" in out and "identities: 15" in out


def test_broken_layout_exits_non_zero_naming_the_line(synth_copy, capsys):
    p = synth_copy / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace("-1", "2", 1)
    p.write_text("\n".join(lines))
    assert main(["data", "check", str(synth_copy)]) == 2
    assert "list_attr_celeba.txt:4: 000002.jpg:" in capsys.readouterr().err


def test_unreadable_image_is_reported_and_fails(synth_copy, capsys):
    (synth_copy / "img_align_celeba" / "000003.jpg").write_bytes(b"")
    (synth_copy / "img_align_celeba" / "000004.jpg").write_bytes(b"this is text, not a jpeg")
    assert main(["data", "check", str(synth_copy)]) == 1
    out = capsys.readouterr().out
    assert "unreadable images: 2" in out
    assert "000003.jpg: empty file" in out and "000004.jpg: not an image" in out


def test_skip_missing_reports_how_many(synth_copy, capsys):
    (synth_copy / "img_align_celeba" / "000005.jpg").unlink()
    assert main(["data", "check", str(synth_copy)]) == 2
    assert main(["data", "check", "--skip-missing", str(synth_copy)]) == 0
    assert "skipped (missing_image): 1" in capsys.readouterr().out


def test_synth_command_writes_a_readable_layout(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "10"]) == 0
    assert main(["data", "check", str(tmp_path / "s")]) == 0
    assert "images (labelled): 10" in capsys.readouterr().out


def test_non_utf8_image_name_is_named_escaped_not_a_crash(synth_copy, capsys):
    import os
    import shutil
    folder = os.fsencode(synth_copy / "img_align_celeba")
    shutil.copy(os.path.join(folder, b"000001.jpg"), os.path.join(folder, b"caf\xe9.jpg"))
    assert main(["data", "check", str(synth_copy)]) == 2
    assert "caf\\xe9.jpg: image has no row in list_attr_celeba.txt" in capsys.readouterr().err
    assert main(["data", "check", "--skip-missing", str(synth_copy)]) == 0


def test_one_sided_and_rare_attributes_are_warned_per_split(synth_women_only, capsys):
    """A women-only subset (Male -1 in every row): data check names Male as one-sided in train and
    lists every attribute with fewer than 10 examples of a class in each split."""
    assert main(["data", "check", str(synth_women_only)]) == 0
    out = capsys.readouterr().out
    assert "warning: Male: all" in out and "labelled training rows are negative (-1): the data is one-sided" in out
    for split in ("train", "val", "test"):
        line = next(x for x in out.splitlines() if x.strip().startswith(f"warning: {split}: "))
        assert "fewer than 10 positives or negatives" in line and "Male 0+/" in line


def test_a_list_with_a_subset_of_the_attributes_is_a_dataset(synth_partial, capsys):
    """A CelebA-style list naming 3 attributes (facray's labels of a partial model, a dataset
    labelled for a few): read, with a note that the other 37 are unknown; an unknown name is
    refused naming it."""
    p = synth_partial / "list_attr_celeba.txt"
    assert main(["data", "check", str(synth_partial)]) == 0
    out = capsys.readouterr().out
    assert "labels 3 of the 40 attributes; the other 37 are unknown" in out
    balance = out[out.index("label balance"):]
    assert "Male" in balance and "Bald" not in balance
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0], "Eyeglasses Male Smilling", *lines[2:]]) + "\n")
    assert main(["data", "check", str(synth_partial)]) == 2
    assert "list_attr_celeba.txt:2: attribute header: unknown attribute(s) ['Smilling']" in capsys.readouterr().err
