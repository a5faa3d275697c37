"""`emodis bench scale`: how the cost of the whole pipeline grows with the data.

For each size, a synthetic set of about that many clips goes through the pipeline a user runs: synth ->
manifest -> preprocess (the feature cache) -> one training epoch (Ray Train, with validation) -> evaluate
(embeddings and leakage probes). Every stage is timed; a sampler thread records the peak RSS of this driver and
of the Ray worker processes, and the peak object-store use, per size. The sets grow in clips per person and
videos per person with the same people, so the model, its heads and the probes stay the same size: what grows
is only the data (docs/design.md §9). A second part builds the manifest of a metadata-only EmoVox table of
150k clips (no videos) and validates it, timing each step.

The ratio of the pipeline's time per clip at the largest size to the smallest (target <= 1.3x) flatters growth:
fixed start-ups (Ray Train, Ray Data) weigh most on the smallest set. The figure to read is the marginal cost of
an added clip between consecutive sizes (:func:`marginal`), where the start-ups cancel out.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emodis_ray.config import Config, SynthConfig, replace

STAGES = ("manifest", "preprocess", "epoch", "evaluate")  # the pipeline a user runs (synth is timed apart)
MB = 2**20


@dataclass
class ScaleBench:
    cpus: int
    config: str
    sizes: list[dict[str, Any]] = field(default_factory=list)  # one row per size, in order
    metadata: dict[str, Any] = field(default_factory=dict)  # the metadata-only manifest
    ratios: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"scale benchmark: {self.cpus} CPUs ({self.config}); ms per clip of each stage", "",
                 f"{'clips':>7}{'synth':>8}" + "".join(f"{s:>11}" for s in STAGES) + f"{'pipeline':>10}"
                 f"{'train/clip':>11}{'driver MB':>10}{'worker MB':>10}{'w. USS MB':>10}{'w. own MB':>10}"
                 f"{'store MB':>9}"]
        for r in self.sizes:
            ms = r["ms_per_clip"]
            lines.append(f"{r['clips']:>7}{ms['synth']:>8.0f}" + "".join(f"{ms[s]:>11.1f}" for s in STAGES)
                         + f"{ms['pipeline']:>10.1f}{ms['train_steady']:>11.1f}{r['driver_peak_mb']:>10.0f}"
                         f"{r['worker_peak_mb']:>10.0f}{r.get('worker_uss_peak_mb', 0):>10.0f}"
                         f"{r.get('worker_own_peak_mb', 0):>10.0f}"
                         f"{r['store_peak_mb']:>9.0f}")
        lines += ["", "w. USS: the largest worker's private memory; w. own: the same less the object-store pages "
                      "it alone still maps (the store's, bounded by its capacity)"]
        lines += ["largest worker (RSS, then private memory) at each size: " + "; ".join(
            f"{r['clips']}: {r.get('worker_peak_name', '?')}, {r.get('worker_uss_peak_name', '?')}"
            for r in self.sizes)]
        if self.metadata:
            m = self.metadata
            lines += ["", f"metadata-only manifest of {m['entries']} entries: .mat written in {m['mat_s']:.1f} s; "
                          f"read, label rules and splits {m['build_s']:.1f} s; written {m['write_s']:.1f} s; "
                          f"read back and validated {m['read_s']:.1f} s; {m['rows']} rows kept; "
                          f"driver peak {m['driver_peak_mb']:.0f} MB"]
        steps = marginal(self.sizes)
        if steps:
            lines += ["", "marginal ms per added clip (the fixed start-ups cancel out):"]
            lines += [f"  {a:>5} -> {b:>5}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()) for a, b, m in steps]
        if self.ratios:
            lines += ["", "ratios, largest / smallest size (target <= 1.3): "
                      + ", ".join(f"{k} = {v:.2f}" for k, v in self.ratios.items())]
        return "\n".join(lines)


def marginal(sizes: Sequence[dict[str, Any]]) -> list[tuple[int, int, dict[str, float]]]:
    """Between consecutive sizes, the ms each added clip cost per stage and in the whole pipeline: what the
    growth costs once every fixed start-up is paid (flat cost per clip = the same figure at every step)."""
    out = []
    for lo, hi in itertools.pairwise(sizes):
        dn = hi["clips"] - lo["clips"]
        m = {k: 1e3 * (hi["seconds"][k] - lo["seconds"][k]) / dn for k in STAGES}
        out.append((lo["clips"], hi["clips"], {**m, "pipeline": sum(m.values())}))
    return out


class PeakSampler:
    """Peak RSS of this process and of every Ray worker process (``ray::`` in its name), and peak object-store
    use, sampled every ``interval`` seconds on a thread while in use as a context manager.

    RSS counts the object-store pages a process has mapped (a worker reading a block zero-copy, the store's
    shared memory): the store's bytes show once per reader. So the largest worker's private memory (USS: pages no
    other process shares) is sampled too, every 4th sample, with the name of the worker at each peak."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.driver = self.worker = self.workers_total = self.store = 0.0
        self.worker_uss = self.worker_uss_store = self.worker_own = 0.0
        self.worker_name = self.worker_uss_name = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(store=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            self._sample(store=n % 4 == 0)  # the object-store figure is an RPC: every 4th sample
            n += 1

    def _sample(self, store: bool) -> None:
        import psutil  # Ray's own copy (ray/thirdparty_files) once ray is imported

        self.driver = max(self.driver, psutil.Process().memory_info().rss / MB)
        total = 0.0
        for p in psutil.process_iter(["name", "memory_info"]):
            name, mem = p.info.get("name") or "", p.info.get("memory_info")
            if name.startswith("ray::") and mem is not None:
                total += mem.rss / MB
                if mem.rss / MB > self.worker:
                    self.worker, self.worker_name = mem.rss / MB, name
                if store:
                    try:
                        uss, in_store = private_mb(p)
                    except (psutil.Error, OSError):  # the worker exited meanwhile
                        continue
                    if uss > self.worker_uss:
                        self.worker_uss, self.worker_uss_store, self.worker_uss_name = uss, in_store, name
                    self.worker_own = max(self.worker_own, uss - in_store)
        self.workers_total = max(self.workers_total, total)
        if store:
            self.store = max(self.store, object_store_used_mb())


def private_mb(p: Any) -> tuple[float, float]:
    """A process's private memory (USS: pages no other process maps) in MB, and the part of it that lies in the
    object store's shared-memory file: store pages this process was the last one left to map (a reader of a block
    whose writer has exited). Those pages are the store's, bounded by its capacity, not the process's own."""
    uss = in_store = 0
    for m in p.memory_maps(grouped=True):
        private = m.private_clean + m.private_dirty
        uss += private
        if "plasma" in m.path:
            in_store += private
    return uss / MB, in_store / MB


def object_store_used_mb() -> float:
    """The cluster's object-store use in MB (Ray's memory summary), or 0 when no Ray is up."""
    import ray

    if not ray.is_initialized():
        return 0.0
    from ray._private.internal_api import memory_summary

    try:
        text = memory_summary(stats_only=True)
    except Exception:  # the summary is best effort: a busy raylet may not answer
        return 0.0
    m = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", text)
    return float(m.group(1)) if m else 0.0


def scaled_synth(base: SynthConfig, clips: int) -> SynthConfig:
    """``base`` grown (or shrunk) to about ``clips`` manifest clips: the same people, with clips per person,
    heard clips per person and videos per person scaled by one factor."""
    per_person = base.clips_per_person + base.heard_clips_per_person
    f = clips / (base.people * per_person)
    return dataclasses.replace(base, clips_per_person=max(6, round(base.clips_per_person * f)),
                               heard_clips_per_person=round(base.heard_clips_per_person * f),
                               videos_per_person=max(base.videos_per_person if f >= 1 else 6,
                                                     round(base.videos_per_person * f)))


@contextmanager
def _timed(into: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t0


def measure_size(clips: int, work: Path, cfg: Config, say: Callable[..., object]) -> dict[str, Any]:
    """One size through synth -> manifest -> preprocess -> one epoch -> evaluate, inside the running Ray."""
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.data.manifest import write_manifest
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.evaluation.evaluate import evaluate_run
    from emodis_ray.synth.generate import generate
    from emodis_ray.train.fit import fit

    work.mkdir(parents=True, exist_ok=True)
    data, manifest, cache, run = work / "data", work / "manifest.parquet", work / "cache", work / "run"
    cfg = replace(cfg, synth=asdict(scaled_synth(cfg.synth, clips)), data={"cache_dir": str(cache)},
                  train={"epochs": 1})
    s: dict[str, float] = {}
    with PeakSampler() as mem:
        with _timed(s, "synth"):
            if not (data / "senet50-ferplus-logits.mat").exists():
                generate(data, cfg.synth, progress=False)
        with _timed(s, "manifest"):
            df, _ = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv", data / "videos",
                                    cfg.labels)
            write_manifest(df, manifest)
        say(f"  {len(df)} clips: synth {s['synth']:.0f} s; preprocess ...")
        with _timed(s, "preprocess"):
            preprocess(manifest, cache, cfg, progress=False)
        say("  one training epoch ...")
        with _timed(s, "epoch"):
            res = fit(manifest, run, cfg, progress=False)
        say("  evaluate ...")
        with _timed(s, "evaluate"):
            evaluate_run(run, manifest, progress=False)
    n = len(df)
    ep = res.metrics[-1]
    ms = {k: 1e3 * v / n for k, v in s.items()}
    ms["pipeline"] = sum(ms[k] for k in STAGES)
    ms["train_steady"] = 1e3 * ep["train_epoch_time_s"] / max(1.0, ep["train_clips"])
    say(f"  {n} clips: pipeline {ms['pipeline']:.1f} ms per clip ({sum(s[k] for k in STAGES):.0f} s)")
    return {"clips": n, "splits": {k: int(v) for k, v in df["split"].value_counts().items()},
            "seconds": s, "ms_per_clip": ms, "train_clips": int(ep["train_clips"]),
            "driver_peak_mb": mem.driver, "worker_peak_mb": mem.worker, "workers_total_peak_mb": mem.workers_total,
            "worker_peak_name": mem.worker_name, "worker_uss_peak_mb": mem.worker_uss,
            "worker_uss_peak_name": mem.worker_uss_name, "worker_uss_store_mb": mem.worker_uss_store,
            "worker_own_peak_mb": mem.worker_own,
            "store_peak_mb": mem.store, "synth": asdict(cfg.synth)}


def metadata_manifest(entries: int, work: Path, cfg: Config) -> dict[str, Any]:
    """A metadata-only EmoVox table of about ``entries`` clips (the ``.mat`` and meta, no videos) through the
    manifest builder, written, read back and validated; seconds per step and the driver's peak RSS."""
    from emodis_ray.data.labels import FERPLUS_CLASSES
    from emodis_ray.data.manifest import read_manifest, validate, write_manifest
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.synth.generate import sample_labels, write_tables

    per_person = 125  # about VoxCeleb1's clips per person
    synth = SynthConfig(people=max(1, entries // per_person), clips_per_person=per_person, videos_per_person=18,
                        unheard_people=0, heard_fraction=0.34, seed=cfg.synth.seed)
    work.mkdir(parents=True, exist_ok=True)
    s: dict[str, float] = {}
    with PeakSampler() as mem:
        with _timed(s, "mat_s"):
            table = sample_labels(synth)
            rng = np.random.default_rng(0)
            logits = {}
            for i, emo, frames in zip(table.clip_index, table.true_emotion, table.frames, strict=True):
                lg = rng.normal(size=(math.ceil(frames / 6), len(FERPLUS_CLASSES))).astype(np.float32)
                lg[:, FERPLUS_CLASSES.index(emo)] += 2.0
                logits[int(i)] = lg
            write_tables(work, synth, table, logits)
        with _timed(s, "build_s"):
            df, _ = emovox_manifest(work / "senet50-ferplus-logits.mat", work / "vox1_meta.csv", work / "videos",
                                    cfg.labels)
        with _timed(s, "write_s"):
            write_manifest(df, work / "manifest.parquet")
        with _timed(s, "read_s"):
            validate(read_manifest(work / "manifest.parquet"))
    return {"entries": len(table), "rows": len(df), **s, "driver_peak_mb": mem.driver}


def bench_scale(sizes: Sequence[int], cfg: Config, workdir: Path, metadata_entries: int = 150_000,
                say: Callable[..., object] = print) -> ScaleBench:
    from emodis_ray.runtime.session import cluster_cpus, ray_session

    res = ScaleBench(cpus=0, config=f"{cfg.synth.people} people, face {cfg.features.face_size} px, "
                                    f"{cfg.train.workers} train worker(s)")
    with ray_session():
        res.cpus = int(cluster_cpus())
        for n in sorted(sizes):
            say(f"size {n} ...")
            res.sizes.append(measure_size(n, workdir / f"size-{n}", cfg, say))
            write_json(res, workdir / "scale.json")  # what is measured so far survives a stopped run
    if metadata_entries:
        say(f"metadata-only manifest of {metadata_entries} entries ...")
        res.metadata = metadata_manifest(metadata_entries, workdir / "metadata", cfg)
    if len(res.sizes) > 1:
        lo, hi = res.sizes[0], res.sizes[-1]
        res.ratios = {k: hi["ms_per_clip"][k] / lo["ms_per_clip"][k] for k in ("pipeline", *STAGES, "train_steady")}
        steps = marginal(res.sizes)
        res.ratios["marginal_pipeline"] = steps[-1][2]["pipeline"] / steps[0][2]["pipeline"] if len(steps) > 1 \
            else math.nan
        res.ratios["driver_peak"] = hi["driver_peak_mb"] / lo["driver_peak_mb"]
        res.ratios["worker_peak"] = hi["worker_peak_mb"] / lo["worker_peak_mb"]
        res.ratios["worker_uss_peak"] = hi["worker_uss_peak_mb"] / max(lo["worker_uss_peak_mb"], 1e-9)
        res.ratios["worker_own_peak"] = hi["worker_own_peak_mb"] / max(lo["worker_own_peak_mb"], 1e-9)
    return res


def write_json(res: ScaleBench, path: Path) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=1))
