"""Config: presets load, overrides are typed, unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emodis_ray.config import PRESETS, Config, ConfigError, load_config, replace


@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_preset_loads(preset: str) -> None:
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert cfg.features.hop_s <= cfg.features.segment_s <= cfg.features.clip_s


def test_tiny_is_small_and_paper_matches_the_paper() -> None:
    tiny, paper = load_config("tiny"), load_config("paper")
    assert tiny.model.width < 1 and tiny.features.face_size <= 64
    assert paper.model.emo_dim == 2048 and paper.features.face_size == 224
    assert paper.features.clip_s == 12.0 and paper.model.spk_dim in (2048, 256, 64)
    assert (paper.method.w_em_prim, paper.method.w_spk_prim) == (0.5, 0.5)
    assert (paper.method.w_spk_aux, paper.method.w_em_aux) == (0.3, 0.3)


def test_dotted_override_is_parsed_and_typed() -> None:
    cfg = load_config("tiny", ["model.spk_dim=32", "optim.lr=3e-4", "method.name=gr", "train.use_gpu=true"])
    assert cfg.model.spk_dim == 32 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.method.name == "gr" and cfg.train.use_gpu is True
    # an int where a float is expected is accepted and becomes a float
    assert isinstance(load_config("tiny", ["optim.lr=1"]).optim.lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.spk_dimm=32", "unknown key in model.: model.spk_dimm"),
        ("modell.spk_dim=32", "unknown key: modell"),
        ("model.spk_dim=big", "model.spk_dim: expected an integer"),
        ("model.spk_dim=3.5", "model.spk_dim: expected an integer"),
        ("method.name=magic", "method.name: 'magic' is not one of"),
        ("train.use_gpu=1", "train.use_gpu: expected true/false"),
        ("train.precise_bn_batches=-1", "train.precise_bn_batches: expected an integer >= 0"),
        ("spk_dim=32", "SECTION.NAME"),
        ("model.spk_dim", "KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("tiny", [override])


def test_yaml_file_extends_a_preset_and_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"preset": "tiny", "model": {"spk_dim": 16}}))
    cfg = load_config(f)
    assert cfg.model.spk_dim == 16 and cfg.model.width == load_config("tiny").model.width
    cfg.save(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_unknown_source_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_hash_changes_with_the_named_section_only() -> None:
    a = load_config("tiny")
    b = replace(a, model={"spk_dim": 8})
    assert a.hash("features") == b.hash("features")
    assert a.hash("model") != b.hash("model")
    assert a.hash() != b.hash()


# --- ranges: declared once next to each field, checked however a config is built ------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.workers=0", "train.workers: expected an integer >= 1, got 0"),
        ("train.epochs=0", "train.epochs: expected an integer >= 1, got 0"),
        ("data.batch_size=0", "data.batch_size: expected an integer >= 1, got 0"),
        ("data.rows_per_shard=0", "data.rows_per_shard: expected an integer >= 1, got 0"),
        ("data.max_bad_fraction=-1", "data.max_bad_fraction: expected a number >= 0 and <= 1, got -1"),
        ("data.decode_timeout_s=0", "data.decode_timeout_s: expected a number > 0"),
        ("features.hop_s=0", "features.hop_s: expected a number > 0"),
        ("features.hop_s=5", "features.hop_s: must be <= features.segment_s"),
        ("features.segment_s=20", "features.segment_s: must be <= features.clip_s"),
        ("features.win_length=1024", "features.win_length: must be <= features.n_fft"),
        ("model.num_emotions=1", "model.num_emotions: expected an integer >= 2"),
        ("model.dropout=1.0", "model.dropout: expected a number >= 0 and < 1"),
        ("method.w_spk_aux=-0.1", "method.w_spk_aux: expected a number >= 0"),
        ("method.adv_steps=0", "method.adv_steps: expected an integer >= 1"),
        ("optim.lr=0", "optim.lr: expected a number > 0"),
        ("optim.lr_decay=1.5", "optim.lr_decay: expected a number > 0 and <= 1"),
        ("optim.lr=.nan", "optim.lr: expected a finite number"),
        ("optim.aux_lr=.inf", "optim.aux_lr: expected a finite number"),
        ("synth.people=0", "synth.people: expected an integer >= 1"),
        ("synth.clip_s_min=5", "synth.clip_s_max: must be >= synth.clip_s_min"),
        ("labels.drop_percentile=101", "labels.drop_percentile: expected a number >= 0 and <= 100"),
        ("evaluation.probe_holdout=1", "evaluation.probe_holdout: expected a number > 0 and < 1"),
        ("train.fail_at_epoch=-2", "train.fail_at_epoch: expected an integer >= -1"),
    ],
)
def test_out_of_range_values_are_errors_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        load_config("tiny", [override])


def test_every_numeric_field_declares_its_range() -> None:
    import dataclasses
    import typing

    from emodis_ray.config import Range

    missing = []
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(section.default_factory, include_extras=True)  # type: ignore[arg-type]
        for name, tp in hints.items():
            base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
            if base in (int, float) and not any(isinstance(m, Range) for m in getattr(tp, "__metadata__", ())):
                missing.append(f"{section.name}.{name}")
    assert not missing, f"numeric fields without a declared range: {missing}"


def test_ranges_hold_for_replace_and_direct_construction_too() -> None:
    from emodis_ray.config import DataConfig

    with pytest.raises(ConfigError, match="^data.batch_size: "):
        replace(load_config("tiny"), data={"batch_size": 0})
    with pytest.raises(ConfigError, match="^data.rows_per_shard: "):
        DataConfig(rows_per_shard=0)
    assert DataConfig(rows_per_shard=1).rows_per_shard == 1  # the bound itself is valid


def test_tiny_disentangled_is_tiny_with_the_searched_method() -> None:
    """The search's winner ships as a preset that extends tiny: same data, features and training length."""
    tiny, dis = load_config("tiny"), load_config("tiny-disentangled")
    for section in ("synth", "labels", "features", "data", "train", "evaluation"):
        assert getattr(dis, section) == getattr(tiny, section), section
    assert dis.method.name == "conf" and dis.method != tiny.method and dis.model.spk_dim == 128
