"""Typed training configuration: one YAML drives training everywhere.

Why dataclasses: the pipeline, the PyTorchJob and a hand-run `torchrun` must all train the same
thing, so the config is validated strictly (unknown keys and wrong types are errors that name the
key) and hashed after resolution, and the hash names what was trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gbcosface.yaml_safe import YAMLInputError, read_yaml_file
from gbcosface.yaml_safe import load_yaml as load_yaml_text


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


@dataclass
class ModelConfig:
    name: str = "iresnet100"
    embedding_size: int = 512
    dropout: float = 0.0
    # Tiny-model knobs (None = the published architecture).
    width: int | None = None  # channels of the first stage; later stages double
    layers: list[int] | None = None  # blocks per stage
    stem_stride: int = 1  # 2 downsamples to 56 px first (fast CPU demo)
    fp16: bool = False  # insightface's flag: run the trunk under autocast
    # Train the embedding BatchNorm1d's weight (gamma). None resolves when the config is loaded: True
    # for magnitude-aware losses (MagFace's iresnet trains it) and for mobilefacenet (the release
    # trains it), else False (insightface's / the release's iresnet fixes it at 1).
    train_embedding_scale: bool | None = None


@dataclass
class HeadConfig:
    type: str = "linear"  # linear (cos theta) | mag (cos theta + feature norms)
    num_classes: int | None = None  # None = read from the dataset's property file
    sharded: bool = False  # classes split across ranks (model parallel), DDP over the backbone only
    sample_rate: float = 1.0  # < 1: Partial-FC-style negative-class sampling per shard (needs sharded)
    init: str = "unit"  # unit: unit-norm class centres (official BaseHead) | normal: N(0, 0.01) (insightface)


@dataclass
class LossConfig:
    name: str = "gb_cosface"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    train_dir: str = ""  # directory with train.rec, train.idx, property
    val_dir: str = ""  # directory with <target>.bin
    val_targets: list[str] = field(default_factory=lambda: ["lfw", "cfp_fp", "agedb_30"])
    batch_size: int = 64  # per process
    num_workers: int = 4
    image_size: int = 112
    random_flip: bool = True
    skip_bad_samples: bool = False
    # Staging in the training pods: when stage_from is set, local rank 0 of every node stages the
    # dataset (verified against stage_manifest, when given) into stage_to before training starts.
    stage_from: str = ""  # dataset root URI (s3://... or a path)
    stage_manifest: str = ""  # URI or path of the pinned dataset manifest
    stage_to: str = ""  # local directory; train_dir / val_dir normally point inside it
    stage_prefixes: list[str] = field(default_factory=lambda: ["train", "val"])  # parts to stage


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_lr: float | None = None  # None = lr
    head_weight_decay: float | None = None  # None = weight_decay
    clip_grad_norm: float | None = None
    lr_scale_with_batch: bool = False  # lr * global_batch / 512


@dataclass
class ScheduleConfig:
    type: str = "step"  # step | warmup_poly | warmup_cosine
    epochs: int = 24
    milestones: list[int] = field(default_factory=lambda: [4, 9, 14, 19])  # 0-indexed epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    power: float = 2.0
    max_steps: int | None = None  # stop early after this many optimiser steps (demo, tests)


@dataclass
class RunConfig:
    seed: int = 0
    output: str = "runs/gbcosface"  # local path or s3:// URI: checkpoints, logs, exported backbone
    amp: str = "none"  # none (float32, the official run) | bf16 | fp16 (with a grad scaler)
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    log_every: int = 50
    checkpoint_every: int = 2000  # steps
    keep_last: int = 3
    val_every: int = 2000  # steps; 0 = never
    metrics_port: int = 9400  # base port; each process serves base + LOCAL_RANK; 0 = off
    max_bad_steps: int = 0  # non-finite fp16 steps to skip before stopping
    checkpoint_on_sigterm: bool = True  # SIGTERM: finish the step, checkpoint, exit 143 (preemption)
    resume: bool = True
    # Experiment tracking (docs/tracking.md): MLflow when set or when MLFLOW_TRACKING_URI is in the
    # environment (KFP 2.17 sets it); TensorBoard event files under <output>/tensorboard/.
    mlflow_tracking_uri: str = ""
    tensorboard: bool = True

    def problems(self) -> list[str]:
        """What is wrong with these values (checked before any work starts)."""
        out = []
        for key in ("checkpoint_every", "keep_last"):  # a period of 0 divides by zero; keeping 0 keeps nothing
            if getattr(self, key) < 1:
                out.append(f"run.{key} must be >= 1, not {getattr(self, key)}")
        for key in ("val_every", "max_bad_steps"):  # 0 = off
            if getattr(self, key) < 0:
                out.append(f"run.{key} must be >= 0, not {getattr(self, key)}")
        return out


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}' (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


# Losses that need the feature norms (their `requires_norms`); tests/test_config.py checks the list.
MAGNITUDE_AWARE_LOSSES = ("magface", "gb_magface")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on other keys, so the resolved config (and its hash) says them."""
    if cfg.model.train_embedding_scale is None:
        cfg.model.train_embedding_scale = (cfg.loss.name in MAGNITUDE_AWARE_LOSSES
                                           or cfg.model.name.lower() == "mobilefacenet")
    return cfg


def from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        cfg = _build(TrainConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    validate(cfg, source)
    return resolve(cfg)


def validate(cfg: TrainConfig, source: str = "config") -> None:
    """Semantic checks beyond types."""
    problems = []
    if cfg.run.amp not in ("none", "bf16", "fp16"):
        problems.append(f"run.amp must be none, bf16 or fp16, not {cfg.run.amp!r}")
    if cfg.head.type not in ("linear", "mag"):
        problems.append(f"head.type must be linear or mag, not {cfg.head.type!r}")
    if not 0.0 < cfg.head.sample_rate <= 1.0:
        problems.append(f"head.sample_rate must be in (0, 1], not {cfg.head.sample_rate}")
    elif cfg.head.sample_rate < 1.0 and not cfg.head.sharded:
        problems.append("head.sample_rate < 1 needs head.sharded: true")
    if cfg.head.init not in ("unit", "normal"):
        problems.append(f"head.init must be unit or normal, not {cfg.head.init!r}")
    if cfg.schedule.type not in ("step", "warmup_poly", "warmup_cosine"):
        problems.append(f"schedule.type must be step, warmup_poly or warmup_cosine, not {cfg.schedule.type!r}")
    if cfg.data.batch_size <= 0:
        problems.append("data.batch_size must be positive")
    if cfg.model.stem_stride not in (1, 2):
        problems.append("model.stem_stride must be 1 or 2")
    problems += cfg.run.problems()
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` with the value parsed as YAML (so numbers, lists and booleans work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml_text(raw, f"override {text!r}") if raw != "" else ""
    except YAMLInputError as exc:
        raise ConfigError(str(exc)) from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = read_yaml_file(path)  # bounded: size, alias expansion, UTF-8
    except YAMLInputError as exc:
        raise ConfigError(str(exc)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML file (or a shipped recipe name such as `demo` or `paper`) plus overrides."""
    path = recipe_path(str(path)) if not Path(path).exists() and str(path) in recipe_names() else Path(path)
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(data, str(path))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: TrainConfig) -> str:
    buf = io.StringIO()
    yaml.safe_dump(to_dict(cfg), buf, sort_keys=False)
    return buf.getvalue()


def config_hash(cfg: TrainConfig) -> str:
    """sha256 of the resolved config in canonical JSON: key order and YAML layout do not matter."""
    canon = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("gbcosface.recipes").iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    return Path(str(resources.files("gbcosface.recipes").joinpath(f"{name}.yaml")))
