"""`emodis study` end to end on a real local Ray cluster: two arms trained, evaluated, compared, then screened
over three seeds on the first run's frozen trunk;
the study folder has the documented shape; a second call trains nothing; a bad arm is refused before Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from emodis_ray.config import load_config
from emodis_ray.data.ingest import preprocess
from emodis_ray.data.manifest import write_manifest
from emodis_ray.data.sources import emovox_manifest
from emodis_ray.synth.generate import generate
from emodis_ray.workflows.study import parse_arms, run_study

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study")
    cfg = load_config("tiny", ["synth.people=4", "synth.clips_per_person=10", "synth.videos_per_person=4",
                               "synth.unheard_people=0", "synth.short_clip_fraction=0.0", "synth.workers=1",
                               "synth.heard_clips_per_person=8", "labels.drop_percentile=0", "train.epochs=2",
                               "model.width=0.125", "evaluation.probe_seeds=2", f"data.cache_dir={root / 'cache'}"])
    generate(root / "data", cfg.synth, progress=False)
    df, _ = emovox_manifest(root / "data/senet50-ferplus-logits.mat", root / "data/vox1_meta.csv",
                            root / "data/videos", cfg.labels)
    write_manifest(df, root / "manifest.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        preprocess(root / "manifest.parquet", root / "cache", cfg, progress=False)
        arms = parse_arms(["mtl", "conf"], cfg)
        run_study(root / "manifest.parquet", root / "out", arms, [0], n_boot=100, progress=False)
        t0 = time.perf_counter()
        run_study(root / "manifest.parquet", root / "out", arms, [0], n_boot=100, progress=False)
        (root / "again_s.txt").write_text(str(time.perf_counter() - t0))
        run_study(root / "manifest.parquet", root / "screen", arms, [0, 1, 2], n_boot=100, progress=False,
                  frozen_trunk=root / "out" / "runs" / "mtl" / "seed0")
    finally:
        ray.shutdown()
    return root, root / "out"


def test_every_arm_and_seed_is_trained_evaluated_and_compared(study: tuple[Path, Path]) -> None:
    root, out = study
    s = json.loads((out / "study.json").read_text())
    assert list(s["arms"]) == ["mtl", "conf"] and s["protocol"] == "end to end"
    for arm in ("mtl", "conf"):
        seeds = s["arms"][arm]["seeds"]
        assert [x["seed"] for x in seeds] == [0] and all(x["n_test"] == s["n_test"] > 0 for x in seeds)
        for x in seeds:
            assert 0 <= x["leak_emo_from_spk_above_floor"] <= 1 and 0 <= x["floor_shuffled_emo_from_spk_f1"] <= 1
        assert s["arms"][arm]["config"]["method"]["name"] == arm
    est, lo, hi = s["vs_first"]["conf"]["d_leak_emo_from_spk_above_floor"]
    assert lo <= hi
    assert len(s["stuart_maxwell"]["conf"]) == 1
    assert (out / "study.md").is_file() and (out / "study.png").is_file()
    assert (out / "runs" / "conf" / "seed0" / "model.pt").is_file()


def test_a_second_call_trains_and_evaluates_nothing(study: tuple[Path, Path]) -> None:
    root, out = study
    for arm in ("mtl", "conf"):
        for seed in (0,):
            reports = (out / "runs" / arm / f"seed{seed}" / "reports.jsonl").read_text().splitlines()
            assert len(reports) == 2  # two epochs, each reported once: nothing was trained again
    assert float((root / "again_s.txt").read_text()) < 60


def test_a_bad_arm_is_refused_before_ray_starts(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "emodis_ray.cli", "study", "--manifest", "m.parquet", "--out",
                          str(tmp_path / "s"), "--arm", "mtl", "--arm", "nope"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "--arm 'nope'" in res.stderr and "Traceback" not in res.stderr
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "s").exists()


def test_the_frozen_trunk_screen_is_a_labelled_study_of_its_own(study: tuple[Path, Path]) -> None:
    root, _ = study
    s = json.loads((root / "screen" / "study.json").read_text())
    assert s["screen"] is True and s["protocol"] == "frozen-trunk screen"
    assert "frozen-trunk screen" in (root / "screen" / "study.md").read_text()
    for arm in ("mtl", "conf"):
        assert [x["seed"] for x in s["arms"][arm]["seeds"]] == [0, 1, 2]
        assert all(0 <= x["leak_emo_from_spk_above_floor"] <= 1 for x in s["arms"][arm]["seeds"])
    # different seeds train different heads on the same fixed features
    assert len({x["emo_f1"] for x in s["arms"]["mtl"]["seeds"]}) > 1
    assert (root / "screen" / "trunk_features.npz").is_file()
    assert not (root / "screen" / "runs" / "mtl" / "seed0" / "checkpoints").exists()  # no Ray Train run

