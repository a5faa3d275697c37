"""Evaluation on a real local Ray cluster: batch inference, probes, statistics, compare, report, predict.

The runs are trained in-process with the Ray-free engine (seconds), written in the `emodis train`
run layout, then evaluated exactly as a user's runs are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from emodis_ray.config import Config, load_config, replace
from emodis_ray.core.checkpoint import load_model
from emodis_ray.core.loop import seed_everything, train_epoch
from emodis_ray.core.methods import build_method
from emodis_ray.core.model import build_model
from emodis_ray.data.ingest import preprocess
from emodis_ray.data.labels import SPLITS
from emodis_ray.data.manifest import read_manifest, write_manifest
from emodis_ray.data.rows import collate
from emodis_ray.data.sources import emovox_manifest
from emodis_ray.evaluation.evaluate import evaluate_run
from emodis_ray.evaluation.predict import predict_clips
from emodis_ray.evaluation.report import compare_runs, report_runs
from emodis_ray.synth.generate import generate
from emodis_ray.train.run_dir import RUN_FILE

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    root = tmp_path_factory.mktemp("eval")
    cfg = load_config("tiny", ["synth.people=6", "synth.clips_per_person=14", "synth.videos_per_person=6",
                               "synth.unheard_people=0", "synth.short_clip_fraction=0.0", "synth.workers=1",
                               "synth.heard_clips_per_person=0",
                               "labels.drop_percentile=0", "train.epochs=3"])
    generate(root / "data", cfg.synth, progress=False)
    df, _ = emovox_manifest(root / "data/senet50-ferplus-logits.mat", root / "data/vox1_meta.csv",
                            root / "data/videos", cfg.labels)
    write_manifest(df, root / "manifest.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    preprocess(root / "manifest.parquet", root / "cache", cfg, progress=False)
    cfg = replace(cfg, data={"cache_dir": str(root / "cache")})
    yield root, cfg
    ray.shutdown()


def _train_run(root: Path, cfg: Config, name: str, method: str, seed: int) -> Path:
    """A small real training (engine only), saved in the `emodis train` run layout."""
    from emodis_ray.data.cache import find_cache
    from emodis_ray.data.ingest import cache_rows

    cfg = replace(cfg, method={"name": method}, train={"seed": seed})
    df = read_manifest(root / "manifest.parquet")
    rows = cache_rows(find_cache(cfg.data.cache_dir, df, cfg.features), "train").to_pandas()
    seed_everything(seed)
    kwargs = dict(num_speakers=int(df["speaker_idx"].max()) + 1, **asdict(cfg.model))
    model = build_model(**kwargs)
    m = build_method(**asdict(cfg.method))
    opt = m.optimizers(model, lr=1e-3, aux_lr=1e-3)
    batches = [collate({k: rows[k].to_numpy()[i:i + 16] for k in rows.columns}, cfg.features, train=False)
               for i in range(0, len(rows), 16)]
    for epoch in range(cfg.train.epochs):
        train_epoch(model, batches, m, opt, epoch, cfg.train.epochs, "cpu", torch.autocast("cpu", enabled=False))
    run = root / name
    run.mkdir()
    cfg.save(run / "config.yaml")
    torch.save({"model": model.state_dict(), "model_kwargs": kwargs, "num_speakers": kwargs["num_speakers"],
                "config": cfg.to_dict(), "epoch": cfg.train.epochs - 1, "metrics": {}}, run / "model.pt")
    (run / RUN_FILE).write_text(json.dumps({"manifest": str(root / "manifest.parquet")}))
    return run


def test_evaluate_compare_report(setup: tuple[Path, Config]) -> None:
    root, cfg = setup
    mtl = _train_run(root, cfg, "mtl", "mtl", seed=0)
    gr = _train_run(root, cfg, "gr", "gr", seed=1)
    ev = evaluate_run(mtl, n_boot=200, progress=False)
    df = read_manifest(root / "manifest.parquet")
    n_test = int((df["split"] == "test").sum())
    assert ev.n_test == n_test and ev.method == "mtl" and ev.spk_dim == cfg.model.spk_dim
    for est in (ev.emo_f1, ev.spk_acc, ev.probe_emo_from_spk_f1, ev.probe_spk_from_emo_acc):
        assert est is not None and 0.0 <= est.lo <= est.value <= est.hi <= 1.0
    assert 0.0 <= ev.leakage.value <= 1.0
    assert np.asarray(ev.emo_confusion).sum() == n_test
    # the figures equal a recomputation from the written per-clip predictions
    pred = pd.read_parquet(mtl / "predictions.parquet")
    assert len(pred) == n_test and set(pred["clip_id"]) == set(df.loc[df["split"] == "test", "clip_id"])
    from sklearn.metrics import f1_score

    f1 = f1_score(pred["emotion"], pred["emo_pred"], average="macro", labels=range(5), zero_division=0)
    assert ev.emo_f1.value == pytest.approx(f1)
    for f in ("evaluation.json", "evaluation.md", "confusion.png"):
        assert (mtl / f).stat().st_size > 0

    evaluate_run(gr, n_boot=200, progress=False)
    c = compare_runs(gr, mtl, n_boot=200)
    assert c.method_a == "gr" and c.method_b == "mtl"
    assert c.stuart_maxwell.singular or 0.0 <= c.stuart_maxwell.pvalue <= 1.0
    report = report_runs([mtl, gr], root / "report")
    text = report.read_text()
    assert "mtl" in text and "gr" in text.lower() and (root / "report" / "fig3b.png").exists()


def test_evaluation_sees_each_split_once(setup: tuple[Path, Config]) -> None:
    from emodis_ray.evaluation.evaluate import embed_splits

    root, cfg = setup
    run = root / "mtl" if (root / "mtl").exists() else _train_run(root, cfg, "mtl", "mtl", seed=0)
    emb = embed_splits(run, root / "manifest.parquet", cfg)
    df = read_manifest(root / "manifest.parquet")
    ids = {s: set(emb[s]["clip_id"]) for s in SPLITS}
    for s in SPLITS:
        assert ids[s] == set(df.loc[df["split"] == s, "clip_id"])
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    # embeddings from Ray Data batch inference equal the model run in-process
    model, _ = load_model(run / "model.pt")
    assert emb["test"]["emo_emb"].shape[1] == cfg.model.emo_dim
    assert emb["test"]["spk_emb"].shape[1] == cfg.model.spk_dim
    assert model.training is False


def test_predict_on_a_folder_reports_bad_clips(setup: tuple[Path, Config]) -> None:
    root, cfg = setup
    run = root / "mtl" if (root / "mtl").exists() else _train_run(root, cfg, "mtl", "mtl", seed=0)
    videos = root / "new"
    videos.mkdir()
    src = sorted((root / "data/videos").rglob("*.mp4"))[:3]
    for i, p in enumerate(src):
        (videos / f"clip{i}.mp4").write_bytes(p.read_bytes())
    (videos / "broken.mp4").write_bytes(src[0].read_bytes()[:500])
    out = predict_clips(run, root / "pred.parquet", videos=videos)
    assert sorted(out["clip_id"]) == ["clip0", "clip1", "clip2"]
    probs = out[[c for c in out.columns if c.startswith("p_")]].to_numpy()
    assert probs.shape == (3, 5) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert len(out["emo_emb"][0]) == cfg.model.emo_dim
    bad = pd.read_csv(root / "pred.bad_clips.csv")
    assert list(bad["clip_id"]) == ["broken"] and bad["reason"][0] == "unreadable"
