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
