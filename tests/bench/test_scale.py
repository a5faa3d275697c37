"""`emodis bench scale` pieces that need no Ray: the grown synthetic configs, the peak sampler and the
metadata-only manifest. The whole benchmark is the command itself (README, docs/design.md §9)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from emodis_ray.bench.scale import STAGES, PeakSampler, ScaleBench, marginal, metadata_manifest, scaled_synth
from emodis_ray.config import load_config
from emodis_ray.synth.generate import sample_labels


@pytest.mark.parametrize("clips", [500, 2000, 8000])
def test_scaled_sets_grow_the_data_not_the_people(clips: int) -> None:
    base = load_config("tiny").synth
    cfg = scaled_synth(base, clips)
    table = sample_labels(cfg)
    heard_people = table[table["set"] != 2]
    assert abs(len(heard_people) - clips) <= 0.02 * clips
    assert heard_people["person"].nunique() == base.people  # the model's identity head keeps its size
    ratio = cfg.heard_clips_per_person / cfg.clips_per_person  # val+test stay in proportion to train
    assert ratio == pytest.approx(base.heard_clips_per_person / base.clips_per_person, rel=0.05)


def test_peak_sampler_sees_the_drivers_memory() -> None:
    import ray  # noqa: F401  (psutil is Ray's own copy)

    with PeakSampler(interval=0.05) as before:
        time.sleep(0.2)
    with PeakSampler(interval=0.05) as during:
        block = np.ones(300 * 2**20, np.uint8)  # 300 MB touched
        time.sleep(0.3)
        del block
    assert during.driver - before.driver >= 250
    assert during.store == 0.0  # no Ray up: no object store


def test_metadata_manifest_builds_writes_and_validates(tmp_path: Path) -> None:
    m = metadata_manifest(1500, tmp_path, load_config("tiny"))
    assert m["entries"] == 1500 and 0.9 * 1500 <= m["rows"] <= 1500
    assert all(m[k] > 0 for k in ("mat_s", "build_s", "write_s", "read_s"))
    assert (tmp_path / "manifest.parquet").exists() and not (tmp_path / "videos").exists()


def size(n: int, ms: float, fixed_s: float = 0.0) -> dict:
    """A measured size whose every stage costs ``fixed_s`` plus ``ms`` per clip."""
    per = {k: ms + 1e3 * fixed_s / n for k in (*STAGES, "synth", "train_steady")}
    return {"clips": n, "ms_per_clip": per | {"pipeline": sum(per[k] for k in STAGES)},
            "seconds": {k: fixed_s + ms * n / 1e3 for k in STAGES}, "driver_peak_mb": 500.0,
            "worker_peak_mb": 800.0, "store_peak_mb": 10.0}


def test_marginal_cost_cancels_the_fixed_start_ups() -> None:
    steps = marginal([size(500, 10.0, fixed_s=30.0), size(2000, 10.0, fixed_s=30.0), size(8000, 10.0, 30.0)])
    assert [(a, b) for a, b, _ in steps] == [(500, 2000), (2000, 8000)]
    for _, _, m in steps:  # 10 ms per clip and stage, whatever the start-ups
        assert m["preprocess"] == pytest.approx(10.0) and m["pipeline"] == pytest.approx(10.0 * len(STAGES))


def test_report_shows_each_size_and_the_ratios() -> None:
    res = ScaleBench(cpus=2, config="x", sizes=[size(500, 10.0), size(8000, 12.0)], ratios={"pipeline": 1.2})
    text = res.format()
    assert "    500" in text and "   8000" in text and "pipeline = 1.20" in text
    assert "500 ->  8000" in text
