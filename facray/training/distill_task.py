"""``facray distill`` as a :class:`~facray.training.task.Task`: one multi-task network (the student)
trained on a teacher predictor's probabilities (knowledge distillation, Hinton et al. 2015; here a
sigmoid per attribute, so the soft target of each attribute is the teacher's calibrated
probability). The point: an ensemble's accuracy at one network's labelling speed.

Everything but the targets is ``facray train``'s (:mod:`facray.training.multitask_task`): Ray
Train, DDP, checkpoints and resume, early stopping and thresholds on the labelled validation rows,
calibration, the run folder, MLflow. Each worker loads the training rows, appends the prepared
unlabelled faces (``--unlabelled``, labels unknown) and has the teacher label all of them once on
its own device before the first epoch (every rank holds the whole training set in memory mode,
so with N workers the teacher runs N times, in parallel: one forward pass over the data each).
The loss is the BCE against the teacher's probabilities, plus ``--hard-weight`` x the BCE on the
true labels where a row has them (:meth:`facray.training.multitask.MultiTaskTrainer._loss`).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.data.prepared import prepared_crop, read_metadata, read_prepared
from facray.predictors.locate import is_model_uri, locate_predictor
from facray.predictors.networks import load_predictor, read_predictor
from facray.prepared_eval import check_inputs, predict_arrays
from facray.tracking import finish_training_run
from facray.training.configs import REGISTERED_PREFIX, DistillConfig, uses_identities, uses_masks
from facray.training.multitask_task import MultitaskRank, MultitaskTask
from facray.training.splits import BATCH_KEYS
from facray.training.task import Plan


class DistillTask(MultitaskTask):
    name = "distill"
    config_class = DistillConfig

    def plan(self, cfg: DistillConfig) -> Plan:
        """``facray train``'s checks, and the teacher's: it exists and verifies, crops faces as the
        prepared data does, finds the sketches it needs; the unlabelled faces are cropped alike. The
        student learns the attributes the teacher covers."""
        if not cfg.teacher:
            raise ValueError("--teacher is required: an ensemble or any predictor (run or predictor folder)")
        if is_model_uri(cfg.teacher):  # the workers load it, and need not reach the tracking store
            raise ValueError(f"--teacher {cfg.teacher}: give the teacher's folder (each training worker reads it; "
                             "`facray ensemble --out DIR`, a run folder, or the model downloaded from MLflow)")
        teacher, _ = read_predictor(cfg.teacher)  # verified once here, before Ray
        check_inputs(teacher, cfg.prepared, cfg.teacher)
        if cfg.unlabelled:
            crop, other = (prepared_crop(read_metadata(p)) for p in (cfg.prepared, cfg.unlabelled))
            if other != crop:
                raise ValueError(f"{cfg.unlabelled} crops faces as {other}, {cfg.prepared} as {crop}: prepare the "
                                 "unlabelled faces with the same --size, --margin and --centre")
            check_inputs(teacher, cfg.unlabelled, cfg.teacher)
            if uses_masks(cfg) or uses_identities(cfg):
                raise ValueError(f"--unlabelled faces have no weak masks or identities, which {cfg.model} trains "
                                 "on: distill it without --unlabelled")
        plan = super().plan(cfg)
        if plan.ranks:
            taught = [a for a in plan.shared["labelled_attributes"] if a in teacher.attribute_names]
            if not taught:
                raise ValueError(f"{cfg.teacher} covers none of the attributes this run trains")
            plan.shared.update(labelled_attributes=taught, teacher=teacher.display_name,
                               teacher_sha256=teacher.weights_sha256)
            plan.summary = plan.summary.replace("training", f"distilling {teacher.display_name} into", 1)
            if cfg.unlabelled:  # every worker holds them too: --data auto sizes memory with them
                plan.rows["unlabelled"] = len(read_prepared(cfg.unlabelled, None, columns=())["labels"])
                plan.summary += f", unlabelled {plan.rows['unlabelled']}"
        return plan

    @staticmethod
    def stream_columns(cfg: DistillConfig) -> tuple[str, ...]:
        """``train``'s columns, and the sketches a teacher that reads them needs."""
        sketch = ("sketch",) if cfg.teacher and locate_predictor(cfg.teacher)[1].needs_sketch else ()
        return (*MultitaskTask.stream_columns(cfg), *sketch)

    def run_inputs(self, cfg: DistillConfig) -> dict:
        """The teacher's weights and calibration: a teacher folder rebuilt in place is another teacher."""
        _, teacher = locate_predictor(cfg.teacher)
        decisions = json.dumps([teacher.calibration, [c.get("threshold") for c in teacher.attributes]], sort_keys=True)
        return {"teacher_sha256": teacher.weights_sha256,
                "teacher_calibration": hashlib.sha256(decisions.encode()).hexdigest()[:16]}

    def train_run_name(self, cfg: DistillConfig, plan: Plan) -> str:
        return f"distill-{plan.digest[:12]}"

    def memory_only(self, cfg: DistillConfig) -> str:
        return "distill labels the training rows each worker holds with the teacher: --data memory"

    def mlflow_run_name(self, cfg: DistillConfig) -> str:
        return f"distill-{cfg.model}"

    def setup(self, cfg, plan, rank, world, device, shards) -> "DistillRank":
        return DistillRank(cfg, plan, rank, world, device, shards)

    def finish(self, cfg: DistillConfig, plan: Plan, record: dict, tracking_uri: str, mlflow_run_id: str,
               register: bool) -> dict:
        record["teacher"] = plan.shared.get("teacher")
        record["registered"] = finish_training_run(tracking_uri, mlflow_run_id, plan.run, record,
                                                   f"{REGISTERED_PREFIX}distill-{cfg.model}" if register else None)
        plan.run.write_metrics(record)
        return record


class DistillRank(MultitaskRank):
    """A ``facray train`` rank whose training rows carry the teacher's probabilities (``soft``)."""

    def columns(self) -> tuple[str, ...]:
        return DistillTask.stream_columns(self.cfg)

    def add_training_targets(self, data: dict[str, dict[str, np.ndarray]]) -> None:
        train = data["train"]
        if self.cfg.unlabelled:  # their labels unknown (soft targets only), landmarks unknown (NaN)
            extra = read_prepared(self.cfg.unlabelled, None, self.columns())
            n = len(extra["image"])
            extra["labels"] = np.full((n, len(ATTRIBUTES)), -1, np.int8)
            extra["landmarks"] = np.full((n, train["landmarks"].shape[1]), np.nan, np.float32)
            kept = [k for k in BATCH_KEYS if k in train]  # (plan refused models needing masks or identities)
            train = data["train"] = {k: np.concatenate([train[k], extra[k]]) for k in kept}
        teacher = load_predictor(self.cfg.teacher, self.device)
        train["soft"] = predict_arrays(teacher, train)
        del teacher
