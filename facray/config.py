"""Dataclass configs: every key declared once, settable by YAML file, flag or ``key=value``.

Pure Python; runs on the driver. A config class is a dataclass whose fields carry
``metadata={"help": ...}``; :func:`add_config_arguments` turns each field into a ``--flag``, and
:func:`resolve_config` applies, in order, the defaults, a ``--config`` YAML file, the flags given
and the ``key=value`` overrides, type-checking each value against the field and rejecting unknown
keys (nanoGPT's configurator, timm's YAML-then-command-line order).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def option(default: Any, help: str, path: bool = False) -> Any:  # noqa: A002 - mirrors argparse's keyword
    """A config field with its help text (the one place a key is declared and documented).
    ``path=True``: a local path or URI that :func:`absolute_paths` makes absolute on the driver."""
    return dataclasses.field(default=default, metadata={"help": help, "path": path})


def node_wait_option() -> Any:
    """``--node-wait``, shared by the commands that wait for Ray workers (training, labelling)."""
    return option(600.0, "seconds (at most 86400) to wait, each time, for CPUs/GPUs no live node offers (a lost "
                         "node's replacement, an autoscaler's new node; labelling: for new rows) before stopping "
                         "with what is missing; re-running resumes")


def check_node_wait(seconds: float) -> None:
    # Finite and at most a day: a thread's timeout overflows above threading.TIMEOUT_MAX.
    if not 0 < seconds <= 86400:
        raise ValueError(f"--node-wait {seconds:g}: expected seconds above 0 and at most 86400 (a day; default 600)")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def absolute_location(value: str) -> str:
    """A local path made absolute against this process's working folder (``~`` expanded);
    URIs (``s3://``, ``models:/``, ``http://``) unchanged, except a relative SQLite store
    (``sqlite:///store/mlflow.db`` becomes ``sqlite:////abs/store/mlflow.db``)."""
    text = str(value)
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(os.path.expanduser(text[len("sqlite:///"):]))
    if _SCHEME.match(text) and not os.path.exists(text):
        return text
    return os.path.abspath(os.path.expanduser(text))


def absolute_paths(cfg: C) -> C:
    """``cfg`` with every path field made absolute here, on the driver, before anything reaches a
    Ray worker or actor: a worker's working folder is not the user's, so a relative ``--prepared``
    would name another place there."""
    changes = {f.name: absolute_location(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
               if f.metadata.get("path") and getattr(cfg, f.name)}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp) -> tuple[Any, bool]:
    """(underlying type, optional?) for ``X``, ``X | None`` and ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(value: Any, tp, key: str) -> Any:
    """Convert a string (from a flag or key=value) or YAML value to the field's type."""
    base, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError(f"{key}: None is not allowed")
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        allowed = typing.get_args(base)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if value not in allowed and str(value) not in map(str, allowed):
            raise ValueError(f"{key}: {value!r} is not one of: {', '.join(map(str, allowed))}")
        return next(a for a in allowed if a == value or str(a) == str(value))
    if origin in (tuple, list):
        (item,) = set(typing.get_args(base)) - {Ellipsis} or {str}
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [coerce(v.strip() if isinstance(v, str) else v, item, key) for v in items
                 if not (isinstance(v, str) and not v.strip())]
        return tuple(items) if origin is tuple else items
    if base is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean, got {value!r}")
    try:
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected {getattr(base, '__name__', base)}, got {value!r}") from None


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add ``--config``, one ``--flag`` per field, and positional ``key=value`` overrides."""
    parser.add_argument("--config", type=Path, help="YAML file of config keys (flags and key=value win)")
    hints = _field_types(cls)
    own = set(vars(cls).get("__annotations__", {}))
    # The command's own fields first (--prepared, --out, ...), then those shared by inheritance.
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_text} (default {default})")
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                                help=f"{help_text} (default {default})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def resolve_config(cls: type[C], args: argparse.Namespace | None = None,
                   overrides: dict[str, Any] | None = None, smoke: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from defaults < ``args.config`` YAML < flags in ``args`` < ``key=value``.

    ``smoke``: a ``--smoke-test`` run's settings (the class's ``SMOKE`` overlay and the fixture
    paths of :func:`facray.testing.smoke_settings`), applied last; a key it sets that the user gave
    too (in any of the three ways) is refused rather than silently overruled."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}

    def put(key: str, value: Any, source: str) -> None:
        key = key.replace("-", "_")
        if key not in names:
            raise ValueError(f"unknown config key {key!r} (from {source}); known: {sorted(names)}")
        values[key] = coerce(value, hints[key], key)

    if args is not None and getattr(args, "config", None):
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of config keys")
        for k, v in loaded.items():
            put(k, v, str(args.config))
    if args is not None:
        for k in names:
            if k in vars(args):
                put(k, getattr(args, k), f"--{k.replace('_', '-')}")
        for item in getattr(args, "overrides", None) or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            k, v = item.split("=", 1)
            put(k.strip(), v.strip(), item)
    for k, v in (overrides or {}).items():
        put(k, v, "code")
    if smoke:
        given = sorted(set(values) & set(smoke))
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"--smoke-test sets {flags} itself; drop {'it' if len(given) == 1 else 'them'} "
                             "or run without --smoke-test")
        for k, v in smoke.items():
            put(k, v, "--smoke-test")
    return absolute_paths(cls(**values))


def config_to_dict(cfg) -> dict[str, Any]:
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v)
    return out


def config_text(cfg) -> str:
    """The resolved config as YAML (reloadable with ``--config``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML (reloadable with ``--config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(cfg))
    return path
