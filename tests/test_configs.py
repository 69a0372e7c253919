"""The training configs: a run's identity (its ``run.json`` hash) stays put across refactors, and
every training option is declared once."""
from __future__ import annotations

import dataclasses

from facray.training.configs import BinaryConfig, TrainCommon, MultitaskConfig
from facray.training.run_record import run_settings, settings_hash


def test_run_json_hashes_are_pinned():
    """Existing run folders resume only while these hashes hold: a renamed field or a changed
    default makes every earlier run look like another one (re-training, or a refusal)."""
    # train-binary hashes what --online-augment auto decided; "off" (data prepared with the variants)
    # is how every run before the option trained, so those runs keep their hash.
    binary = run_settings(BinaryConfig(prepared="/data/p", out="/runs/a", online_augment="off"), "shards-1")
    multitask = run_settings(MultitaskConfig(prepared="/data/p", out="/runs/b", model="resnet18", lr=3e-4), "shards-1")
    assert (settings_hash(binary), len(binary)) == ("8135881b0e52bf75", 20)
    assert (settings_hash(multitask), len(multitask)) == ("8599a303aea28eb2", 34)
    online = run_settings(BinaryConfig(prepared="/data/p", out="/runs/a", online_augment="on"), "shards-1")
    assert online["online_augment"] == "on" and settings_hash(online) != settings_hash(binary)


def test_train_run_names_are_pinned():
    """A re-run resumes the Ray Train run of this name (its checkpoints): 9x-data runs from before
    --online-augment keep theirs."""
    from facray.training.binary_jobs import BinaryJob
    from facray.training.binary_task import train_run_name
    jobs = [BinaryJob("Smiling", "real", 20)]
    for online, name in (("off", "fused-a064ecf6"), ("on", "fused-eb6e6a01")):
        assert train_run_name("fused", BinaryConfig(prepared="/data/p", out="/runs/a", online_augment=online), jobs) == name


def test_online_augment_auto_follows_the_prepared_variants():
    assert BinaryConfig().augments_online({"augment": 1})
    assert not BinaryConfig().augments_online({"augment": 9})
    assert BinaryConfig(online_augment="on").augments_online({"augment": 9})
    assert not BinaryConfig(online_augment="off").augments_online({"augment": 1})


def test_operational_keys_leave_the_hash_alone():
    base = MultitaskConfig(prepared="/data/p", out="/runs/b")
    moved = dataclasses.replace(base, out="/elsewhere", num_workers=4, tracking_uri="http://x", max_failures=0)
    assert settings_hash(run_settings(base, "s")) == settings_hash(run_settings(moved, "s"))
    assert settings_hash(run_settings(base, "s")) != settings_hash(run_settings(dataclasses.replace(base, lr=0.1), "s"))


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_every_training_option_is_declared_once():
    """The shared fields live in TrainCommon; a field both commands declare themselves is one
    whose default differs by design (the run folder, the experiment, the papers' batch sizes,
    flips), never a silent copy that could drift."""
    fields = {f.name for cls in (BinaryConfig, MultitaskConfig) for f in dataclasses.fields(cls)}
    own = {cls: set(cls.__dict__["__annotations__"]) & fields for cls in (BinaryConfig, MultitaskConfig)}
    both = own[BinaryConfig] & own[MultitaskConfig]
    assert both == {"out", "experiment", "batch_size", "online_flip", "image_size"}
    binary, multitask = _defaults(BinaryConfig), _defaults(MultitaskConfig)
    assert all(binary[k] != multitask[k] for k in both - {"image_size"})  # image_size: 0 means another thing
    common = _defaults(TrainCommon)
    assert all(binary[k] == multitask[k] == v for k, v in common.items())


def test_the_pure_trainers_take_the_commands_defaults():
    """A trainer built without the CLI (a test, a bench) trains as the command would by default."""
    from facray.training.binary import TrainerConfig
    from facray.training.multitask import MultiTaskTrainerConfig
    for pure, command in ((TrainerConfig, BinaryConfig), (MultiTaskTrainerConfig, MultitaskConfig)):
        # image_size: the resolved input side there; epochs: the span of a cosine schedule (0 = none);
        # online_augment: what the command's "auto" decided from the prepared data
        shared = (_defaults(pure).keys() & _defaults(command).keys()) - {"image_size", "epochs", "online_augment"}
        assert shared and {k: _defaults(pure)[k] for k in shared} == {k: _defaults(command)[k] for k in shared}


def test_a_yaml_config_may_write_online_augment_on_and_off_bare():
    """YAML 1.1 reads a bare ``on`` / ``off`` as a boolean: they still mean the option's values."""
    import yaml

    from facray.config import resolve_config
    for text, value in (("online_augment: on", "on"), ("online_augment: off", "off"), ("online_augment: auto", "auto")):
        assert resolve_config(BinaryConfig, overrides=yaml.safe_load(text)).online_augment == value
