"""Custom metrics of ingest and training, exported through Ray's metrics agent (Prometheus text format).

Call the ``record_*`` functions from code that runs in a Ray worker (a Ray Data decode actor, a Ray Train
worker, a driver connected to Ray). Outside Ray they do nothing, so the pure code paths (unit tests,
``core/`` on its own) stay free of Ray. A metric failure never breaks the caller.

Every node's metrics agent serves the values at ``http://<node>:<metrics export port>/metrics`` (the port is
``ray start --metrics-export-port`` or ``ray.nodes()[i]["MetricsExportPort"]``), with Ray's ``ray_`` prefix:
``ray_emodis_ingest_clips_total{status="good"}`` and so on. Workers push their values to the agent
periodically (every few seconds), so a value shows up there a little after it was recorded. The Ray
dashboard's Metrics view and Grafana (``cluster/grafana-emodis.json``) read them through Prometheus.

What is recorded (names without the ``ray_`` prefix):

- ``emodis_ingest_clips_total{status}``       counter, clips decoded (``good``) or skipped (``bad``);
                                              cluster clips/s = ``sum(rate(...[1m]))``
- ``emodis_ingest_seconds_total``             counter, seconds spent decoding
- ``emodis_ingest_clips_per_s``               gauge, the last batch's clips/s of one decoder (live)
- ``emodis_train_step_seconds{run}``          histogram, wall time of one training step (data wait included)
- ``emodis_train_step_seconds_total{run}``    counter, the same seconds summed exactly
- ``emodis_train_data_wait_seconds_total{run}`` counter, seconds of those steps spent waiting for data;
                                              data-wait fraction = rate(wait_total) / rate(step_seconds_total)
- ``emodis_train_data_wait_fraction{run}``    gauge, the last step's wait / step time (live)
- ``emodis_epoch{run}`` and one gauge per epoch metric: ``emodis_val_emo_f1``, ``emodis_val_spk_acc``,
  ``emodis_leak_aux_emo_f1`` (emotion macro-F1 of the aux head on the *speaker* embedding: the online
  leakage estimate), ``emodis_leak_aux_spk_acc`` (identity accuracy of the aux head on the emotion
  embedding), ``emodis_train_loss``, ``emodis_train_clips_per_s``

Two facts of Ray's metrics pipeline (2.60) shape this:
- A gauge that is not set again within two export intervals is dropped from the endpoint (the agent ages
  gauges out so that finished workers disappear). "Live" gauges above are set every batch or step and fade
  when the work stops; the epoch gauges are set once per epoch, so a daemon thread of this process sets
  their last values again every half interval, for as long as the process (the Train worker) lives.
- A histogram's ``_sum`` is computed from bucket midpoints, not from the observed values: exact totals
  come from the ``*_seconds_total`` counters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from collections.abc import Mapping
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "ray_"  # what Ray puts in front of every custom metric's name on export
STEP_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

# epoch metric (a key of the row that the training loop reports) -> gauge name
EPOCH_GAUGES: dict[str, str] = {
    "epoch": "emodis_epoch",
    "val_emo_f1": "emodis_val_emo_f1",
    "val_spk_acc": "emodis_val_spk_acc",
    "val_aux_emo_f1": "emodis_leak_aux_emo_f1",
    "val_aux_spk_acc": "emodis_leak_aux_spk_acc",
    "val_aux_emo_ce_over_prior": "emodis_aux_emo_ce_over_prior",  # > 1: the aux head is pushed off (re-encoding)
    "train_loss": "emodis_train_loss",
    "train_clips_per_s": "emodis_train_clips_per_s",
}


def _in_ray() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return ray.is_initialized()


@cache
def _metrics() -> dict[str, Any]:
    """The metric objects of this process, made on first use (Ray must be initialised by then)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    run = ("run",)
    m: dict[str, Any] = {
        "clips": Counter("emodis_ingest_clips_total", "clips decoded (good) or skipped as bad", ("status",)),
        "ingest_s": Counter("emodis_ingest_seconds_total", "seconds spent decoding clips"),
        "ingest_rate": Gauge("emodis_ingest_clips_per_s", "clips/s of a decoder's last batch"),
        "step": Histogram("emodis_train_step_seconds", "wall time of one training step, data wait included",
                          boundaries=STEP_BUCKETS_S, tag_keys=run),
        "step_s": Counter("emodis_train_step_seconds_total", "seconds of training steps, data wait included",
                          tag_keys=run),
        "wait": Counter("emodis_train_data_wait_seconds_total", "seconds of training steps spent waiting for data",
                        tag_keys=run),
        "wait_frac": Gauge("emodis_train_data_wait_fraction", "the last step's data wait / step time",
                           tag_keys=run),
    }
    for key, name in EPOCH_GAUGES.items():
        m[key] = Gauge(name, f"per-epoch training metric {key}", tag_keys=run)
    return m


def _run_tag(run: str | None) -> dict[str, str]:
    return {"run": run or os.environ.get("EMODIS_RUN", "") or "default"}


def record_ingest(good: int, bad: int, seconds: float) -> None:
    """One decoder's batch: ``good`` clips decoded and ``bad`` skipped in ``seconds``."""
    if not _in_ray():
        return
    try:
        m = _metrics()
        if good:
            m["clips"].inc(good, tags={"status": "good"})
        if bad:
            m["clips"].inc(bad, tags={"status": "bad"})
        if seconds > 0:
            m["ingest_s"].inc(seconds)
            m["ingest_rate"].set((good + bad) / seconds)
    except Exception as e:  # metrics must never break ingest
        log.debug("record_ingest failed: %s", e)


def record_step(step_s: float, wait_s: float, run: str | None = None) -> None:
    """One training step: ``step_s`` wall seconds, of which ``wait_s`` waiting for the batch."""
    if not _in_ray():
        return
    try:
        m = _metrics()
        tags = _run_tag(run)
        m["step"].observe(max(step_s, 0.0), tags=tags)
        if step_s > 0:
            m["step_s"].inc(step_s, tags=tags)
        if wait_s > 0:
            m["wait"].inc(wait_s, tags=tags)
        m["wait_frac"].set(wait_s / step_s if step_s > 0 else 0.0, tags=tags)
    except Exception as e:
        log.debug("record_step failed: %s", e)


def record_epoch(metrics: Mapping[str, Any], run: str | None = None) -> None:
    """The epoch's row as the training loop reports it (keys of :data:`EPOCH_GAUGES`; others ignored).
    Call it on one worker (rank 0): the values already cover every worker."""
    if not _in_ray():
        return
    try:
        m = _metrics()
        tags = _run_tag(run)
        held = _held()
        for key in EPOCH_GAUGES:
            v = metrics.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                m[key].set(float(v), tags=tags)
                held.hold(m[key], float(v), tags)
    except Exception as e:
        log.debug("record_epoch failed: %s", e)


class _HeldGauges:
    """Sets the last value of each held gauge again every ``period_s``, from a daemon thread, so that a
    value recorded once per epoch stays on the metrics endpoint between epochs."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Any, float, dict[str, str]]] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="emodis-metrics-hold", daemon=True)
        self.thread.start()

    def hold(self, gauge: Any, value: float, tags: dict[str, str]) -> None:
        with self.lock:
            self.values[(gauge.info["name"], tuple(sorted(tags.items())))] = (gauge, value, tags)

    def _run(self) -> None:
        while True:
            time.sleep(self.period_s)
            with self.lock:
                held = list(self.values.values())
            for gauge, value, tags in held:
                try:
                    gauge.set(value, tags=tags)
                except Exception as e:  # Ray shut down in this process: stop quietly
                    log.debug("held gauge refresh failed: %s", e)
                    return


@cache
def _held() -> _HeldGauges:
    import ray

    try:
        interval_s = max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
    except Exception:  # a Ray without this private accessor: its default interval
        interval_s = 10.0
    return _HeldGauges(period_s=interval_s / 2)


# --- reading them back --------------------------------------------------------------------------------


def endpoints() -> list[str]:
    """The metrics URL of every live node of the connected cluster."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """One Prometheus text page -> ``{'name{labels}': value}`` (comments dropped)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (a URL of our own cluster)
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def emodis_series(page: Mapping[str, float]) -> dict[str, float]:
    """The ``emodis_*`` series of a scraped page, with Ray's prefix removed from the names."""
    return {k[len(PREFIX):]: v for k, v in page.items() if k.startswith(PREFIX + "emodis_")}
