"""`emodis demo`: the main job end to end on the embedded default (a synthetic EmoVox set).

Everything runs on a local Ray cluster that the demo starts (or on ``RAY_ADDRESS``) and lands
under one folder. Steps whose output already exists are kept, so a rerun picks up where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from emodis_ray.config import Config, replace

DEMO_METHODS = ("mtl", "conf", "gr")  # the baseline, the label-free confusion loss, gradient reversal


def run_demo(out: Path, cfg: Config, address: str | None = None, layout: str = "crop") -> dict[str, Path]:
    """Synthetic EmoVox -> manifest -> feature cache -> train MTL, CONF and GR -> evaluate -> report.

    Layout under ``out``: ``data/`` (the synthetic set), ``manifest.parquet``, ``cache/``, ``runs/<method>/``,
    ``report/report.md`` and ``config.yaml``. ``layout="voxceleb1"`` writes and reads the set as VoxCeleb1 is
    distributed (face tracks over raw video, wav audio) instead of face crops.
    """
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.data.manifest import write_manifest
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.evaluation.evaluate import evaluate_run, summary_line
    from emodis_ray.evaluation.records import load_evaluation
    from emodis_ray.evaluation.report import report_runs
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.synth.generate import generate
    from emodis_ray.train.fit import fit

    out.mkdir(parents=True, exist_ok=True)
    data, manifest, cache = out / "data", out / "manifest.parquet", out / "cache"
    cfg = replace(cfg, data={"cache_dir": str(cache.resolve())})
    cfg.save(out / "config.yaml")
    t0 = time.perf_counter()
    steps = 3 + len(DEMO_METHODS) + 1
    runs = [out / "runs" / m for m in DEMO_METHODS]

    with ray_session(address):
        print(f"[1/{steps}] synthetic EmoVox ({layout} layout) -> {data}")
        if (data / "senet50-ferplus-logits.mat").exists():
            if not (data / ("raw" if layout == "voxceleb1" else "videos")).is_dir():
                raise ValueError(f"{data} holds a synthetic set in the other layout; give --out another folder")
            print("      exists, kept")
        else:
            print(f"      {generate(data, cfg.synth, layout=layout)}")

        print(f"[2/{steps}] manifest (EmoVox label rules) -> {manifest}")
        if layout == "voxceleb1":  # face tracks over the raw videos, one wav per track
            df, report = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv", data / "raw",
                                         cfg.labels, audio=data / "wav", tracks=data / "txt")
        else:
            df, report = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv",
                                         data / "videos", cfg.labels)
        write_manifest(df, manifest)
        print("      " + report.format().replace("\n", "\n      "))

        print(f"[3/{steps}] feature cache (decode once) -> {cache}")
        preprocess(manifest, cache, cfg)

        for i, (method, run) in enumerate(zip(DEMO_METHODS, runs, strict=True)):
            print(f"[{4 + i}/{steps}] train {method} with Ray Train -> {run}")
            fit(manifest, run, replace(cfg, method={"name": method}, train={"workers": 2}))  # DDP, 2 workers

        print(f"[{steps}/{steps}] evaluate (probes on frozen embeddings) and report")
        for run in runs:
            try:
                ev = load_evaluation(run)  # evaluated by an earlier call
            except (FileNotFoundError, ValueError):  # not yet, or by an older version of the measure
                ev = evaluate_run(run, manifest, progress=False)
            print("      " + summary_line(ev))
    report_path = report_runs(runs, out / "report",
                              title="emodis demo: MTL baseline vs confusion loss vs gradient reversal (one seed each)")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; open {report_path}")
    return {"data": data, "manifest": manifest, "cache": cache, "report": report_path, "config": out / "config.yaml"}
