"""Typed, frozen configuration.

A :class:`Config` is a tree of frozen dataclasses. Presets live in ``emodis_ray/configs/*.yaml``
(shipped as package data); a preset only lists the values that differ from the defaults below.
Command-line overrides are dotted keys (``--set model.spk_dim=64``). Unknown keys and values of the
wrong type are errors that name the key. Builders elsewhere turn sections into plain keyword
arguments (``dataclasses.asdict``), so no class reaches into the config tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from emodis_ray.typed import (
    ConfigError,
    Count,
    Fraction,
    Index,
    NonNegative,
    Positive,
    Range,
    build,
    merge,
    parse_override,
)

# The training methods, in the order reports list them, with their labels. Every other place derives
# from this one table: the type of ``method.name``, the CLI's choices, the report, the paper's grid.
METHOD_LABELS: dict[str, str] = {"stl-emotion": "STL (emotion)", "stl-speaker": "STL (speaker)",
                                 "mtl": "MTL baseline", "gr": "GR", "alt": "ALT", "conf": "CONF"}
METHODS: tuple[str, ...] = tuple(METHOD_LABELS)
BASELINE = "mtl"  # what disentangling methods are compared with
DISENTANGLING: tuple[str, ...] = ("gr", "alt", "conf")  # the methods with an adversarial aux term
DIRECTIONS: tuple[str, ...] = ("spk2emo", "emo2spk", "both")  # which aux term(s) a method attacks
MethodName = Literal[METHODS]  # type: ignore[valid-type]
Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]


class _Checked:
    """Checks every field's declared :class:`Range` and the section's :meth:`relations` on construction, so a
    config built any way (preset, file, override, :func:`replace`) is valid; the error names the key."""

    def __post_init__(self) -> None:
        section = _SECTIONS.get(type(self).__name__, type(self).__name__)
        for name, tp in typing.get_type_hints(type(self), include_extras=True).items():
            value = getattr(self, name)
            for rng in getattr(tp, "__metadata__", ()):
                if isinstance(rng, Range) and not (math.isfinite(value) and rng.holds(value)):
                    kind = "an integer" if isinstance(value, int) else "a number"
                    raise ConfigError(f"{section}.{name}: expected {kind} {rng}, got {value}")
        for key, ok, rule in self.relations():
            if not ok:
                raise ConfigError(f"{section}.{key}: {rule}")

    def relations(self) -> list[tuple[str, bool, str]]:
        """Rules between fields: (key named in the error, holds, the rule in words)."""
        return []


@dataclass(frozen=True)
class SynthConfig(_Checked):
    """How the synthetic EmoVox set is generated (docs/design.md §3.4)."""

    people: Count = 12
    clips_per_person: Count = 24
    videos_per_person: Count = 6  # clips share video ids, so video-level splits matter
    seed: Index = 0
    fps: Positive = 25.0
    size: Annotated[int, Range(ge=16)] = 64  # face crop edge in pixels (224 in the real VoxCeleb2 layout)
    sample_rate: Count = 16000
    clip_s_min: Positive = 2.0
    clip_s_max: Positive = 4.0
    short_clip_fraction: Fraction = 0.1  # clips shorter than clip_s_min, to exercise padding
    prior_skew: Fraction = 0.8  # 0: every person shares the global prior; 1: each person has one favourite emotion
    person_relative: Fraction = 0.5  # 0: absolute expression; 1: expression relative to the person's own baseline
    intensity_min: NonNegative = 0.6
    intensity_max: NonNegative = 1.0
    noise: NonNegative = 0.25  # pixel / audio noise level
    teacher_noise: NonNegative = 1.0  # std of the noise added to the teacher's per-frame logits
    # share of each person's videos in the "heard" set (val + test)
    heard_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.34
    # more heard clips per person, on videos of their own: val and test only (they cost decoding, not
    # training), so that leakage and F1 are measured on enough clips to tell methods apart
    heard_clips_per_person: Index = 0
    unheard_people: Index = 1  # extra people only in EmoVox set 2 ("unheard"), which the manifest drops
    workers: Index = 0  # 0: one Ray task per CPU; 1: no Ray at all (serial)

    def relations(self) -> list[tuple[str, bool, str]]:
        return [("clip_s_max", self.clip_s_max >= self.clip_s_min,
                 f"must be >= synth.clip_s_min ({self.clip_s_min:g}), got {self.clip_s_max:g}"),
                ("intensity_max", self.intensity_max >= self.intensity_min,
                 f"must be >= synth.intensity_min ({self.intensity_min:g}), got {self.intensity_max:g}")]


@dataclass(frozen=True)
class LabelConfig(_Checked):
    """EmoVox label rules (docs/design.md §3.3)."""

    rule: Literal["mean_softmax", "max_logit"] = "mean_softmax"
    # speakers below this percentile of clip count are dropped
    drop_percentile: Annotated[float, Range(ge=0, le=100)] = 5.0
    val_fraction: Fraction = 0.5  # share of heard *videos* that go to validation; the rest is test
    seed: Index = 0


@dataclass(frozen=True)
class FeatureConfig(_Checked):
    """One clip -> tensors (docs/design.md §4)."""

    clip_s: Positive = 12.0
    segment_s: Positive = 1.0
    hop_s: Positive = 0.5
    sample_rate: Count = 16000
    n_mels: Count = 40
    n_fft: Count = 512
    win_length: Count = 400
    hop_length: Count = 160
    face_size: Annotated[int, Range(ge=16)] = 224
    grey: bool = False
    # face tracks over raw video (VoxCeleb1): each box grows by this fraction of its size on every side, and
    # pixel boxes were measured on frames of this height (docs/design.md §3.1)
    face_margin: Annotated[float, Range(ge=0, le=2)] = 0.0
    track_ref_height: Count = 360
    # how the feature cache stores faces: JPEG at this quality (~9x smaller at the paper's 224 px), or raw
    # uint8 (tiny faces, where decoding would cost more than the bytes saved); streaming always stays raw
    face_codec: Literal["jpeg", "raw"] = "jpeg"
    face_quality: Annotated[int, Range(ge=1, le=100)] = 90

    def relations(self) -> list[tuple[str, bool, str]]:
        return [("hop_s", self.hop_s <= self.segment_s,
                 f"must be <= features.segment_s ({self.segment_s:g}), got {self.hop_s:g}"),
                ("segment_s", self.segment_s <= self.clip_s,
                 f"must be <= features.clip_s ({self.clip_s:g}), got {self.segment_s:g}"),
                ("win_length", self.win_length <= self.n_fft,
                 f"must be <= features.n_fft ({self.n_fft}), got {self.win_length}")]


@dataclass(frozen=True)
class DataConfig(_Checked):
    """Ingest and the feature cache."""

    batch_size: Count = 16
    cache_dir: str = ""  # empty: stream-decode; else a folder made by `emodis preprocess`
    max_bad_fraction: Fraction = 0.05
    decode_timeout_s: Positive = 60.0
    decode_retries: Index = 1
    rows_per_shard: Count = 256
    row_group_mb: Positive = 64.0  # a Parquet row group of the cache holds at most this many MB (one clip may exceed)
    decode_threads: Index = 0  # threads that decode JPEG faces in a CPU training worker (0: its torch threads)


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """The two-trunk multitask model (docs/design.md §5)."""

    width: Positive = 1.0  # channel multiplier of both trunks
    emo_dim: Count = 2048
    spk_dim: Count = 256
    pooling: Literal["mean", "attention"] = "mean"
    num_emotions: Annotated[int, Range(ge=2)] = 5
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    aux_hidden: Index = 0  # aux heads: 0 linear; N > 0 an MLP with one hidden layer of N units


@dataclass(frozen=True)
class MethodConfig(_Checked):
    """Training objective and disentanglement method (docs/design.md §6)."""

    name: MethodName = "mtl"
    direction: Direction = "spk2emo"
    w_em_prim: NonNegative = 0.5
    w_spk_prim: NonNegative = 0.5
    # The aux terms' weights, for every method: the aux heads' own loss and the adversarial pressure of
    # GR (times lambda), ALT and CONF alike, so the methods are compared on one scale.
    w_spk_aux: NonNegative = 0.3  # emotion predicted from the speaker embedding
    w_em_aux: NonNegative = 0.3  # identity predicted from the emotion embedding
    grl_lambda: NonNegative = 1.0
    grl_schedule: Literal["constant", "ramp"] = "constant"
    adv_steps: Count = 1  # ALT/CONF: aux-head steps per batch before the primary step
    alt_objective: Literal["ce", "entropy"] = "ce"  # ALT's adversarial term: -CE (the paper) or -entropy (label-free)


@dataclass(frozen=True)
class OptimConfig(_Checked):
    lr: Positive = 1e-4
    aux_lr: Positive = 1e-3
    lr_decay: Annotated[float, Range(gt=0, le=1)] = 0.9  # multiplicative, per epoch
    weight_decay: NonNegative = 0.0


@dataclass(frozen=True)
class TrainConfig(_Checked):
    epochs: Count = 30
    workers: Count = 1
    use_gpu: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: Index = 0
    max_failures: Index = 2
    # fault injection: a worker dies once at the start of this epoch (-1: off)
    fail_at_epoch: Annotated[int, Range(ge=-1)] = -1
    precise_bn_batches: Index = 8  # BatchNorm statistics recomputed after each epoch over its last N batches (0: off)
    # model.pt is the epoch with the best value of this reported metric; "auto": val_emo_f1, or val_spk_acc
    # for stl-speaker (which has no emotion head)
    select_metric: str = "auto"
    select_mode: Literal["max", "min"] = "max"

    def selection(self, method: str) -> str:
        """The reported metric that picks the exported epoch."""
        if self.select_metric != "auto":
            return self.select_metric
        return "val_spk_acc" if method == "stl-speaker" else "val_emo_f1"


@dataclass(frozen=True)
class EvalConfig(_Checked):
    """Leakage probes and their identity-only floor (docs/design.md §7)."""

    probe_seeds: Count = 3  # probes trained per direction (and per floor), averaged
    # share of the train rows held out to early-stop the probes
    probe_holdout: Annotated[float, Range(gt=0, lt=1)] = 0.2
    # what picks a probe's epoch on the held-out rows: their cross-entropy (steady) or the probe's score
    probe_stop: Literal["logloss", "score"] = "logloss"
    floor: Literal["shuffled", "prior"] = "shuffled"  # the floor that leakage is measured above


@dataclass(frozen=True)
class Config:
    synth: SynthConfig = field(default_factory=SynthConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, *sections: str) -> str:
        """Stable short hash of the given sections (all when none are named)."""
        d = self.to_dict()
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# section class name -> its key in Config, for error messages
_SECTIONS: dict[str, str] = {f.type if isinstance(f.type, str) else f.type.__name__: f.name
                             for f in dataclasses.fields(Config)}

PRESETS = ("tiny", "paper", "tiny-disentangled")


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    data = yaml.safe_load(resources.files("emodis_ray.configs").joinpath(f"{name}.yaml").read_text()) or {}
    return merge(preset_dict(data.pop("preset")), data) if "preset" in data else data  # a preset may extend one


def load_config(source: str | Path | None = "tiny", overrides: typing.Sequence[str] = ()) -> Config:
    """Build a config from a preset name or a YAML file, then apply dotted overrides."""
    if source is None:
        data: dict[str, Any] = {}
    elif str(source) in PRESETS:
        data = preset_dict(str(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config {source!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if "preset" in data:  # a file may extend a preset
            data = merge(preset_dict(data.pop("preset")), data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p} is not a section")
        node[parts[-1]] = value
    try:
        return build(Config, data, "")
    except TypeError as e:  # pragma: no cover - dataclass construction errors are caught above
        raise ConfigError(str(e)) from e


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """Return ``cfg`` with some fields of some sections changed, type-checked like overrides."""
    data = merge(cfg.to_dict(), sections)
    return build(Config, data, "")
