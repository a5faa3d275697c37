"""`emodis bench ingest`: how fast clips become training tensors, measured side by side in one run.

On the same synthetic clips of the paper's shape (12 s, 224x224, 25 fps, AAC audio):
  (a) the single-pass decode limit: PyAV decodes every video and audio frame on one thread
      (to RGB / float arrays, as a loader must; the raw figure without conversion is shown too);
  (b) our per-clip feature extraction on one thread (decode the segment frames, audio, log-mel);
  (b1) the same clips stored as VoxCeleb1 is (face tracks over raw 796x448 videos at 30 fps, wav audio): all
       tracks of a raw video decoded in one call, on one thread;
  (c) the Ray Data streaming pipeline on all CPUs;
  (d) reading the feature cache into model tensors (what every later epoch and trial pays).
Plus the peak RSS of a decode worker and its RSS growth over a soak of many clip decodes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from emodis_ray.config import Config, SynthConfig, load_config, replace


@dataclass
class IngestBench:
    clips: int
    cpus: int
    clip_shape: str
    rows: int = 0  # clip decodes in (c) and (d)
    per_clip_ms: dict[str, float] = field(default_factory=dict)  # one thread
    clips_per_s: dict[str, float] = field(default_factory=dict)  # whole run
    clips_per_s_per_core: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    ray_startup_s: float = 0.0
    cache_first_batch_s: float = 0.0  # fixed cost of each pass over the cache
    soak: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"ingest benchmark: {self.clips} clips of {self.clip_shape}, {self.cpus} CPUs; "
                 f"(c) and (d) over {self.rows} clip decodes", "",
                 f"{'path':<44}{'clips/s':>10}{'per core':>10}"]
        names = {"a_raw": "(a0) PyAV decode all frames, no conversion", "a": "(a) PyAV decode all frames to arrays",
                 "b": "(b) our features, one thread", "b_raw": "(b1) face tracks over raw video, one thread",
                 "c": "(c) Ray Data pipeline, all CPUs",
                 "c_e2e": "    (c) incl. actor start-up", "d": "(d) feature cache -> tensors",
                 "d_steady": "    (d) after each pass's first batch"}
        for k, name in names.items():
            if k in self.clips_per_s:
                lines.append(f"{name:<44}{self.clips_per_s[k]:>10.1f}{self.clips_per_s_per_core[k]:>10.1f}")
        lines += ["", "ratios (targets): " + ", ".join(
            f"{k} = {v:.2f}" + {"b/a": " (>= 0.9)", "b_raw/b": " (raw-video path / crop path)",
                                "c/b": " (>= 1.6 on 2 CPUs)", "d/b": " (>= 50)"}.get(k, "")
            for k, v in self.ratios.items())]
        lines.append(f"ray.init {self.ray_startup_s:.1f} s; each pass over the cache starts in "
                     f"{self.cache_first_batch_s:.1f} s (first batch), then streams at the rate above")
        if self.soak:
            s = self.soak
            lines.append(f"soak: {s['decodes']} decodes in {s['workers']} workers; peak RSS per worker "
                         f"{s['peak_rss_mb']:.0f} MB; RSS growth after warm-up {s['growth_mb']:.1f} MB (target < 50)")
        return "\n".join(lines)


def _time_per_clip(fn: Callable[[Any], object], items: list[Any], repeat: int = 1) -> float:
    fn(items[0])  # warm-up: imports, codec init, mel kernels
    t0 = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            fn(it)
    return (time.perf_counter() - t0) / (repeat * len(items))


def pyav_decode_all(path: str, convert: bool = True) -> int:
    """(a): decode every video and audio frame of ``path`` on one thread."""
    import av

    n = 0
    with av.open(path) as c:
        for s in c.streams:
            s.thread_count = 1
        for frame in c.decode(*c.streams):
            if convert:
                frame.to_ndarray(format="rgb24") if isinstance(frame, av.VideoFrame) else frame.to_ndarray()
            n += 1
    return n


def _soak_worker(paths: list[str], features: dict[str, Any], n: int, q: Any) -> None:
    import psutil
    import torch

    from emodis_ray.config import FeatureConfig
    from emodis_ray.data.features import extract_clip

    torch.set_num_threads(1)
    cfg, proc, rss = FeatureConfig(**features), psutil.Process(), []
    for i in range(n):
        extract_clip(paths[i % len(paths)], None, cfg)
        rss.append(proc.memory_info().rss)
    warm = min(50, n // 4)  # allocator pools and codec caches fill in the first clips
    q.put({"peak": max(rss), "growth": rss[-1] - rss[warm], "n": n})


def soak(paths: list[str], cfg: Config, decodes: int, workers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per = -(-decodes // workers)
    procs = [ctx.Process(target=_soak_worker, args=(paths, asdict(cfg.features), per, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    out = [q.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return {"decodes": per * workers, "workers": workers, "peak_rss_mb": max(o["peak"] for o in out) / 2**20,
            "growth_mb": max(o["growth"] for o in out) / 2**20}


def _raw_video_per_clip(data: Path, synth: SynthConfig, df: pd.DataFrame, cfg: Config, progress: bool) -> float:
    """Seconds per clip to decode the manifest's clips from the VoxCeleb1 layout of the same synthetic set, each
    raw video's tracks in one :func:`~emodis_ray.data.rawvideo.extract_video_tracks` call (as ingest groups them)."""
    from emodis_ray.data.features import BadClip
    from emodis_ray.data.rawvideo import TrackSource, extract_video_tracks
    from emodis_ray.synth.generate import generate

    if not (data / "senet50-ferplus-logits.mat").exists():
        generate(data, synth, progress=progress, layout="voxceleb1")
    videos: dict[str, list[TrackSource]] = {}
    for c, v in zip(df["clip_id"], df["video_id"], strict=True):
        videos.setdefault(str(data / "raw" / f"{v}.mp4"), []).append(
            TrackSource(str(data / "txt" / f"{c}.txt"), str(data / "wav" / f"{c}.wav")))
    f = cfg.features
    decode = lambda item: extract_video_tracks(item[0], item[1], f, margin=f.face_margin,  # noqa: E731
                                               ref_height=f.track_ref_height)
    items = list(videos.items())
    assert not any(isinstance(r, BadClip) for r in decode(items[0])), "a track of the benchmark's set is bad"
    return _time_per_clip(decode, items) * len(items) / len(df)


def bench_ingest(clips: int = 16, rows: int = 96, soak_decodes: int = 1000, workdir: Path | None = None,
                 progress: bool = True) -> IngestBench:
    import ray
    import torch

    from emodis_ray.data.features import extract_clip
    from emodis_ray.data.ingest import preprocess, stream_rows
    from emodis_ray.data.manifest import read_manifest, write_manifest
    from emodis_ray.data.rows import collate
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.synth.generate import generate

    torch.set_num_threads(1)
    say = print if progress else (lambda *a, **k: None)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    work = Path(tmp.name if tmp else workdir)  # type: ignore[union-attr]
    cfg = replace(load_config("paper"), data={"rows_per_shard": 8, "max_bad_fraction": 0.0})
    people = 2
    synth = SynthConfig(people=people, clips_per_person=-(-clips // people), videos_per_person=2, size=224,
                        clip_s_min=12.0, clip_s_max=12.0, short_clip_fraction=0.0, unheard_people=0, workers=0)
    data = work / "data"
    if not (data / "senet50-ferplus-logits.mat").exists():
        say(f"writing {synth.people * synth.clips_per_person} synthetic clips of 12 s, 224x224 ...")
        generate(data, synth, progress=progress)
    df, _ = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv", data / "videos",
                            replace(cfg, labels={"drop_percentile": 0.0}).labels)
    write_manifest(df, work / "manifest.parquet")
    df = read_manifest(work / "manifest.parquet")
    paths = sorted(df["video_abspath"])
    res = IngestBench(clips=len(paths), cpus=os.cpu_count() or 1, clip_shape="12 s, 224x224, 25 fps, AAC 16 kHz")

    say("(a) PyAV single-pass decode ...")
    res.per_clip_ms["a_raw"] = 1e3 * _time_per_clip(lambda p: pyav_decode_all(p, convert=False), paths)
    res.per_clip_ms["a"] = 1e3 * _time_per_clip(pyav_decode_all, paths)
    say("(b) our per-clip features, one thread ...")
    res.per_clip_ms["b"] = 1e3 * _time_per_clip(lambda p: extract_clip(p, None, cfg.features), paths)
    say("(b1) the same clips as face tracks over raw video (VoxCeleb1 layout), one thread ...")
    res.per_clip_ms["b_raw"] = 1e3 * _raw_video_per_clip(work / "data-vox1", synth, df, cfg, progress)

    # (c) and (d) run over `rows` clip decodes: the clips repeated under new ids, so that start-up
    # (actors, an epoch's planning) is amortised as in a real epoch of thousands of clips.
    copies = max(1, -(-rows // len(df)))
    big = pd.concat([df.assign(clip_id=df["clip_id"] + f"-{r}") for r in range(copies)], ignore_index=True)
    write_manifest(big, work / "manifest_rows.parquet")
    big = read_manifest(work / "manifest_rows.parquet")
    res.rows = len(big)

    say(f"(c) Ray Data pipeline on all CPUs, {len(big)} clips ...")
    t0 = time.perf_counter()
    with ray_session(num_cpus=res.cpus, dashboard=False, log_to_driver=False):
        res.ray_startup_s = time.perf_counter() - t0
        t_start = time.perf_counter()
        n, n_first, t_first = 0, 0, 0.0
        for batch in stream_rows(big, None, cfg, max_decoders=res.cpus).iter_batches(
                batch_size=None, batch_format="numpy"):
            n += len(batch["clip_id"])
            if not n_first:  # steady state starts once the first block is out: actors are up
                n_first, t_first = n, time.perf_counter()
        t_end = time.perf_counter()
        assert n == len(big), f"the pipeline returned {n} of {len(big)} clips"
        res.per_clip_ms["c"] = 1e3 * (t_end - t_first) / max(1, n - n_first)
        res.per_clip_ms["c_e2e"] = 1e3 * (t_end - t_start) / n

        say("(d) feature cache -> tensors ...")
        info = preprocess(work / "manifest_rows.parquet", work / "cache", cfg, progress=False)

        # An epoch over the cache, made long (its shards listed `passes` times) so that the fixed cost
        # of starting a Ray Data execution (~1-2 s, reported apart) is amortised as in a real epoch.
        from emodis_ray.data.rows import ROW_SCHEMA

        # (Ray Data reads a path listed twice once, so each pass reads hard links of the shards.)
        passes = 8
        files = []
        for k in range(passes):
            for p in info.shards():
                link = work / "passes" / f"{k}-{p.name}"
                link.parent.mkdir(exist_ok=True)
                if not link.exists():
                    os.link(p, link)
                files.append(str(link))

        def read_cache(k: int) -> tuple[int, float]:
            m, t_first, t0 = 0, 0.0, time.perf_counter()
            ds = ray.data.read_parquet(files[: k * len(info.shards())], schema=ROW_SCHEMA)
            for batch in ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy"):
                m += len(collate(batch, cfg.features, train=True, seed=0, epoch=0)["clip_id"])
                t_first = t_first or time.perf_counter() - t0
            return m, t_first

        read_cache(1)  # warm: the page cache, as for every epoch after the first
        t0 = time.perf_counter()
        m, res.cache_first_batch_s = read_cache(passes)
        total = time.perf_counter() - t0
        assert m == passes * len(big)
        res.per_clip_ms["d"] = 1e3 * total / m
        # after the first batch: what a long epoch streams at
        res.per_clip_ms["d_steady"] = 1e3 * (total - res.cache_first_batch_s) / max(1, m - cfg.data.batch_size)

    for k, ms in res.per_clip_ms.items():
        res.clips_per_s[k] = 1e3 / ms
        res.clips_per_s_per_core[k] = res.clips_per_s[k] / (res.cpus if k in ("c", "c_e2e") else 1)
    cps = res.clips_per_s
    res.ratios = {"b/a": cps["b"] / cps["a"], "b/a0": cps["b"] / cps["a_raw"], "b_raw/b": cps["b_raw"] / cps["b"],
                  "c/b": cps["c"] / cps["b"],
                  "d/b": cps["d"] / cps["b"], "d_steady/b": cps["d_steady"] / cps["b"]}
    if soak_decodes:
        say(f"soak: {soak_decodes} clip decodes ...")
        res.soak = soak(paths, cfg, soak_decodes, workers=res.cpus)
    if tmp:
        tmp.cleanup()
    return res


def main(clips: int, rows: int, soak_decodes: int, json_path: str | None, workdir: str | None) -> IngestBench:
    res = bench_ingest(clips, rows, soak_decodes, Path(workdir) if workdir else None)
    print(res.format())
    if json_path:
        Path(json_path).write_text(json.dumps(asdict(res), indent=2))
        print(f"wrote {json_path}")
    return res
