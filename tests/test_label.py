"""facray label on Ray Data: one row per input, errors, thresholds, resume, paths, generator."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from facray.attributes import ATTRIBUTES
from facray.data.synth import write_unlabelled_faces
from facray.labelling.output import OUTPUT_COLUMNS, PROB_COLUMNS
from facray.labelling.config import LabelConfig
from facray.runners.label import label_images
from facray.testing import smoke_model
from facray.predictors.format import PredictorError
from facray.predictors.networks import load_predictor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return smoke_model(tmp_path_factory.mktemp("model") / "predictor", crop_size=32)


def _images(folder, n=4, seed=0):
    return write_unlabelled_faces(folder, n=n, seed=seed, sizes=(128, 96))


def _label(images, model, out, **kw):
    """Small pools for 2 CPUs: one predict actor fed by one preprocess actor (split), or one actor."""
    kw = {"num_actors": 1, "preprocess_actors": 0 if kw.get("layout") == "fused" else 1, **kw}
    return label_images(LabelConfig(images=str(images), model=str(model), out=str(out), batch_size=4, **kw))


def _read(out):
    return pd.read_csv(out, keep_default_na=False, na_values=[""])


def test_one_row_per_input_with_errors_probabilities_and_thresholds(ray_session, model, tmp_path):
    folder = tmp_path / "imgs"
    _images(folder)
    good = cv2.imread(str(sorted(folder.glob("*.png"))[0]))
    jpeg = cv2.imencode(".jpg", good)[1].tobytes()
    bad = {"zero.jpg": b"", "trunc.jpg": jpeg[: len(jpeg) // 3], "text.jpg": b"hello",
           "tiny.png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    (folder / "sub").mkdir()
    cv2.imwrite(str(folder / "sub" / "grey.png"), cv2.cvtColor(good, cv2.COLOR_BGR2GRAY))
    out = tmp_path / "new_dir" / "labels.csv"  # a missing folder is created
    summary = _label(folder, model, out)
    rows = _read(out)
    assert list(rows.columns) == OUTPUT_COLUMNS and len(rows) == 9 == summary.inputs
    assert rows.path.tolist() == sorted(rows.path)
    errs = rows.set_index(rows.path.map(os.path.basename))
    for name in bad:
        assert name in errs.loc[name, "error"] and errs.loc[name, [f"{a}_prob" for a in ATTRIBUTES]].isna().all()
        assert errs.loc[name, list(ATTRIBUTES)].isna().all()
    ok = rows[rows.error.isna()]
    assert len(ok) == 5  # 4 generated + the grey one in a subfolder
    probs = ok[[f"{a}_prob" for a in ATTRIBUTES]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    thresholds = np.array([c["threshold"] for c in load_predictor(model).choices])
    assert (ok[list(ATTRIBUTES)].to_numpy() == (probs >= thresholds)).all()
    assert (rows.model == "smoke-untrained").all()
    assert not (tmp_path / "new_dir" / "labels.csv.parts").exists()


def test_links_formats_and_orientation_every_input_is_a_row(ray_session, model, tmp_path):
    """The defects issue's Kind 1 and 2 through the whole command: folders reached by directory
    links are walked (a loop is not), AVIF is labelled, an undecodable HEIC is an error row naming
    its format, a sidecar is counted as skipped, and a face stored turned with EXIF Orientation 6
    (PNG eXIf, lossless WebP) gets exactly the upright PNG's row."""
    from PIL import Image
    faces = _images(tmp_path / "faces", n=3)
    for run in ("gen_run1", "gen_run2"):
        (tmp_path / run).mkdir()
    shutil.copy(faces[0], tmp_path / "gen_run1" / "a.png")
    shutil.copy(faces[1], tmp_path / "gen_run2" / "b.png")
    src = tmp_path / "to_label"
    src.mkdir()
    os.symlink("../gen_run1", src / "run1")
    os.symlink("../gen_run2", src / "run2")
    os.symlink("../to_label", tmp_path / "gen_run1" / "loop")  # back to the source: a loop
    upright = np.asarray(Image.open(faces[2]).convert("RGB"))
    Image.fromarray(upright).save(src / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    turned.save(src / "turned.png", exif=exif.tobytes())
    turned.save(src / "turned.webp", lossless=True, exif=exif.tobytes())
    Image.fromarray(upright).save(src / "face.avif", quality=95)
    (src / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    (src / "meta.json").write_text("{}")
    summary = _label(src, model, tmp_path / "labels.csv")
    rows = _read(tmp_path / "labels.csv").set_index("path")
    assert sorted(os.path.relpath(p, src) for p in rows.index) == [
        "face.avif", "phone.heic", "run1/a.png", "run2/b.png", "turned.png", "turned.webp", "upright.png"]
    assert "not an image 1" in summary.skipped and "directory link loop" in summary.skipped
    assert "HEIF image: this install cannot decode HEIF" in rows.loc[str(src / "phone.heic"), "error"]
    assert pd.isna(rows.loc[str(src / "face.avif"), "error"])
    probs = rows[PROB_COLUMNS]
    for name in ("turned.png", "turned.webp"):
        assert np.array_equal(probs.loc[str(src / name)].to_numpy(), probs.loc[str(src / "upright.png")].to_numpy())


def test_a_mixed_folder_gets_its_crop_method_per_row_and_a_crop_change_relabels(ray_session, model, tmp_path):
    """Aligned (StyleGAN/FFHQ layout) and unaligned faces of one size in one folder, an unaligned
    one first: each row says how it was cropped; a re-run with --crop detect labels every image
    again (the crop is part of what a row is reused by) and detects them all."""
    pytest.importorskip("yuface")
    from conftest import mixed_faces
    images, aligned = mixed_faces(8)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    out = tmp_path / "labels.csv"
    _label(folder, model, out)
    rows = _read(out)
    assert rows.path.tolist() == [str(folder / f"{i:02d}.png") for i in range(8)]
    assert rows.crop_method.tolist() == ["template" if a else "detect" for a in aligned]
    first = _label(folder, model, out, overwrite=True)
    assert first.crop_methods == {"detect": 4, "template": 4} and "crops: detect 4, template 4" in first.format()
    again = _label(folder, model, out, crop="detect")
    assert again.labelled == 8 and (_read(out).crop_method == "detect").all()
    assert _label(folder, model, out, crop="detect").reused == 8


def test_part_writer_keeps_finished_rows_steadily(tmp_path):
    """Rows reach durable parts every few batches or seconds, not at the end of the run."""
    from facray.labelling.output import PartWriter
    folder = tmp_path / "parts"
    with PartWriter(str(folder), flush_rows=10, flush_seconds=3600) as writer:
        for i in range(5):
            writer.add(pd.DataFrame({"path": [f"{i}-{k}" for k in range(4)]}))
            if i == 1:
                assert not list(folder.glob("*.parquet"))  # 8 rows: still pending
        assert len(list(folder.glob("*.parquet"))) == 1  # flushed at 12 rows; 8 pending
    assert len(list(folder.glob("*.parquet"))) == 2  # the rest on close (also on an error)
    assert sorted(pd.concat(pd.read_parquet(p) for p in folder.glob("*.parquet")).path) == \
        sorted(f"{i}-{k}" for i in range(5) for k in range(4))
    assert not list(folder.glob(".*"))  # no temporary files left


def test_resume_labels_only_new_or_changed_images(ray_session, model, tmp_path):
    folder, out = tmp_path / "imgs", tmp_path / "labels.csv"
    _images(folder, n=4)
    assert _label(folder, model, out).labelled == 4
    first = _read(out)
    _images(tmp_path / "more", n=2, seed=50)
    for p in (tmp_path / "more").iterdir():
        shutil.move(str(p), folder / f"new_{p.name}")
    second = _label(folder, model, out)
    assert (second.labelled, second.reused) == (2, 4)
    rows = _read(out)
    assert len(rows) == 6 and rows.path.is_unique
    pd.testing.assert_frame_equal(rows[rows.path.isin(first.path)].reset_index(drop=True), first)
    target = sorted(folder.glob("seed*"))[0]
    os.utime(target, ns=(1, 1))  # changed mtime: labelled again
    assert _label(folder, model, out).labelled == 1
    assert _label(folder, model, out, overwrite=True).labelled == 6


def test_interrupted_run_reuses_finished_parts_and_leaves_no_half_file(ray_session, model, tmp_path):
    folder, out = tmp_path / "imgs", tmp_path / "labels.csv"
    _images(folder, n=4)
    _label(folder, model, out)
    done = _read(out)
    keys = pd.read_parquet(tmp_path / "labels.csv.index.parquet")
    # Simulate a run killed after writing one part: no final file, a part with 2 rows.
    part = tmp_path / "labels.csv.parts" / "run-1"
    part.mkdir(parents=True)
    done.iloc[:2].merge(keys[["path", "size", "mtime_ns", "faces", "crop"]], on="path").to_parquet(part / "a.parquet")
    (part / "b.parquet").write_bytes(b"PAR1 cut off")
    out.unlink()
    summary = _label(folder, model, out)
    assert (summary.reused, summary.labelled) == (2, 2) and len(_read(out)) == 4


def test_paths_with_commas_quotes_and_non_ascii_survive(ray_session, model, tmp_path):
    folder = tmp_path / "imgs"
    paths = _images(folder, n=3)
    names = ['a,comma.png', 'quote"d \'x.png', "évé_日本.png"]
    for p, name in zip(paths, names):
        p.rename(folder / name)
    out = tmp_path / "labels.csv"
    _label(folder, model, out)
    assert sorted(_read(out).path) == sorted(str(folder / n) for n in names)


def test_parquet_output(ray_session, model, tmp_path):
    folder = tmp_path / "imgs"
    _images(folder, n=2)
    _label(folder, model, tmp_path / "labels.parquet", format="parquet")
    assert list(pd.read_parquet(tmp_path / "labels.parquet").columns) == OUTPUT_COLUMNS


def test_bad_model_fails_before_reading_images(tmp_path, model):
    folder = tmp_path / "imgs"
    _images(folder, n=1)
    with pytest.raises(PredictorError, match="no manifest.json"):
        _label(folder, tmp_path / "nowhere", tmp_path / "x.csv")
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "weights.pt").write_bytes((broken / "weights.pt").read_bytes()[:-10])
    with pytest.raises(PredictorError, match="SHA-256"):
        _label(folder, broken, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.csv.parts").exists()


class TinyGenerator(torch.nn.Module):
    """z (B, 8) -> RGB image in [-1, 1] (B, 3, 96, 96): a blob whose colour depends on z."""

    def __init__(self):
        super().__init__()
        self.z_dim = 8
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, z):
        colour = torch.tanh(self.fc(z))[:, :, None, None]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
        blob = ((xx ** 2 + yy ** 2) < 0.5).float()[None, None]
        return colour * blob - (1 - blob) * 0.2


def test_torchscript_generator_as_the_image_source(ray_session, model, tmp_path):
    gen = tmp_path / "gen.pt"
    torch.jit.script(TinyGenerator()).save(str(gen))
    out = tmp_path / "gen_labels.csv"
    summary = label_images(LabelConfig(generator=str(gen), num=5, seed=100, model=str(model), out=str(out),
                                       batch_size=2, num_actors=1, preprocess_actors=1))
    rows = _read(out)
    assert summary.inputs == 5 and len(rows) == 5
    assert [os.path.basename(p) for p in rows.path] == [f"seed{s:08d}.png" for s in range(100, 105)]
    img = cv2.imread(rows.path[0])
    assert img.shape == (96, 96, 3) and (tmp_path / "gen_labels_generated").is_dir()
    # The picture is what the generator drew for that seed: centre colour from z, border grey.
    z = torch.randn(8, generator=torch.Generator().manual_seed(100))
    colour = torch.tanh(torch.jit.load(str(gen)).fc(z[None]))[0].detach()
    expected = ((colour.flip(0) + 1) * 127.5).round().numpy()  # RGB -> BGR as OpenCV reads it
    assert np.abs(img[48, 48].astype(float) - expected).max() <= 1
    assert np.abs(img[2, 2].astype(float) - (1 - 0.2) * 127.5).max() <= 1


def test_non_utf8_file_name_is_one_error_row_not_a_failed_job(ray_session, model, tmp_path):
    folder = tmp_path / "imgs"
    good = _images(folder, n=2)
    bad_name = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    shutil.copy(good[0], bad_name)
    shutil.copy(good[1], folder / "caf\\xe9.png")  # a real name that equals the escape
    out = tmp_path / "labels.csv"
    summary = _label(folder, model, out)
    rows = _read(out)
    assert len(rows) == 4 == summary.inputs and rows.path.is_unique
    assert pd.isna(rows.set_index("path").loc[str(folder / "caf\\xe9.png"), "error"])  # labelled
    rows = rows[rows.path != str(folder / "caf\\xe9.png")].reset_index(drop=True)
    bad = rows[rows.path.str.contains("caf")].iloc[0]
    assert bad.path.startswith(str(folder / "caf\\xe9.png"))  # its escaped name, made distinct
    assert "file name is not valid UTF-8" in bad.error and pd.isna(bad.Male_prob)
    assert rows[~rows.path.str.contains("caf")].error.isna().all()
    assert _label(folder, model, out).reused == 4  # resumes like any other row


def test_two_runs_into_one_output_the_second_refuses_at_once(ray_session, model, tmp_path):
    from facray.data.errors import OutputLockedError
    from facray.labelling.lock import output_lock
    folder, out = tmp_path / "imgs", tmp_path / "labels.csv"
    _images(folder, n=2)
    with output_lock(str(out)):  # what a first run holds for its whole duration
        with pytest.raises(OutputLockedError, match="another facray label run is writing it"):
            _label(folder, model, out)
        assert not out.exists() and not (tmp_path / "labels.csv.parts").exists()
        other = _label(folder, model, tmp_path / "other.csv")  # a different output is fine
        assert other.inputs == 2
    assert _label(folder, model, out).inputs == 2  # released with the first run
    assert not list(tmp_path.glob("*.lock"))  # no run, finished or refused, leaves its lock file
    with pytest.raises(PredictorError):
        _label(folder, tmp_path / "no_model", tmp_path / "refused.csv")
    assert not list(tmp_path.glob("*.lock"))


@pytest.mark.slow  # ~55 s: four labelling runs
def test_a_changed_input_is_never_reused_after_a_failed_write(ray_session, model, tmp_path, monkeypatch):
    """An input (a link) re-pointed at another face; the next run's final write fails (a full
    disk); with the parts gone, the run after that must still relabel the changed input."""
    import errno
    import facray.labelling.write as labelling
    from facray.data.errors import OutputError
    faces = _images(tmp_path / "faces", n=3)
    folder, out = tmp_path / "imgs", tmp_path / "labels.csv"
    folder.mkdir()
    for f in faces[:2]:
        os.symlink(f, folder / f.name)
    link = folder / faces[0].name
    _label(folder, model, out)
    link.unlink()
    os.symlink(faces[2], link)  # the same path now shows another face
    real_publish = labelling._publish

    def full_disk(local, location):
        if location == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_publish(local, location)
    monkeypatch.setattr(labelling, "_publish", full_disk)
    with pytest.raises(OutputError, match="No space left on device.*kept in"):
        _label(folder, model, out)
    monkeypatch.undo()
    shutil.rmtree(str(out) + ".parts")
    _label(folder, model, out)
    reference = tmp_path / "reference.csv"
    _label(faces[2], model, reference)
    got = _read(out).set_index("path").loc[str(link), PROB_COLUMNS].to_numpy(float)
    assert np.allclose(got, _read(reference)[PROB_COLUMNS].to_numpy(float)[0], atol=1e-6)


def test_pickle_payload_in_weights_is_refused_without_running_it(tmp_path, model):
    """A weights file that would run code when unpickled: refused by weights_only=True, even with
    a manifest whose SHA-256 matches it (someone with write access rewrote both)."""
    import json
    import pickle
    from facray.predictors.format import sha256
    planted = tmp_path / "planted"
    shutil.copytree(model, planted)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (planted / "weights.pt").write_bytes(pickle.dumps({"x": Payload()}))
    manifest = json.loads((planted / "manifest.json").read_text())
    manifest["weights_sha256"] = sha256(planted / "weights.pt")
    (planted / "manifest.json").write_text(json.dumps(manifest))
    folder = tmp_path / "imgs"
    _images(folder, n=1)
    with pytest.raises(PredictorError, match="not a tensors-only weights file, refused"):
        _label(folder, planted, tmp_path / "x.csv")
    assert not marker.exists()  # the payload never ran
    assert "weights_only=False" not in str(pytest.raises(PredictorError, load_predictor, planted).value)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("weights_sha256") and None, "missing weights_sha256"),
    (lambda m: "{not json", "not a readable JSON manifest"),
])
def test_broken_manifest_is_a_clear_error_naming_the_file(tmp_path, model, edit, message):
    import json
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    result = edit(manifest)
    (broken / "manifest.json").write_text(result if isinstance(result, str) else json.dumps(manifest))
    with pytest.raises(PredictorError, match=message) as e:
        load_predictor(broken)
    assert str(broken / "manifest.json") in str(e.value)


@pytest.mark.parametrize("split", [dict(gpus=1.0), dict()], ids=["gpu", "cpu"])
def test_split_layout_labels_as_the_fused_one(ray_session, model, tmp_path, split):
    """Split (the default): CPU actors decode, crop and sketch without torch, predict actors run
    the model; fused: one actor does all. Same rows. The test session declares one GPU that does
    not exist, so the GPU case runs the GPU-mode pipeline whole with its predict actor on the CPU."""
    folder = tmp_path / "imgs"
    _images(folder, n=9, seed=5)
    (folder / "broken.png").write_bytes(b"not a png")
    _label(folder, model, tmp_path / "fused.csv", layout="fused")
    summary = _label(folder, model, tmp_path / "split.csv", **split)
    fused, got = _read(tmp_path / "fused.csv"), _read(tmp_path / "split.csv")
    assert len(got) == 10 and got.error.str.contains("broken.png").sum() == 1
    pd.testing.assert_frame_equal(got.drop(columns=PROB_COLUMNS), fused.drop(columns=PROB_COLUMNS))
    np.testing.assert_allclose(got[PROB_COLUMNS].to_numpy(float), fused[PROB_COLUMNS].to_numpy(float), atol=1e-5)
    assert list(summary.stages) == ["decode", "detect", "crop", "sketch", "predict"]


def test_ray_pipeline_gives_the_in_process_probabilities_and_says_where_time_went(ray_session, model, tmp_path):
    from facray.labelling.batch import BatchLabeller, preprocessing_for
    folder = tmp_path / "imgs"
    paths = _images(folder, n=5, seed=3)
    summary = _label(folder, model, tmp_path / "labels.csv")
    rows = _read(tmp_path / "labels.csv").set_index("path")
    predictor = load_predictor(model)
    local = BatchLabeller(predictor, preprocessing_for(predictor.manifest))({"path": np.array([str(p) for p in paths], dtype=object)})
    for i, p in enumerate(paths):
        for a in ATTRIBUTES:
            assert rows.loc[str(p), f"{a}_prob"] == pytest.approx(local[f"{a}_prob"][i], abs=1e-5)
    assert list(summary.stages) == ["decode", "detect", "crop", "sketch", "predict"]
    assert set(summary.phases) == {"start-up", "pipeline", "write"} and "in the actors: decode" in summary.format()
    assert not [c for c in rows.columns if c.startswith("seconds_")]  # timings stay out of the output
