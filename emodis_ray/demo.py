"""`emodis demo`: the main job end to end on the embedded default (a synthetic EmoVox set).

Everything runs on a local Ray cluster that the demo starts (or on ``RAY_ADDRESS``) and lands
under one folder. Steps whose output already exists are kept, so a rerun picks up where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from emodis_ray.config import Config, replace


def run_demo(out: Path, cfg: Config, address: str | None = None) -> dict[str, Path]:
    """Synthetic EmoVox -> manifest -> feature cache (-> training, evaluation, report as they land).

    Layout under ``out``: ``data/`` (the synthetic set), ``manifest.parquet``, ``cache/``, ``config.yaml``.
    """
    from emodis_ray.data import preprocess
    from emodis_ray.manifest import write_manifest
    from emodis_ray.raycluster import ray_session
    from emodis_ray.sources import emovox_manifest
    from emodis_ray.synth import generate

    out.mkdir(parents=True, exist_ok=True)
    data, manifest, cache = out / "data", out / "manifest.parquet", out / "cache"
    cfg = replace(cfg, data={"cache_dir": str(cache.resolve())})
    cfg.save(out / "config.yaml")
    t0 = time.perf_counter()
    steps = 3

    with ray_session(address):
        print(f"[1/{steps}] synthetic EmoVox -> {data}")
        if (data / "senet50-ferplus-logits.mat").exists():
            print("      exists, kept")
        else:
            print(f"      {generate(data, cfg.synth)}")

        print(f"[2/{steps}] manifest (EmoVox label rules) -> {manifest}")
        df, report = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv",
                                     data / "videos", cfg.labels)
        write_manifest(df, manifest)
        print("      " + report.format().replace("\n", "\n      "))

        print(f"[3/{steps}] feature cache (decode once) -> {cache}")
        info = preprocess(manifest, cache, cfg)

    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs under {out}/")
    return {"data": data, "manifest": manifest, "cache": info.root, "config": out / "config.yaml"}
