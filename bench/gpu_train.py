"""Benchmark: ``facray train``'s trainer on one GPU, without Ray or MLflow, and accuracy recipes.

What a Ray Train worker of ``facray train`` runs is the pure
:class:`facray.training.multitask.MultiTaskTrainer` on the prepared arrays; this script runs that
same code directly, so it works on a GPU machine that has torch but neither Ray nor MLflow.

1. ``--throughput``: a model (default resnet18) at the prepared size, on the prepared training
   images: facray's trainer (bf16 autocast, channels_last, online flips, validation every epoch)
   next to a plain PyTorch loop written the usual way (the same model, AdamW, BCE, bf16 autocast,
   channels_last, pinned uint8 images, the same validation pass), img/s and their ratio.
2. ``--recipe "MODEL key=value ..."`` (repeatable; the keys of ``facray train``): trained to its
   budget with early stopping, thresholds chosen on validation (sign-tested, as ``facray train``
   does), then mean test accuracy at 0.5 and at the thresholds, with horizontal-flip averaging,
   attributes stuck at one class, seconds. With several recipes, the mean of their probabilities
   (an ensemble) is scored the same way. Probabilities go to ``--out`` as .npz.

    python bench/gpu_train.py --prepared PREP --throughput
    python bench/gpu_train.py --prepared PREP --recipe "resnet18 epochs=40 jitter_shift=0.06" --out results
"""
from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facray.attributes import ATTRIBUTES
from facray.config import resolve_config
from facray.data.prepared import read_metadata
from facray.models.inputs import to_channels_last
from facray.models.registry import build_model, model_spec
from facray.runs import RunFolder
from facray.training.configs import MultitaskConfig, input_size, model_kwargs, uses_masks
from facray.training.finalize import finalize
from facray.training.metrics import attribute_metrics, choose_thresholds, positive_weights, trainable_attributes
from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig
from facray.training.splits import SplitSpec, array_batches, load_split_arrays

SPLITS = {"val_split": "holdout", "test_split": "val"}  # celebahq_dev: 10% of train validates, val tests


def recipe_config(recipe: str, prepared: str) -> MultitaskConfig:
    name, *pairs = shlex.split(recipe)
    overrides = {**SPLITS, **dict(p.split("=", 1) for p in pairs), "model": name, "prepared": prepared}
    return resolve_config(MultitaskConfig, overrides=overrides)


_loaded: dict = {}


def split_arrays(cfg: MultitaskConfig) -> dict:
    columns = ("image", "masks") if uses_masks(cfg) else ("image",)
    key = (SplitSpec.of(cfg), columns)
    if key not in _loaded:
        _loaded[key] = load_split_arrays(SplitSpec.of(cfg), columns)
    return _loaded[key]


def score(probs: np.ndarray, labels: np.ndarray, thresholds) -> tuple[float, int]:
    """(mean accuracy over the attributes with labels, how many predict one class only)."""
    m = attribute_metrics(probs, labels, thresholds)
    known = m["count"] > 0
    one_class = ((m["tp"] + m["fp"] == 0) | (m["tn"] + m["fn"] == 0)) & known
    return float(np.mean(m["accuracy"][known])), int(one_class.sum())


def flipped(batches):
    for b in batches:
        yield {**b, "image": np.ascontiguousarray(b["image"][:, :, ::-1])}


def report(name: str, val_probs, val_labels, test_probs, test_labels, seconds: float | None = None) -> dict:
    thresholds = choose_thresholds(val_probs, val_labels)
    at_half, stuck_half = score(test_probs, test_labels, 0.5)
    tuned, stuck = score(test_probs, test_labels, thresholds)
    took = f", {seconds:.0f} s" if seconds is not None else ""
    print(f"  {name}: test {100 * tuned:.2f}% (at 0.5: {100 * at_half:.2f}%), one class only: {stuck} "
          f"(at 0.5: {stuck_half}){took}", flush=True)
    return {"test": tuned, "test_at_half": at_half}


def run_recipe(recipe: str, prepared: str, device: torch.device, out: Path | None) -> dict:
    cfg = recipe_config(recipe, prepared)
    data = split_arrays(cfg)
    torch.manual_seed(cfg.seed)
    size = input_size(cfg)
    model = build_model(cfg.model, size, pretrained=cfg.pretrained, weights_file=cfg.weights, **model_kwargs(cfg))
    model = to_channels_last(model.to(device))
    pos_weight = positive_weights(data["train"]["labels"], cfg.max_pos_weight) if cfg.class_balance else None
    trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig.of(cfg), device, pos_weight, head_modules=model_spec(cfg.model).head)
    print(f"{recipe}: {len(data['train']['labels'])} train / {len(data['val']['labels'])} val / "
          f"{len(data['test']['labels'])} test at {size} px", flush=True)
    start = time.perf_counter()
    while trainer.epoch < cfg.epochs and not trainer.stopped:
        rec = trainer.fit_epoch(array_batches(data["train"], cfg.batch_size, True, cfg.seed, trainer.epoch),
                                array_batches(data["val"], 512))
        if rec["epoch"] % 5 == 0 or trainer.stopped or rec["epoch"] == cfg.epochs:
            print(f"  epoch {rec['epoch']}: loss {rec['loss']:.4f} val loss {rec['val_loss']:.4f} "
                  f"val acc {rec['val_accuracy']:.4f} best {rec['best_epoch']}", flush=True)
    seconds = time.perf_counter() - start
    # facray's own ending (best epoch, thresholds on val, test metrics, the predictor): the same
    # function rank 0 of `facray train` calls, here without Ray.
    run = RunFolder(out / f"run-{cfg.model}-{abs(hash(recipe)) % 10**6}" if out else tempfile.mkdtemp())
    labelled = trainable_attributes(data["train"]["labels"], list(ATTRIBUTES), prepared)
    record = finalize(run, trainer, array_batches(data["val"], 512), array_batches(data["test"], 512), labelled,
                      cfg, model_kwargs(cfg), read_metadata(prepared), digest="bench")
    probs = {}
    for split in ("val", "test"):
        plain, labels, _, _ = trainer.predict(array_batches(data[split], 512))
        mirror = trainer.predict(flipped(array_batches(data[split], 512)))[0]
        probs[split] = {"plain": plain, "flip": (plain + mirror) / 2, "labels": labels}
    result = {"recipe": recipe, "seed": cfg.seed, "best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch,
              "seconds": seconds, "test": record["mean_test_accuracy"], "test_at_half": record["mean_test_accuracy_at_0.5"]}
    print(f"  {cfg.model} (best epoch {trainer.best_epoch}/{trainer.epoch}): test {100 * result['test']:.2f}% "
          f"(at 0.5: {100 * result['test_at_half']:.2f}%) over {len(labelled)} attributes, {seconds:.0f} s; "
          f"predictor in {run.model_dir}", flush=True)
    flip = report("  with flip averaging", probs["val"]["flip"], probs["val"]["labels"], probs["test"]["flip"],
                  probs["test"]["labels"])
    result.update(test_flip=flip["test"], test_flip_at_half=flip["test_at_half"], probs=probs)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / f"{cfg.model}-{abs(hash(recipe)) % 10**6}.npz", recipe=recipe,
                            **{f"{s}_{k}": v for s, d in probs.items() for k, v in d.items()})
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_epochs(model, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor, batch: int,
                 epochs: int, device: torch.device) -> float:
    """The usual hand-written loop; returns training img/s over ``epochs`` (after one warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    cuda = device.type == "cuda"

    def batches(x):
        for i in range(0, len(x), batch):
            yield x[i:i + batch].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255) \
                .contiguous(memory_format=torch.channels_last)

    for epoch in range(epochs + 1):
        if epoch == 1:
            synchronize(device)
            start = time.perf_counter()
        model.train()
        order = torch.randperm(len(images))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = images[idx]
            x = (x.pin_memory() if cuda else x).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            flip = torch.rand(len(x), device=device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(device, non_blocking=True).float()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)["attributes"]
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            for x in batches(val_images):
                model(x)
    synchronize(device)
    return epochs * len(images) / (time.perf_counter() - start)


def throughput(prepared: str, model_name: str, batch: int, epochs: int, device: torch.device) -> None:
    cfg = recipe_config(f"{model_name} batch_size={batch} epochs={epochs + 1} patience=99 online_flip=true", prepared)
    data = split_arrays(cfg)
    train, val = data["train"], data["val"]
    train = {k: train[k] for k in ("image", "labels")}
    size = input_size(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, size, **model_kwargs(cfg))
    model = to_channels_last(model.to(device))
    trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig.of(cfg), device)
    for epoch in range(epochs + 1):
        if epoch == 1:
            synchronize(device)
            start = time.perf_counter()
        trainer.fit_epoch(array_batches(train, batch, True, 0, epoch), array_batches(val, 512))
    synchronize(device)
    facray = epochs * len(train["labels"]) / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = build_model(cfg.model, size, **model_kwargs(cfg))
    model = to_channels_last(model.to(device))
    labels = torch.as_tensor(train["labels"]).clamp(min=0)
    plain = plain_epochs(model, torch.as_tensor(train["image"]), labels, torch.as_tensor(val["image"]), batch,
                         epochs, device)
    print(f"throughput, {model_name} at {size} px, batch {batch}, {len(train['labels'])} images x {epochs} epochs "
          f"(+1 warm-up), {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}:")
    print(f"  facray trainer {facray:8.0f} img/s   plain loop {plain:8.0f} img/s   ratio {facray / plain:.2f}x",
          flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, help="a prepared folder (celebahq_dev: holdout val, val as test)")
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--throughput-model", default="resnet18")
    p.add_argument("--throughput-batch", type=int, default=256)
    p.add_argument("--throughput-epochs", type=int, default=3)
    p.add_argument("--recipe", action="append", default=[], help='"MODEL key=value ..." (facray train keys)')
    p.add_argument("--out", default=None, help="folder for the probabilities (.npz)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    if args.throughput:
        throughput(args.prepared, args.throughput_model, args.throughput_batch, args.throughput_epochs, device)
    results = [run_recipe(r, args.prepared, device, Path(args.out) if args.out else None) for r in args.recipe]
    # An ensemble needs one validation set: recipes with another seed hold out other images.
    same_split = [r for r in results if r["seed"] == results[0]["seed"]] if results else []
    if len(same_split) > 1:
        val = [r["probs"]["val"] for r in same_split]
        test = [r["probs"]["test"] for r in same_split]
        print(f"ensemble of the {len(same_split)} recipes with seed {results[0]['seed']} (mean probability):")
        for kind in ("plain", "flip"):
            report(f"  {kind}", np.mean([v[kind] for v in val], 0), val[0]["labels"],
                   np.mean([t[kind] for t in test], 0), test[0]["labels"])


if __name__ == "__main__":
    main()
