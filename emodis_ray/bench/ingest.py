"""`emodis bench ingest`: how fast clips become training tensors, measured side by side in one run.

On the same synthetic clips of the paper's shape (12 s, 224x224, 25 fps, AAC audio):
  (a) the single-pass decode limit: PyAV decodes every video and audio frame on one thread
      (to RGB / float arrays, as a loader must; the raw figure without conversion is shown too);
  (b) our per-clip feature extraction on one thread (decode the segment frames, audio, log-mel);
  (b1) the same clips stored as VoxCeleb1 is (face tracks over raw 796x448 videos at 30 fps, wav audio): all
       tracks of a raw video decoded in one call, on one thread;
  (c) the Ray Data streaming pipeline on all CPUs;
  (d) reading the feature cache (JPEG faces at the paper preset's quality) through Ray Data into one consumer
      that collates model tensors, faces decoded there on a thread per CPU (what every later epoch and trial
      pays);
  (e) bytes per clip in the cache: the first format (every segment's log-mel, raw faces) against one row per
      clip (the log-mel once) with raw faces and with JPEG faces at two qualities, and the cost of decoding
      each in the training worker (collate, one thread; JPEG q90 also on a thread per CPU, as the worker does);
  (f) what one GPU would need: training FLOPs per clip counted from the model (``flops_per_clip``, x3 for
      forward + backward) at a stated peak and MFU, and the ratio of (d) to it;
  (g) how to shuffle: the same cache files read through Ray Data into one consumer (rows only, no collate) with no
      shuffle, with the trainer's seeded local buffer (256 clips), and with a shuffle inside ``map_batches``
      (a window of 64 clips); clips/s after each pass's first batch, the best of three passes.
Plus the peak RSS of a decode worker and its RSS growth over a soak of many clip decodes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emodis_ray.bench.cache_costs import cache_bytes, collate_ms, shuffle_rates, time_per_clip
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
    bytes_per_clip: dict[str, float] = field(default_factory=dict)  # (e): mean over the clips
    train_gflop_per_clip: float = 0.0  # (f): forward + backward, counted on the paper model
    gpu: str = "H100 SXM, bf16 dense peak 989 TFLOP/s"
    gpu_peak_tflops: float = 989.0
    mfu: float = 0.3
    gpu_need_clips_per_s: float = 0.0
    shuffle_rows_per_s: dict[str, float] = field(default_factory=dict)  # (g)

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
        if self.bytes_per_clip:
            b, ms = self.bytes_per_clip, self.per_clip_ms
            lines += ["", f"{'(e) cache format':<44}{'MB/clip':>10}{'collate ms':>12}"]
            for k, name in (("v1", "first format: per-segment log-mel, raw"),
                            ("raw", "one row per clip, raw faces"),
                            ("jpeg90", "one row per clip, JPEG q90 (default)"),
                            ("jpeg75", "one row per clip, JPEG q75")):
                col = f"{ms['collate_' + k]:>12.1f}" if "collate_" + k in ms else f"{'':>12}"
                lines.append(f"    {name:<40}{b[k] / 1e6:>10.3f}{col}")
            if "collate_jpeg90_threads" in ms:
                t = ms["collate_jpeg90_threads"]
                name = f"JPEG q90, decoded on {self.cpus} threads"
                lines.append(f"    {name:<40}{b['jpeg90'] / 1e6:>10.3f}{t:>12.1f}  "
                             f"({ms['collate_jpeg90'] / t:.2f}x one thread)")
        if self.gpu_need_clips_per_s:
            d = self.clips_per_s.get("d_steady", 0.0)
            lines += ["", f"(f) one GPU ({self.gpu}) at {self.mfu:.0%} MFU trains "
                          f"{self.gpu_need_clips_per_s:.0f} clips/s ({self.train_gflop_per_clip:.0f} GFLOP per "
                          f"training clip); (d) delivers {d:.1f} clips/s into one consumer here: "
                          f"{d / self.gpu_need_clips_per_s:.3f} of the need, so about "
                          f"{self.gpu_need_clips_per_s / max(d, 1e-9):.0f} such consumers per GPU"]
        if self.shuffle_rows_per_s:
            g = self.shuffle_rows_per_s
            lines += ["", f"{'(g) shuffle while reading the cache':<44}{'clips/s':>10}{'vs none':>10}"]
            for k, v in g.items():
                lines.append(f"    {k:<40}{v:>10.1f}{v / g['none']:>10.2f}")
        if self.soak:
            s = self.soak
            lines.append(f"soak: {s['decodes']} decodes in {s['workers']} workers; peak RSS per worker "
                         f"{s['peak_rss_mb']:.0f} MB; RSS growth after warm-up {s['growth_mb']:.1f} MB (target < 50)")
        return "\n".join(lines)


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


def train_gflop_per_clip(cfg: Config, segs: Any, num_speakers: int) -> float:
    """(f): forward FLOPs of the model on one collated clip (``flops_per_clip``), x3 for a training step."""
    from emodis_ray.core.checkpoint import model_kwargs_of
    from emodis_ray.core.loop import to_device
    from emodis_ray.core.model import build_model, flops_per_clip
    from emodis_ray.data.rows import collate, to_row

    row = to_row("c", "train", 0, 0, segs, cfg.features)
    batch = to_device(collate({k: [v] for k, v in row.items()}, cfg.features, train=False), "cpu")
    return 3 * flops_per_clip(build_model(**model_kwargs_of(cfg, num_speakers)), batch) / 1e9


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
    return time_per_clip(decode, items) * len(items) / len(df)


def bench_ingest(clips: int = 16, rows: int = 96, soak_decodes: int = 1000, workdir: Path | None = None,
                 progress: bool = True) -> IngestBench:
    import ray
    import torch

    from emodis_ray.data.features import extract_clip, extract_segments
    from emodis_ray.data.ingest import preprocess, stream_rows
    from emodis_ray.data.manifest import read_manifest, write_manifest
    from emodis_ray.data.rows import FaceDecoder, collate
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
    res.per_clip_ms["a_raw"] = 1e3 * time_per_clip(lambda p: pyav_decode_all(p, convert=False), paths)
    res.per_clip_ms["a"] = 1e3 * time_per_clip(pyav_decode_all, paths)
    say("(b) our per-clip features, one thread ...")
    res.per_clip_ms["b"] = 1e3 * time_per_clip(lambda p: extract_clip(p, None, cfg.features), paths)
    say("(b1) the same clips as face tracks over raw video (VoxCeleb1 layout), one thread ...")
    res.per_clip_ms["b_raw"] = 1e3 * _raw_video_per_clip(work / "data-vox1", synth, df, cfg, progress)

    say("(e) bytes per clip in the cache, and collating them in the worker, one thread ...")
    segs = [extract_segments(p, None, cfg.features) for p in paths]
    res.bytes_per_clip = cache_bytes(segs, cfg.features)
    bs = cfg.data.batch_size
    res.per_clip_ms["collate_raw"] = collate_ms(segs, cfg.features, "raw", 90, bs)
    res.per_clip_ms["collate_jpeg90"] = collate_ms(segs, cfg.features, "jpeg", 90, bs)
    res.per_clip_ms["collate_jpeg75"] = collate_ms(segs, cfg.features, "jpeg", 75, bs)
    res.per_clip_ms["collate_jpeg90_threads"] = collate_ms(segs, cfg.features, "jpeg", 90, bs, threads=res.cpus)
    say("(f) training FLOPs per clip of the paper model ...")
    res.train_gflop_per_clip = train_gflop_per_clip(cfg, segs[0], people)
    res.gpu_need_clips_per_s = res.mfu * res.gpu_peak_tflops * 1e3 / res.train_gflop_per_clip
    del segs

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

        # An epoch over the cache, made long (its parts listed `passes` times) so that the fixed cost
        # of starting a Ray Data execution (~1-2 s, reported apart) is amortised as in a real epoch.
        import pyarrow.parquet as pq

        from emodis_ray.data.rows import FEATURE_SCHEMA

        # (Ray Data reads a path listed twice once, so each pass reads hard links of the parts.)
        # The cache is keyed by clip: the repeated ids share their 16 clips' rows, so the passes make up the
        # same number of clip reads as (c) decodes, 8 times over.
        parts = info.parts()
        cached = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        passes = max(1, 8 * len(big) // cached)
        files = []
        for k in range(passes):
            for p in parts:
                link = work / "passes" / f"{k}-{p.name}"
                link.parent.mkdir(exist_ok=True)
                if not link.exists():
                    os.link(p, link)
                files.append(str(link))

        decoder = FaceDecoder(res.cpus)  # as in the training worker: a thread per CPU

        def read_cache(k: int) -> tuple[int, float]:
            m, t_first, t0 = 0, 0.0, time.perf_counter()
            ds = ray.data.read_parquet(files[: k * len(parts)], schema=FEATURE_SCHEMA)
            for batch in ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy"):
                n = len(batch["clip_key"])  # labels play no part in the cost: zeros stand in for the join
                batch = {**batch, "clip_id": batch["clip_key"], "emotion": np.zeros(n), "speaker": np.zeros(n)}
                m += len(collate(batch, cfg.features, train=True, seed=0, epoch=0, decoder=decoder)["clip_id"])
                t_first = t_first or time.perf_counter() - t0
            return m, t_first

        read_cache(1)  # warm: the page cache, as for every epoch after the first
        t0 = time.perf_counter()
        m, res.cache_first_batch_s = read_cache(passes)
        total = time.perf_counter() - t0
        assert m == passes * cached, f"read {m} clips, expected {passes} x {cached}"
        res.per_clip_ms["d"] = 1e3 * total / m
        # after the first batch: what a long epoch streams at
        res.per_clip_ms["d_steady"] = 1e3 * (total - res.cache_first_batch_s) / max(1, m - cfg.data.batch_size)
        decoder.close()
        say("(g) shuffling while reading the cache ...")
        res.shuffle_rows_per_s = shuffle_rates(files, cfg.data.batch_size)

    for k, ms in res.per_clip_ms.items():
        if k.startswith("collate_"):
            continue
        res.clips_per_s[k] = 1e3 / ms
        res.clips_per_s_per_core[k] = res.clips_per_s[k] / (res.cpus if k in ("c", "c_e2e") else 1)
    cps = res.clips_per_s
    res.ratios = {"b/a": cps["b"] / cps["a"], "b/a0": cps["b"] / cps["a_raw"], "b_raw/b": cps["b_raw"] / cps["b"],
                  "c/b": cps["c"] / cps["b"],
                  "d/b": cps["d"] / cps["b"], "d_steady/b": cps["d_steady"] / cps["b"],
                  "jpeg90/v1 bytes": res.bytes_per_clip["jpeg90"] / res.bytes_per_clip["v1"],
                  "d_steady/gpu_need": cps["d_steady"] / res.gpu_need_clips_per_s}
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
