"""The predictor networks (torch): write a predictor folder, load and verify its weights, and
run it (:class:`CombinedPredictor`, :class:`MultiTaskPredictor`,
:class:`~facray.predictors.ensemble.EnsemblePredictor`; one interface: ``predict_proba``,
``decide``, ``attributes``, ``crop``, ``needs_sketch``, ``name``). The folder format is
:mod:`facray.predictors.format`'s; no training code is imported here.

:func:`load_predictor` takes a predictor folder, a run folder or an MLflow model URI
(``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``) whose artifacts hold one.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facray.attributes import ATTRIBUTES, MODALITIES
from facray.models.abm import build_stack, default_stack_kind
from facray.models.inputs import to_channels_last, to_input
from facray.models.registry import build_model, list_models
from facray.predictors.ensemble import EnsemblePredictor, reconcile_inputs
from facray.predictors.format import (ENSEMBLE_FORMAT, FORMAT, MANIFEST, MULTITASK_FORMAT, VERSION, WEIGHTS, Manifest,
                                      PredictorError, read_weights_file, sha256)
from facray.predictors.locate import locate_predictor
from facray.predictors.thresholds import Thresholded, thresholds_of

log = logging.getLogger(__name__)

PREDICT_CHUNK = 256  # rows per forward call of a combined predictor (see predict_proba)


def write_predictor(dest: str | Path, choices: list[dict], weights: dict[str, dict[str, torch.Tensor]],
                    crop: dict, image_size: int, sketch_channels: int, extra: dict | None = None) -> Path:
    """Write an ABM combined predictor. ``choices``: one dict per attribute with ``attribute``,
    ``modality``, ``threshold``, ``val_accuracy``, ``test_accuracy``; ``weights``: key -> ABMCNN
    state dict."""
    shapes = {k: {n: list(t.shape) for n, t in sd.items()} for k, sd in weights.items()}
    return write_predictor_folder(dest, weights, shapes, {"format": FORMAT, "crop": crop, "image_size": image_size,
                                          "sketch_channels": sketch_channels, "attributes": choices, **(extra or {})})


def write_multitask_predictor(dest: str | Path, model_name: str, model_kwargs: dict,
                              state_dict: dict[str, torch.Tensor], crop: dict, image_size: int,
                              choices: list[dict], extra: dict | None = None) -> Path:
    """Write a multi-task predictor. ``choices``: one dict per predicted attribute with
    ``attribute``, ``threshold``, ``val_accuracy``, ``test_accuracy``."""
    shapes = {n: list(t.shape) for n, t in state_dict.items()}
    return write_predictor_folder(dest, state_dict, shapes, {"format": MULTITASK_FORMAT, "model": model_name,
                                             "model_kwargs": model_kwargs, "crop": crop, "image_size": image_size,
                                             "sketch_channels": 0, "attributes": choices, **(extra or {})})


def write_ensemble(dest: str | Path, members: list[tuple[Manifest, dict]], weights: list[float], flip: bool,
                   choices: list[dict], calibration: dict | None, extra: dict | None = None) -> Path:
    """Write an ensemble predictor. ``members``: each member's (manifest, verified weights);
    ``weights``: their weights in the mean (any positive numbers); ``choices``: one dict per
    covered attribute (``attribute``, ``threshold``, ``val_accuracy``); ``calibration``: the
    ensemble's own (:func:`facray.predictors.calibration.calibration_record`)."""
    manifests = [m for m, _ in members]
    crop, image_size, sketch_channels = reconcile_inputs(manifests, [f"member {i}" for i in range(len(members))])
    tensors = {str(i): w for i, (_, w) in enumerate(members)}
    return write_predictor_folder(dest, tensors, {str(i): m.tensor_shapes for i, m in enumerate(manifests)}, {
        "format": ENSEMBLE_FORMAT, "crop": crop, "image_size": image_size, "sketch_channels": sketch_channels,
        "attributes": choices, "calibration": calibration, "flip": bool(flip),
        "members": [{"weight": float(w), "manifest": m.to_json()} for w, m in zip(weights, manifests)],
        **(extra or {})})


def write_predictor_folder(dest: str | Path, weights: dict, tensor_shapes: dict, fields: dict) -> Path:
    """``weights.pt``, then the manifest naming its SHA-256 and shapes (written last: a folder
    with a manifest is complete)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(weights, dest / WEIGHTS)
    Manifest.from_json({"version": VERSION, **fields, "weights_sha256": sha256(dest / WEIGHTS),
                        "tensor_shapes": tensor_shapes}, dest).write(dest)
    return dest


@dataclass
class CombinedPredictor(Thresholded):
    """Maps a batch of cropped images (+ sketches) to 40 probabilities (NaN for attributes the
    predictor does not cover)."""
    manifest: Manifest
    weights: dict[str, dict[str, torch.Tensor]]  # key -> ABMCNN state dict (read once, into the stacks)
    device: torch.device
    compiled: bool = False  # torch.compile the stacks (see build_predictor)

    def __post_init__(self):
        self.choices = self.manifest.attributes
        self.image_size = self.manifest.image_size
        self.crop = self.manifest.crop
        self.sketch_channels = self.manifest.sketch_channels
        self.columns, self.thresholds = thresholds_of(self.choices)
        # One stack per modality: all of a modality's models run in one call.
        kind = default_stack_kind(self.device)
        # Layout by kind, as measured: the CPU loop stack runs 2.1x faster channels-last (oneDNN);
        # the GPU grouped stack runs faster contiguous (one H100, 40 models, bf16: 2,291 vs 1,935
        # img/s at 180 px, 17.9k vs 17.6k at 64 px, batch 1,024; bench/label_gpu.py).
        self.channels_last = kind == "loop"
        self.stacks, self.stack_columns = {}, {}
        for m in MODALITIES:
            picked = [(i, c) for i, c in zip(self.columns, self.choices) if c["modality"] == m]
            if picked:
                keys = [f"{c['attribute']}__{m}" for _, c in picked]
                in_channels = self.weights[keys[0]]["features.0.weight"].shape[1]
                stack = build_stack(kind, [0] * len(keys), in_channels, self.image_size, 0.0)
                for k, key in enumerate(keys):
                    stack.load(k, self.weights[key])
                stack = _for_inference(stack, self.device, self.channels_last)
                self.stacks[m] = torch.compile(stack) if self.compiled else stack
                self.stack_columns[m] = np.array([i for i, _ in picked])
        self.weights = {}  # the stacks hold the only copy: one set of weights per labelling actor

    @property
    def needs_sketch(self) -> bool:
        return "sketch" in self.stacks

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray, sketches: np.ndarray | None = None) -> np.ndarray:
        """(B, S, S, 3) uint8 crops [+ (B, S, S[, 3]) sketches] -> (B, 40) float32 P(attribute), calibrated
        where the manifest says how (:meth:`Thresholded.calibrate`)."""
        n = len(images)
        out = np.full((n, len(ATTRIBUTES)), np.nan, np.float32)
        if n == 0:
            return out
        cuda = self.device.type == "cuda"
        for m, stack in self.stacks.items():
            pixels = images if m == "real" else sketches
            if pixels is None:
                raise ValueError("this predictor uses sketches for some attributes: pass sketches")
            # In chunks: a stack's activations grow as rows x models x 16 x side^2 (40 models at
            # 180 px and 1,024 rows asked one H100 for 40 GiB at once); 256 rows run as fast.
            for start in range(0, n, PREDICT_CHUNK):
                x = to_input(pixels[start:start + PREDICT_CHUNK], self.image_size, self.device,
                             channels_last=self.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    logits = stack(x).float()  # (B, K, 2)
                out[start:start + PREDICT_CHUNK, self.stack_columns[m]] = \
                    torch.softmax(logits, -1)[..., 1].cpu().numpy()
        return self.calibrate(out)


def _for_inference(module: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """Eval mode, on ``device``, channels-last unless told otherwise: oneDNN's fast convolution
    layout on CPU (measured 2.1x for 40 ABM-CNNs at 64 px and 1.5x for a ResNet-18 at 128 px on
    this project's 2-core machine, same results to 1e-7), and what tensor cores want on GPU."""
    module = module.to(device).eval()
    return to_channels_last(module) if channels_last else module


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Every convolution followed by an eval-mode batch norm becomes one convolution (the norm is an
    affine map of the convolution's output, folded into its weights and bias): one pass over each
    activation map fewer. On this project's 2-core machine, channels-last, batch 64: a ResNet-18 at
    128 px 1.14x (one thread) and 1.25x (two), abm-trunk 1.5-1.6x; logits equal to 2e-5. The result
    is a ``torch.fx`` graph whose containers (``backbone.layer4``) no longer run as modules, so code
    that hooks into them (class activation maps) asks for the model unfolded. A model ``torch.fx``
    cannot trace (data-dependent control flow) runs unfolded."""
    from torch.fx.experimental.optimization import fuse
    try:
        return fuse(model.eval(), inplace=True)
    except Exception as error:  # noqa: BLE001 - any tracing failure leaves the model as it was
        log.info("batch norm not folded for %s: %s", type(model).__name__, error)
        return model


class MultiTaskPredictor(Thresholded):
    """One network, a sigmoid per attribute; attributes the model was not trained on are NaN."""

    def __init__(self, manifest: Manifest, model: torch.nn.Module, device: torch.device, compiled: bool = False,
                 fold_norms: bool = True):
        self.manifest, self.device = manifest, device
        self.model = _for_inference(fold_batch_norm(model) if fold_norms else model, device)
        if compiled:
            self.model = torch.compile(self.model)
        self.choices = manifest.attributes
        self.image_size, self.crop = manifest.image_size, manifest.crop
        self.sketch_channels = 0
        self.columns, self.thresholds = thresholds_of(self.choices)
        self.needs_sketch = False

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray, sketches: np.ndarray | None = None) -> np.ndarray:
        """(B, S, S, 3) uint8 crops -> (B, 40) float32 P(attribute), calibrated where the manifest says how
        (``sketches`` unused)."""
        out = np.full((len(images), len(ATTRIBUTES)), np.nan, np.float32)
        if len(images) == 0:
            return out
        cuda = self.device.type == "cuda"
        x = to_input(images, self.image_size, self.device, channels_last=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = self.model(x)["attributes"].float()
        out[:, self.columns] = torch.sigmoid(logits).cpu().numpy()[:, self.columns]
        return self.calibrate(out)


def read_predictor(uri_or_path: str | Path) -> tuple[Manifest, dict[str, dict[str, torch.Tensor]]]:
    """Read and verify a predictor directory or MLflow model URI: ``(manifest, weights)``.

    Everything that can be wrong with a predictor raises :class:`PredictorError` naming the file:
    no or unreadable manifest, missing keys, weights that do not match the manifest's SHA-256 or
    tensor shapes, or a weights file holding anything but tensors (``weights_only=True``: a pickle
    payload is refused, never run).
    """
    path, manifest = locate_predictor(uri_or_path)
    return manifest, load_weights(read_weights_file(path, manifest), manifest, path)


def load_weights(blob: bytes, manifest: Manifest, path: Path) -> dict:
    """The tensors of a weights file's bytes (``path``: the predictor folder, for messages), checked
    against the manifest: tensors only, every model the manifest names, every shape."""
    try:
        weights = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError...
        # torch's own text suggests weights_only=False, which would run the file's code: never.
        raise PredictorError(f"{path / WEIGHTS}: not a tensors-only weights file, refused without "
                             f"loading it ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(weights, dict):
        raise PredictorError(f"{path / WEIGHTS}: expected a dict of state dicts, got {type(weights).__name__}")
    check_weights(weights, manifest, path)
    _check_finite(path, weights)
    return weights


def check_weights(weights: dict, manifest: Manifest, path: Path) -> None:
    """Raise :class:`PredictorError` unless ``weights`` hold every model the manifest names, in
    the manifest's shapes (an ensemble: each member's, against the member's manifest)."""
    if manifest.format == ENSEMBLE_FORMAT:
        for i, (_, member) in enumerate(manifest.members):
            if member.format == ENSEMBLE_FORMAT:
                raise PredictorError(f"{path / MANIFEST}: member {i} is itself an ensemble (not supported)")
            if not isinstance(weights.get(str(i)), dict):
                raise PredictorError(f"{path / WEIGHTS}: no weights for ensemble member {i}")
            check_weights(weights[str(i)], member, path)
        return
    if manifest.format == MULTITASK_FORMAT:
        _check_multitask(path, manifest, weights)
        return
    for c in manifest.attributes:
        if c.get("attribute") not in ATTRIBUTES or c.get("modality") not in MODALITIES:
            raise PredictorError(f"{path / MANIFEST}: unknown attribute/modality {c.get('attribute')}/{c.get('modality')}")
        key = f"{c['attribute']}__{c['modality']}"
        if key not in weights:
            raise PredictorError(f"{path / WEIGHTS}: no weights for {key} named in the manifest")
        shapes = {n: list(t.shape) for n, t in weights[key].items()}
        if shapes != manifest.tensor_shapes.get(key):
            raise PredictorError(f"{path / WEIGHTS}: tensor shapes of {key} differ from the manifest")


def _check_finite(path: Path, weights: dict) -> None:
    """Refuse weights holding NaN or infinity (a run that diverged): they would label every image
    with empty probabilities and a 0 decision, as if that meant something."""
    def tensors(tree, prefix=""):
        for name, value in tree.items():
            if isinstance(value, dict):
                yield from tensors(value, f"{prefix}{name}.")
            elif torch.is_tensor(value) and value.is_floating_point():
                yield prefix + name, value
    bad = [name for name, t in tensors(weights) if not bool(torch.isfinite(t).all())]
    if bad:
        raise PredictorError(f"{path / WEIGHTS}: {len(bad)} tensor(s) hold non-finite values (e.g. {bad[0]}): "
                             "the run that wrote them diverged; retrain it (a lower --lr)")


def _check_multitask(path: Path, manifest: Manifest, weights: dict) -> None:
    if manifest.model not in list_models():
        raise PredictorError(f"{path / MANIFEST}: unknown model {manifest.model!r}; known: {', '.join(list_models())}")
    for c in manifest.attributes:
        if c.get("attribute") not in ATTRIBUTES:
            raise PredictorError(f"{path / MANIFEST}: unknown attribute {c.get('attribute')!r}")
    if {n: list(t.shape) for n, t in weights.items()} != manifest.tensor_shapes:
        raise PredictorError(f"{path / WEIGHTS}: tensor names or shapes differ from the manifest")


def build_predictor(manifest: Manifest, weights: dict, device: str | torch.device = "cpu", compiled: bool = False,
                    fold_norms: bool = True):
    """A predictor from verified parts (:func:`read_predictor`): what labelling actors receive,
    so they never open the model store themselves. ``compiled``: ``torch.compile`` its networks
    (one H100, 40 ABM-CNNs, bf16: 2.8x the forward at 180 px, 3.0x at 64 px; the first batches
    of each shape wait for the compiler). ``fold_norms``: a multi-task network's batch norms
    folded into its convolutions (:func:`fold_batch_norm`); off for code that needs the modules
    as trained."""
    if manifest.format == ENSEMBLE_FORMAT:
        return EnsemblePredictor(manifest, weights, torch.device(device),
                                 lambda member, tensors: build_predictor(member, tensors, device, compiled, fold_norms))
    if manifest.format == MULTITASK_FORMAT:
        model = build_model(manifest.model, manifest.image_size, **manifest.model_kwargs)
        model.load_state_dict(weights)
        return MultiTaskPredictor(manifest, model, torch.device(device), compiled, fold_norms)
    return CombinedPredictor(manifest, weights, torch.device(device), compiled)


def load_predictor(uri_or_path: str | Path, device: str | torch.device = "cpu", compiled: bool = False,
                   fold_norms: bool = True):
    """Load and verify a predictor directory or MLflow model URI (see module docstring)."""
    return build_predictor(*read_predictor(uri_or_path), device, compiled, fold_norms)
