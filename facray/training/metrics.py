"""Metrics shared by every trainer and report: confusion counts, per-attribute scores, decision
thresholds chosen on validation. Numpy; only :class:`PassStats` takes torch tensors (and imports
torch when it is used), so torch-free processes (``facray data check``) read the rest."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.predictors.calibration import apply_temperatures, fit_temperatures

# A split with fewer examples of a class than this says little about that class: ``facray data
# check`` warns per split and attribute. A training split with none trains no model at all
# (:func:`one_sided_attributes`).
MIN_CLASS_EXAMPLES = 10


def trainable_attributes(labels: np.ndarray, selected: list[str], prepared: str) -> list[str]:
    """Of ``selected``, the attributes the training rows' (N, 40) ``labels`` can teach: labelled,
    with both classes. Prints a warning line for each one-sided one
    (:func:`one_sided_attributes`); raises ``ValueError`` when none is left."""
    labelled = [a for a in selected if (labels[:, ATTRIBUTES.index(a)] >= 0).any()]
    one_sided = one_sided_attributes(labels, labelled)
    for line in one_sided.values():
        print(f"warning: {line}", flush=True)
    trainable = [a for a in labelled if a not in one_sided]
    if not trainable:
        raise ValueError(f"{prepared}: none of the {len(selected)} selected attribute(s) has labelled training rows "
                         f"of both classes ({', '.join(selected[:5])}{', ...' if len(selected) > 5 else ''}): "
                         "nothing to train")
    return trainable


def unvalidated_attributes(val_labels: np.ndarray, attributes: list[str], prepared: str, split: str,
                           also: str = "") -> list[str]:
    """Of ``attributes``, those with no labelled row in ``val_labels`` (the validation rows' (N, 40)
    labels, -1 unknown), a warning line printed for each before training starts: nothing scores
    them on validation, so their validation metrics are NaN (never 0) and their decision
    threshold stays 0.5. ``also``: what else that means for the trainer (a binary job, whose early
    stopping then keeps every latest epoch, :mod:`facray.training.early_stopping`)."""
    missing = [a for a in attributes if not (val_labels[:, ATTRIBUTES.index(a)] >= 0).any()]
    for a in missing:
        print(f"warning: {prepared}: {a} has no labelled rows in the validation split ({split!r}): its validation "
              f"metrics are NaN and its threshold stays 0.5{also}", flush=True)
    return missing


def confusion_metrics(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, precision, recall and F1 from confusion counts (arrays of K): 0
    where a ratio is undefined (no predicted positives: precision 0), NaN for every figure of a
    column with no labelled rows at all (nothing was scored; 0 would read as every answer wrong).

    Balanced accuracy is the mean of the true-positive and true-negative rates, a class with no
    examples scoring 0: on a split holding one class it is at most 0.5, so a perfect score there
    (every woman called "not Male") cannot pass for a model that tells the classes apart."""
    tp, fp, fn, tn = (np.asarray(v, np.float64) for v in (tp, fp, fn, tn))
    total = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        accuracy = np.where(total > 0, (tp + tn) / total, 0.0)
    m = {"accuracy": accuracy, "balanced_accuracy": (recall + specificity) / 2, "precision": precision,
         "recall": recall, "f1": f1}
    return {k: np.where(total > 0, v, np.nan) for k, v in m.items()}


def class_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per attribute of (N, A) labels (1, 0; -1 unknown is neither)."""
    labels = np.asarray(labels)
    return (labels == 1).sum(0), (labels == 0).sum(0)


def one_sided_attributes(labels: np.ndarray, attributes: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Of ``attributes`` (names in the official order's columns of ``labels``, the training rows'
    (N, 40) labels), those labelled but all of one class, each with the line that says so.

    Such an attribute cannot be learnt: a model "trained" on it answers one class for every face
    and scores 1.0 on a split of the same class. The trainers train no model for it (a predictor
    leaves it out, ``facray label`` leaves its column empty)."""
    pos, neg = class_counts(labels)
    out = {}
    for a in attributes:
        j = ATTRIBUTES.index(a)
        if pos[j] + neg[j] and not (pos[j] and neg[j]):
            which = "negative (-1)" if not pos[j] else "positive (1)"
            out[a] = (f"{a}: all {int(pos[j] + neg[j])} labelled training rows are {which}: the data is "
                      f"one-sided, not the model; no model is trained for {a} (label leaves it empty); "
                      f"add images of both classes to train it")
    return out


@dataclass
class PassStats:
    """Per-model sums over one pass: loss, confusion counts, number of labelled samples."""
    loss: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @classmethod
    def zeros(cls, k: int) -> "PassStats":
        return cls(*(np.zeros(k) for _ in range(5)))

    @property
    def count(self) -> np.ndarray:
        return self.tp + self.fp + self.fn + self.tn

    def add(self, per_sample_loss, predicted, labels) -> None:
        """Add one batch: ``(B, K)`` torch tensors of losses, 0/1 predictions and labels (-1 unknown)."""
        import torch  # lazy: see the module docstring
        with torch.no_grad():
            pos, neg = labels == 1, labels == 0
            self.loss += per_sample_loss.sum(0).detach().cpu().numpy()
            self.tp += ((predicted == 1) & pos).sum(0).cpu().numpy()
            self.fp += ((predicted == 1) & neg).sum(0).cpu().numpy()
            self.fn += ((predicted == 0) & pos).sum(0).cpu().numpy()
            self.tn += ((predicted == 0) & neg).sum(0).cpu().numpy()

    def summary(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Per model: the mean loss and :func:`confusion_metrics`, all NaN for a model with no
        labelled rows in the pass."""
        m = confusion_metrics(self.tp, self.fp, self.fn, self.tn)
        m["loss"] = np.where(self.count > 0, self.loss / np.maximum(self.count, 1), np.nan)
        return {prefix + k: v for k, v in m.items()}


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, default: float = 0.5, min_z: float = 2.0
                      ) -> np.ndarray:
    """Per attribute, the threshold maximising validation accuracy (ties: the one nearest 0.5),
    kept only where it beats ``default`` by a sign test on the validation rows it decides
    differently: wins - losses >= ``min_z`` x sqrt(wins + losses); otherwise ``default``.

    Why the test: with a few hundred validation images the exact optimum often wins by one or two
    images, and on unseen data such thresholds lowered the mean (real data, 8 runs: up to -0.47
    points; with ``min_z=2`` no worse than -0.09 and +0.10 on average, bench/RESULTS.md). Scores
    that are really shifted (class-balanced training) pass it easily. ``min_z=0``: the exact optimum.

    Candidates are the midpoints between sorted distinct probabilities, so the choice is exact on
    the validation set; an attribute without labelled rows keeps ``default``.
    """
    out = np.full(probs.shape[1], default, np.float64)
    for j in range(probs.shape[1]):
        known = labels[:, j] >= 0
        p, y = probs[known, j].astype(np.float64), labels[known, j]
        if len(p) == 0:
            continue
        order = np.argsort(p)
        p, y = p[order], y[order]
        # Predict 1 for p >= t. With t between p[i-1] and p[i]: positives among p[i:], negatives below.
        pos_above = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
        neg_below = np.concatenate([[0], np.cumsum(1 - y)])
        correct = pos_above + neg_below  # candidate i: threshold just below p[i] (i = n: above all)
        cuts = np.concatenate([[p[0] - 1e-6], (p[1:] + p[:-1]) / 2, [p[-1] + 1e-6]])
        best = np.flatnonzero(correct == correct.max())
        cut = float(np.clip(cuts[best[np.argmin(np.abs(cuts[best] - default))]], 0.0, 1.0))
        moved, stays = p >= cut, p >= default
        gain = int(((moved == (y == 1)).sum()) - (stays == (y == 1)).sum())
        if gain > 0 and gain >= min_z * np.sqrt(int((moved != stays).sum())):
            out[j] = cut
    return out


def fit_decisions(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """On validation (N, 40) raw probabilities and labels: (temperatures, thresholds), both (40,):
    the temperatures (:func:`facray.predictors.calibration.fit_temperatures`), then the thresholds chosen on the calibrated
    probabilities (:func:`choose_thresholds`). What every predictor writer
    stores (``train``, ``combine``, ``ensemble``, ``distill``)."""
    temperatures = fit_temperatures(probs, labels)
    return temperatures, choose_thresholds(np.nan_to_num(apply_temperatures(probs, temperatures), nan=0.0), labels)


def attribute_metrics(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float = 0.5
                      ) -> dict[str, np.ndarray]:
    """Per attribute: accuracy, balanced accuracy, precision, recall, F1, confusion counts (tp, fp,
    fn, tn), count. An attribute with no labelled rows (no test split, a label the dataset lacks)
    scores NaN, not 0: nothing was scored."""
    known = labels >= 0
    pred = probs >= np.asarray(thresholds)
    y = labels == 1
    tp = (pred & y & known).sum(0)
    fp = (pred & ~y & known).sum(0)
    fn = (~pred & y & known).sum(0)
    tn = (~pred & ~y & known).sum(0)
    count = known.sum(0)
    m = confusion_metrics(tp, fp, fn, tn)
    m.update(tp=tp, fp=fp, fn=fn, tn=tn, count=count)
    return m


def positive_weights(labels: np.ndarray, cap: float) -> np.ndarray:
    """Class balance: negatives / positives per attribute over labelled rows, in [1, cap] (1 where
    there are no positives). ``labels``: (N, A) int, -1 unknown."""
    known = labels >= 0
    pos = ((labels == 1) & known).sum(0).astype(np.float64)
    neg = ((labels == 0) & known).sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1.0, cap).astype(np.float32)


def identification_metrics(scores: np.ndarray, targets: np.ndarray, max_rank: int = 20) -> dict:
    """Closed-set identification of (N, K) identity scores against (N,) true class indices (-1 =
    not a training identity, left out): the CMC curve (share of probes whose identity is among
    the top k, k = 1..max_rank), top-1 and top-5."""
    known = targets >= 0
    scores, targets = scores[known], targets[known]
    if not len(targets):
        return {"top1": float("nan"), "top5": float("nan"), "cmc": [], "count": 0}
    true = scores[np.arange(len(targets)), targets]
    rank = (scores > true[:, None]).sum(1)  # 0-based rank of the true identity (ties count in its favour)
    cmc = [float((rank < k).mean()) for k in range(1, min(max_rank, scores.shape[1]) + 1)]
    return {"top1": cmc[0], "top5": cmc[min(4, len(cmc) - 1)], "cmc": cmc, "count": int(len(targets))}
