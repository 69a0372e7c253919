"""The labelling fast path (stacked, channels-last forward; timed stages) gives what the
straightforward code gives. No Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facray import columns
from facray.attributes import ATTRIBUTES
from facray.data.synth import write_unlabelled_faces
from facray.data.ops import Sketcher
from facray.labelling.batch import STAGE_PREFIX, BatchLabeller, label_batch, preprocessing_for, stage_seconds
from facray.labelling.config import LabelConfig
from facray.labelling.pools import pool_sizes
from facray.testing import smoke_model
from facray.models.abm import ABMCNN
from facray.models.inputs import to_input
from facray.models.registry import build_model, list_models, model_spec
import facray.predictors.networks
from facray.predictors.format import MULTITASK_FORMAT, Manifest
from facray.predictors.networks import load_predictor, read_predictor, write_multitask_predictor


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """A real preprocessed batch (decode, detect + crop, sketch) of generated faces, and its model."""
    tmp = tmp_path_factory.mktemp("fast")
    model = smoke_model(tmp / "predictor", crop_size=40)
    paths = write_unlabelled_faces(tmp / "faces", n=6, seed=1, sizes=(160, 96))
    predictor = load_predictor(model)
    batch = preprocessing_for(predictor.manifest)({"path": np.array([str(p) for p in paths], dtype=object)})
    return model, predictor, batch


@pytest.mark.parametrize("kind", ["loop", "grouped"])
def test_stacked_forward_matches_each_model_run_on_its_own(preprocessed, kind, monkeypatch):
    """Both stack kinds (CPUs get the loop, GPUs the grouped stack, whose 5-D weights once made
    the predictor's channels-last conversion fail before any GPU run) give each model's output."""
    model, predictor, batch = preprocessed
    if kind != "loop":
        monkeypatch.setattr(facray.predictors.networks, "default_stack_kind", lambda device: kind)
        predictor = load_predictor(model)
    manifest, weights = read_predictor(model)
    expected = np.full((len(batch["path"]), len(ATTRIBUTES)), np.nan, np.float32)
    with torch.no_grad():
        for c in manifest.attributes:
            key = f"{c['attribute']}__{c['modality']}"
            net = ABMCNN(weights[key]["features.0.weight"].shape[1], manifest.image_size)
            net.load_state_dict(weights[key])
            pixels = batch["image"] if c["modality"] == "real" else batch["sketch"]
            logits = net.eval()(to_input(pixels, manifest.image_size, torch.device("cpu")))  # default layout
            expected[:, ATTRIBUTES.index(c["attribute"])] = torch.softmax(logits, -1)[:, 1].numpy()
    got = predictor.predict_proba(batch["image"], batch["sketch"])
    assert {"real", "sketch"} == set(predictor.stacks)  # both modalities exercised
    np.testing.assert_allclose(got, expected, atol=1e-5)
    monkeypatch.setattr(facray.predictors.networks, "PREDICT_CHUNK", 4)  # 6 rows: a chunk of 4, then of 2
    np.testing.assert_allclose(predictor.predict_proba(batch["image"], batch["sketch"]), got, atol=1e-6)
    assert not predictor.weights  # the stacks hold the only copy of the weights


def with_trained_norms(net: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with the statistics and affine terms of a trained network, not the identity a
    fresh one starts as, so that folding them into the convolutions is really tested."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def batch_norms(net: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_multitask_predictor_matches_the_plain_module(preprocessed, tmp_path):
    _, _, batch = preprocessed
    torch.manual_seed(0)
    net = with_trained_norms(build_model("abm-trunk-tiny", 40))
    choices = [{"attribute": a, "threshold": 0.5, "val_accuracy": None, "test_accuracy": None} for a in ATTRIBUTES]
    folder = write_multitask_predictor(tmp_path / "mt", "abm-trunk-tiny", {}, net.state_dict(),
                                       {"size": 40, "margin": 0.35}, 40, choices)
    with torch.no_grad():
        expected = torch.sigmoid(net(to_input(batch["image"], 40, torch.device("cpu")))["attributes"]).numpy()
    predictor = load_predictor(folder)
    assert batch_norms(net) > 0 and batch_norms(predictor.model) == 0  # folded into the convolutions
    np.testing.assert_allclose(predictor.predict_proba(batch["image"]), expected, atol=1e-5)
    unfolded = load_predictor(folder, fold_norms=False)  # what class activation maps hook into
    assert batch_norms(unfolded.model) == batch_norms(net)
    np.testing.assert_allclose(unfolded.predict_proba(batch["image"]), expected, atol=1e-5)


def test_batch_labeller_times_every_stage_and_labels_like_label_batch(preprocessed):
    model, predictor, batch = preprocessed
    labeller = BatchLabeller(predictor, preprocessing_for(predictor.manifest))
    rows = labeller({"path": batch["path"]})
    import pandas as pd
    table = pd.DataFrame(rows)
    stages = stage_seconds(table)
    assert list(stages) == ["decode", "detect", "crop", "sketch", "predict"]
    assert all(v > 0 for v in stages.values())
    assert labeller.chain.seconds == {}  # taken with each batch, never counted twice
    plain = label_batch(batch, predictor)
    for a in ATTRIBUTES:
        np.testing.assert_allclose(rows[f"{a}_prob"], plain[f"{a}_prob"], atol=1e-6)
    # GPU mode: preprocessing in one actor, prediction in another; the timings ride along.
    pre = labeller.preprocess({"path": batch["path"]})
    both = stage_seconds(pd.DataFrame(BatchLabeller(predictor, None)(pre)))
    assert set(both) == set(stages) and not any(k.startswith(STAGE_PREFIX) for k in ATTRIBUTES)


@pytest.mark.parametrize("cfg, resources, expected", [
    (LabelConfig(), {"CPU": 2, "memory": 16e9}, (1, 2, 2)),                        # split: one predict actor
    (LabelConfig(), {"CPU": 16, "memory": 64e9}, (4, 16, 4)),                      # one per 4 CPUs
    (LabelConfig(), {"CPU": 16, "memory": 4e9}, (3, 2, 4)),                        # capped by memory
    (LabelConfig(layout="fused"), {"CPU": 2, "memory": 16e9}, (2, 0, 1)),          # one fused actor per CPU
    (LabelConfig(layout="fused"), {"CPU": 16, "memory": 6e9}, (6, 0, 1)),          # capped by memory
    (LabelConfig(layout="fused", num_actors=3), {"CPU": 2, "memory": 16e9}, (3, 0, 1)),  # as given
    (LabelConfig(gpus=1), {"CPU": 16, "GPU": 2, "memory": 64e9}, (2, 14, 1)),      # every spare CPU decodes
    (LabelConfig(gpus=0.5, preprocess_actors=4), {"CPU": 8, "GPU": 1, "memory": 64e9}, (2, 4, 1)),
    (LabelConfig(gpus=1), {"CPU": 16, "GPU": 1, "memory": 4e9}, (1, 7, 1)),       # light ones, still capped
])
def test_actor_pools_are_sized_to_the_machine(cfg, resources, expected):
    assert pool_sizes(cfg, resources) == expected


def test_fused_layout_on_gpus_is_refused_before_anything_runs(tmp_path):
    from facray.runners.label import label_images
    with pytest.raises(ValueError, match="--layout fused runs on CPU"):
        label_images(LabelConfig(images=str(tmp_path), model=str(tmp_path), out=str(tmp_path / "l.csv"),
                                 layout="fused", gpus=1))
    assert not (tmp_path / "l.csv.lock").exists()


def test_labelling_crops_as_the_model_was_trained():
    """A model trained on nose-centred crops gets nose-centred crops of the same size and margin."""
    def manifest(crop):
        return Manifest.from_json({"format": MULTITASK_FORMAT, "crop": crop, "attributes": [], "image_size": 48,
                                   "sketch_channels": 0, "weights_sha256": "", "tensor_shapes": {}})
    cropper = preprocessing_for(manifest({"size": 48, "margin": 0.2, "centre": "nose"})).ops[0].chain.ops[1]
    assert (cropper.size, cropper.margin, cropper.centre) == (48, 0.2, "nose")
    older = manifest({"size": 48, "margin": 0.35})  # manifests before centres
    assert preprocessing_for(older).ops[0].chain.ops[1].centre == "face"


def test_preprocess_actor_needs_neither_torch_nor_weights(preprocessed, tmp_path):
    """GPU mode's CPU actors build their chain from the manifest: sketches exactly when the
    predictor has sketch models, and no torch in the process (it costs about 0.5 GB each)."""
    import dataclasses
    import subprocess
    import sys
    model, predictor, batch = preprocessed
    assert predictor.needs_sketch and isinstance(preprocessing_for(predictor.manifest).ops[-1], Sketcher)
    photo_only = dataclasses.replace(predictor.manifest, attributes=[{**c, "modality": "real"} for c in predictor.manifest.attributes])
    assert not any(isinstance(op, Sketcher) for op in preprocessing_for(photo_only).ops)
    predictor.manifest.write(tmp_path)
    script = (
        "import json, sys, numpy as np\n"
        "from facray.labelling.config import LabelConfig\n"
        "from facray.runners.label import PreprocessForLabelActor\n"
        "from facray.predictors.format import Manifest\n"
        f"manifest = Manifest.read({str(tmp_path)!r})\n"
        "actor = PreprocessForLabelActor(manifest, [None], LabelConfig())\n"
        f"out = actor({{'path': np.array({[str(p) for p in batch['path']]!r}, dtype=object)}})\n"
        "np.save(sys.argv[1], out['image'])\n"
        "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "crops.npy")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    np.testing.assert_array_equal(np.load(tmp_path / "crops.npy"), batch["image"])


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("-tiny")])
def test_every_family_labels_through_the_predictor_interface(preprocessed, tmp_path, name):
    # What `facray label --model` runs for each family: the attributes a model was not trained on
    # come out NaN (empty in the CSV) and undecided, never invented.
    _, _, batch = preprocessed
    torch.manual_seed(0)
    spec = model_spec(name)
    kwargs = {"num_identities": 3} if spec.identity_output else {}
    net = with_trained_norms(build_model(name, spec.input_size, **kwargs))
    trained = ["Male", "Smiling"]
    choices = [{"attribute": a, "threshold": 0.5, "val_accuracy": None, "test_accuracy": None} for a in trained]
    folder = write_multitask_predictor(tmp_path / name, name, kwargs, net.state_dict(), {"size": 40, "margin": 0.35},
                                       spec.input_size, choices)
    predictor = load_predictor(folder)
    assert batch_norms(predictor.model) == 0  # every family traces, its batch norms folded
    probs = predictor.predict_proba(batch["image"])
    with torch.no_grad():
        expected = torch.sigmoid(net(to_input(batch["image"], spec.input_size, torch.device("cpu")))["attributes"])
    columns = [ATTRIBUTES.index(a) for a in trained]
    np.testing.assert_allclose(probs[:, columns], expected.numpy()[:, columns], atol=1e-5)
    assert np.isnan(np.delete(probs, columns, axis=1)).all()
    decisions = predictor.decide(probs)
    assert set(np.unique(decisions[:, columns])) <= {0, 1} and (np.delete(decisions, columns, axis=1) == -1).all()


def test_compiled_predictor_gives_the_same_probabilities(preprocessed):
    """``facray label --compile``: torch.compile changes the speed, not the answers."""
    model, predictor, batch = preprocessed
    compiled = load_predictor(model, compiled=True)
    np.testing.assert_allclose(compiled.predict_proba(batch["image"], batch["sketch"]),
                               predictor.predict_proba(batch["image"], batch["sketch"]), atol=1e-5)


@pytest.mark.parametrize("form", ["predictor folder", "run folder", "models:/ URI"])
def test_the_label_driver_never_imports_torch(preprocessed, tmp_path, form, monkeypatch):
    """``facray label``'s driver parses its arguments, finds and checks the predictor (manifest,
    SHA-256) and decides error rows without torch: the tensors are checked in a worker. Torch costs
    a process about 0.5 GB. Both local ``--model`` forms (a run folder used to pull torch in
    through the run folder's predictor check)."""
    import shutil
    import subprocess
    import sys
    model, predictor, _ = preprocessed
    if form == "run folder":  # a `facray train` run: its predictor in model/
        shutil.copytree(model, tmp_path / "run" / "model")
        model = tmp_path / "run"
    elif form == "models:/ URI":  # registered as `facray train` registers it
        import mlflow
        from facray.tracking import register_predictor
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("facray-test")  # (not an experiment id an earlier test left active)
        with mlflow.start_run():
            model = register_predictor(model, "facray-test")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    script = (
        "import sys, numpy as np\n"
        "from facray.cli import build_parser, selected_command\n"
        "build_parser(selected_command(['label', '--images', 'x']))\n"
        "import facray.runners.label  # the driver module itself\n"
        "from facray.labelling.batch import label_batch\n"
        "from facray.predictors.format import read_weights_file\n"
        "from facray.predictors.locate import locate_predictor\n"
        "from facray.predictors.thresholds import PredictorInfo\n"
        f"path, manifest = locate_predictor({str(model)!r})\n"
        "read_weights_file(path, manifest)\n"
        "info = PredictorInfo(manifest)\n"
        "rows = label_batch({'path': np.array(['a.png'], dtype=object), 'error': np.array(['a.png: bad'], dtype=object)}, info)\n"
        "print(info.name, info.needs_sketch, rows['error'][0], 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [predictor.name, str(predictor.needs_sketch), "a.png:", "bad", "False"]


def test_weights_with_non_finite_values_are_refused_at_load(tmp_path):
    """A predictor written by a run that diverged: refused before any image is labelled."""
    import io

    from facray.predictors.format import read_weights_file

    from facray.predictors.locate import locate_predictor
    from facray.predictors.format import PredictorError
    from facray.predictors.networks import load_weights
    folder = smoke_model(tmp_path / "p", crop_size=32)
    path, manifest = locate_predictor(folder)
    weights = torch.load(folder / "weights.pt", weights_only=True)
    first = next(iter(weights))
    tensor_name = next(n for n, t in weights[first].items() if t.is_floating_point())
    weights[first][tensor_name].view(-1)[0] = float("nan")
    buf = io.BytesIO()
    torch.save(weights, buf)
    with pytest.raises(PredictorError, match=r"weights.pt: 1 tensor\(s\) hold non-finite values .*diverged"):
        load_weights(buf.getvalue(), manifest, path)
    assert load_weights(read_weights_file(path, manifest), manifest, path)  # the intact file loads


def test_a_row_without_error_never_has_empty_probabilities():
    class Broken:
        name = "broken"
        covered = np.ones(40, bool)

        def predict_proba(self, images, sketches):
            probs = np.full((len(images), 40), 0.7, np.float32)
            probs[0, 3] = np.nan
            return probs

        def decide(self, probs):
            return np.where(np.isnan(probs), 0, probs >= 0.5).astype(np.int8)

    batch = {columns.PATH: np.array(["a.png", "b.png"], dtype=object), columns.ERROR: np.array(["", ""], dtype=object),
             columns.IMAGE: np.zeros((2, 8, 8, 3), np.uint8)}
    out = label_batch(batch, Broken())
    assert out["error"][0] == "a.png: the model gave non-finite probabilities (broken weights)"
    assert np.isnan(out["Smiling_prob"][0]) and np.isnan(out["Smiling"][0])
    assert out["error"][1] == "" and out["Smiling_prob"][1] == pytest.approx(0.7)
