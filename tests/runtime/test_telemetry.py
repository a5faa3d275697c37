"""Custom metrics: no-ops outside Ray, and on a real two-node cluster they reach each node's Prometheus endpoint,
from a plain task and from the Ray Data decode UDF."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from helpers.localcluster import LocalCluster, local_cluster
from helpers.media import make_clip

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import BadClip
from emodis_ray.runtime import telemetry as metrics

PAGE = """# HELP ray_emodis_ingest_clips_total clips
# TYPE ray_emodis_ingest_clips_total counter
ray_emodis_ingest_clips_total{Component="core_worker",status="good"} 5.0
ray_emodis_ingest_clips_total{Component="core_worker",status="bad"} 1.0
ray_other_metric 3.0
python_gc_objects_collected_total{generation="0"} 2366.0
"""


def test_scrape_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    class Response:
        def __enter__(self) -> Response:
            return self

        def __exit__(self, *a: object) -> None:
            pass

        def read(self) -> bytes:
            return PAGE.encode()

    monkeypatch.setattr(metrics.urllib.request, "urlopen", lambda url, timeout: Response())
    page = metrics.scrape("http://x/metrics")
    assert page['ray_emodis_ingest_clips_total{Component="core_worker",status="good"}'] == 5.0
    series = metrics.emodis_series(page)
    assert series == {'emodis_ingest_clips_total{Component="core_worker",status="good"}': 5.0,
                      'emodis_ingest_clips_total{Component="core_worker",status="bad"}': 1.0}


def test_record_functions_are_no_ops_outside_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray session is open in this process")
    made: list[int] = []
    monkeypatch.setattr(metrics, "_metrics", lambda: made.append(1))
    metrics.record_ingest(3, 1, 0.5)
    metrics.record_step(0.2, 0.05)
    metrics.record_epoch({"epoch": 0, "val_aux_emo_f1": 0.3})
    assert not made  # no metric object was even asked for


def test_decode_udf_reports_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    from emodis_ray.data import ingest as data

    calls: list[tuple[int, int, float]] = []
    monkeypatch.setattr(data, "record_ingest", lambda good, bad, s: calls.append((good, bad, s)))

    class Broken:
        def __call__(self, video: str, audio: str | None) -> None:
            raise BadClip("unreadable", video)

        def close(self) -> None:
            pass

    udf = data.DecodeClips.__new__(data.DecodeClips)
    udf.decoder, udf.log, udf.cfg = Broken(), None, FeatureConfig()
    batch = pd.DataFrame({"clip_id": ["a", "b"], "split": "train", "emotion_idx": 0, "speaker_idx": 0,
                          "video_abspath": ["/x/a.mp4", "/x/b.mp4"], "audio_abspath": None, "track_abspath": None})
    out = udf(batch)
    assert isinstance(out, pa.Table) and out.num_rows == 0
    assert len(calls) == 1 and calls[0][:2] == (0, 2) and calls[0][2] >= 0


# --- on a real cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=1, head_cpus=1, node_cpus=2) as c:
        yield c


def _poll(cluster: LocalCluster, ok: Callable[[dict[str, float]], bool], timeout_s: float = 60.0) -> dict:
    """The emodis series of every node (summed over workers, labels but the name's own dropped) once
    ``ok`` holds; export is periodic, so wait for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        per_node: dict[int, dict[str, float]] = {}
        for port in cluster.metrics_ports:
            series = metrics.emodis_series(metrics.scrape(f"http://127.0.0.1:{port}/metrics"))
            per_node[port] = series
        flat: dict[str, float] = {}
        for series in per_node.values():
            for key, v in series.items():
                name, _, labels = key.partition("{")
                wanted = [lab for lab in labels.rstrip("}").split(",") if lab.split("=")[0] in ("status", "run", "le")]
                k = name + ("{" + ",".join(wanted) + "}" if wanted else "")
                flat[k] = flat.get(k, 0.0) + v
        if ok(flat) or time.monotonic() > deadline:
            return {"flat": flat, "per_node": per_node}
        time.sleep(1.0)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_metrics_reach_the_node_endpoint(cluster: LocalCluster, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from emodis_ray.config import load_config, replace
    from emodis_ray.data.ingest import stream_rows
    from emodis_ray.runtime.session import use_token_if_available

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    use_token_if_available()
    # two good clips and one unreadable file, as manifest rows
    for i in range(2):
        make_clip(tmp_path / f"good{i}.mp4", 2.0)
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    names = ["good0", "good1", "bad"]
    rows = pd.DataFrame({"clip_id": names, "split": "train", "emotion_idx": 0,
                         "speaker_idx": 0, "video_abspath": [str(tmp_path / f"{n}.mp4") for n in names],
                         "audio_abspath": None, "track_abspath": None, "speaker": "s", "emotion": "neutral"})
    cfg = replace(load_config("tiny"), data={"decode_timeout_s": 30.0})

    ray.init(address=cluster.gcs_address, logging_level="ERROR", log_to_driver=False)
    try:
        # the endpoints Ray reports are the ports local-up.sh gave the nodes
        assert sorted(int(u.rsplit(":", 1)[1].split("/")[0]) for u in metrics.endpoints()) == \
            sorted(cluster.metrics_ports)

        @ray.remote(num_cpus=0, resources={"node_w1": 0.01})
        def train_like() -> None:
            metrics.record_step(0.2, 0.05, run="probe-run")
            metrics.record_step(0.4, 0.0, run="probe-run")
            metrics.record_epoch({"epoch": 2, "val_aux_emo_f1": 0.42, "val_emo_f1": 0.6, "train_loss": 1.5,
                                  "ignored": "text"}, run="probe-run")

        ray.get(train_like.remote())
        # decoding takes several export intervals: the epoch gauges, set once, must still be there after it
        got = {r["clip_id"] for r in stream_rows(rows, "train", cfg, max_decoders=1).iter_rows()}
        assert got == {"good0", "good1"}

        want = {
            'emodis_ingest_clips_total{status="good"}': 2.0,
            'emodis_ingest_clips_total{status="bad"}': 1.0,
            'emodis_train_step_seconds_count{run="probe-run"}': 2.0,
            'emodis_leak_aux_emo_f1{run="probe-run"}': 0.42,
            'emodis_epoch{run="probe-run"}': 2.0,
        }
        res = _poll(cluster, lambda f: all(f.get(k) == v for k, v in want.items()))
    finally:
        ray.shutdown()
    flat = res["flat"]
    for k, v in want.items():
        assert flat.get(k) == pytest.approx(v), (k, flat)
    # exact totals from the counters (a histogram's _sum is made of bucket midpoints in Ray)
    assert flat['emodis_train_step_seconds_total{run="probe-run"}'] == pytest.approx(0.6)
    assert flat['emodis_train_data_wait_seconds_total{run="probe-run"}'] == pytest.approx(0.05)
    assert flat["emodis_ingest_seconds_total"] > 0
    # the step metrics were recorded on the worker node, and only its endpoint has them
    w1 = max(cluster.metrics_ports)
    assert any(k.startswith("emodis_train_step_seconds") for k in res["per_node"][w1])
    assert not any(k.startswith("emodis_train_step_seconds") for k in res["per_node"][min(cluster.metrics_ports)])
