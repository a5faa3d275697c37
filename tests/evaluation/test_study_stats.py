"""The study's statistics on runs built from synthetic predictions: the hierarchical interval narrows with more
seeds and more test clips, a real difference is detected, none is claimed where there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.evaluation import noisy

from emodis_ray.core.scores import accuracy, macro_f1
from emodis_ray.evaluation.leakage import above_floor
from emodis_ray.evaluation.records import build_evaluation
from emodis_ray.evaluation.study import RunData, hierarchical_diffs, markdown, summarise, write


def fake_run(seed: int, n: int, leak_keep: float, arm_seed: int, probe_seeds: int = 3) -> RunData:
    """A run on ``n`` test clips whose speaker-embedding probe recovers the emotion with probability
    ``leak_keep`` (plus the seed's own noise), beside a shuffled floor that recovers it with 0.2."""
    rng = np.random.default_rng([arm_seed, seed])
    emo = np.random.default_rng(1).choice(5, n, p=[0.4, 0.2, 0.2, 0.1, 0.1])
    spk = np.random.default_rng(2).integers(0, 8, n)
    keep = np.clip(leak_keep + rng.normal(0, 0.03), 0, 1)  # training-seed noise
    probe = np.stack([noisy(emo, 5, keep, 100 * seed + s) for s in range(probe_seeds)])
    shuffled = np.stack([noisy(emo, 5, 0.2, 200 * seed + s) for s in range(probe_seeds)])
    sp_probe = np.stack([noisy(spk, 8, 0.1, 300 * seed + s) for s in range(probe_seeds)])
    sp_shuf = np.stack([noisy(spk, 8, 0.1, 400 * seed + s) for s in range(probe_seeds)])

    def direction(y, p, sh, metric):  # noqa: ANN001, ANN202
        score = (lambda a: macro_f1(y, a)) if metric == "f1" else (lambda a: accuracy(y, a))
        pr, fl = float(np.mean([score(a) for a in p])), float(np.mean([score(a) for a in sh]))
        return {"probe": pr, "floor": fl, "floor_shuffled": fl, "floor_prior": fl, "floor_kind": "shuffled",
                "chance": 0.1, "above_floor": above_floor(pr, fl)}

    de, ds = direction(emo, probe, shuffled, "f1"), direction(spk, sp_probe, sp_shuf, "acc")
    leak = {"targets": ["emo_from_spk"], "headline": de["above_floor"],
            "directions": {"emo_from_spk": de, "spk_from_emo": ds}}
    emo_pred, spk_pred = noisy(emo, 5, 0.6, 500 + seed), noisy(spk, 8, 0.8, 600 + seed)
    ev = build_evaluation(f"run{seed}", "mtl", 64, emo, spk, emo_pred, spk_pred, leak, n_boot=50)
    ids = np.asarray([f"c{i:05d}" for i in range(n)])
    return RunData(seed=seed, run=Path(f"run{seed}"), evaluation=ev, clip_id=ids, emotion=emo, speaker=spk,
                   emo_pred=emo_pred, spk_pred=spk_pred,
                   leak={"emo_from_spk": {"y": emo, "probe": probe, "shuffled": shuffled, "prior": shuffled[0]},
                         "spk_from_emo": {"y": spk, "probe": sp_probe, "shuffled": sp_shuf, "prior": sp_shuf[0]}})


def arms(seeds: int, n: int, b_keep: float) -> dict[str, list[RunData]]:
    return {"a": [fake_run(s, n, 0.5, 1) for s in range(seeds)], "b": [fake_run(s, n, b_keep, 2) for s in range(seeds)]}


def width(d: list[float]) -> float:
    return d[2] - d[1]


def test_interval_narrows_as_seeds_and_test_clips_grow() -> None:
    small = hierarchical_diffs(arms(3, 150, 0.5), n_boot=400)["b"]["d_leak_emo_from_spk_above_floor"]
    more_clips = hierarchical_diffs(arms(3, 1200, 0.5), n_boot=400)["b"]["d_leak_emo_from_spk_above_floor"]
    more_both = hierarchical_diffs(arms(8, 1200, 0.5), n_boot=400)["b"]["d_leak_emo_from_spk_above_floor"]
    assert width(more_clips) < width(small) and width(more_both) < width(more_clips)
    for d in (small, more_clips, more_both):
        assert d[1] <= 0 <= d[2]  # the same leakage in both arms: no detectable difference


def test_a_real_difference_is_detected_with_its_sign() -> None:
    d = hierarchical_diffs(arms(5, 600, 0.25), n_boot=400)["b"]
    est, lo, hi = d["d_leak_emo_from_spk_above_floor"]
    assert hi < 0 and lo <= est <= hi  # arm b leaks less than arm a, and the interval says so
    assert d["d_emo_f1"][1] <= 0 <= d["d_emo_f1"][2]  # the primary head is no different


def test_runs_on_other_clips_are_refused() -> None:
    a = arms(2, 100, 0.5)
    a["b"][0].clip_id = a["b"][0].clip_id[::-1].copy()
    with pytest.raises(ValueError, match="same test clips"):
        hierarchical_diffs(a, n_boot=10)


def test_summary_has_the_documented_shape_and_writes_its_files(tmp_path: Path) -> None:
    study = summarise(arms(3, 200, 0.25), {"a": {"method": {"name": "mtl"}}, "b": {}}, n_boot=100)
    seed = study["arms"]["a"]["seeds"][0]
    for key in ("seed", "emo_f1", "spk_acc", "probe_emo_from_spk_f1", "floor_shuffled_emo_from_spk_f1",
                "floor_prior_emo_from_spk_f1", "leak_emo_from_spk_above_floor"):
        assert key in seed
    assert study["arms"]["a"]["config"] == {"method": {"name": "mtl"}}
    assert set(study["arms"]["b"]["mean"]) == set(study["arms"]["b"]["sd"])
    for key in ("d_leak_emo_from_spk_above_floor", "d_emo_f1", "d_spk_acc"):
        est, lo, hi = study["vs_first"]["b"][key]
        assert lo <= est <= hi or not np.isfinite(lo)
    assert [x["seed"] for x in study["stuart_maxwell"]["b"]] == [0, 1, 2]
    paths = write(tmp_path, study)
    assert all(p.is_file() for p in paths.values())
    text = markdown(study)
    assert "Against a" in text and "hierarchical bootstrap" in text
