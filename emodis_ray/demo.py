"""`emodis demo`: the main job end to end on the embedded default (a synthetic EmoVox set)."""

from __future__ import annotations

import time
from pathlib import Path

from emodis_ray.config import Config


def run_demo(out: Path, cfg: Config) -> dict[str, Path]:
    """Write a synthetic set, build its manifest, and say where everything is.

    Layout under ``out``: ``data/`` (the synthetic EmoVox), ``manifest.parquet``, ``config.yaml``.
    Steps whose output already exists are skipped, so a rerun is cheap.
    """
    from emodis_ray.manifest import emovox_manifest, write_manifest
    from emodis_ray.synth import generate

    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    data = out / "data"
    manifest = out / "manifest.parquet"
    t0 = time.perf_counter()

    print("[1/2] synthetic EmoVox")
    if (data / "senet50-ferplus-logits.mat").exists():
        print(f"      {data} exists, kept")
    else:
        print(generate(data, cfg.synth))

    print("[2/2] manifest (EmoVox label rules)")
    df, report = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv",
                                 data / "videos", cfg.labels)
    write_manifest(df, manifest)
    print(report.format())

    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs under {out}/")
    return {"data": data, "manifest": manifest, "config": out / "config.yaml"}
