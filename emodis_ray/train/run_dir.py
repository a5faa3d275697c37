"""The run folder, written and read in one place.

A run folder ``OUT`` holds::

    config.yaml          the resolved config of the latest call
    run.json             the manifest it trained on (path and hash), for `emodis evaluate`
    reports.jsonl        every ``ray.train.report`` as it happened (appended, one JSON line each)
    metrics.csv / .json  one row per epoch (deduplicated by epoch, the last report wins)
    tensorboard/         TensorBoard events of the same metrics
    bad_clips.csv        clips that could not be decoded (from the stream or the feature cache)
    curves.png           losses, validation emotion F1, identity accuracy and aux-head leakage per epoch
    model.pt             the best epoch's weights (``train.select_metric``; run.json says which epoch and why)
                         with what it takes to rebuild the model without Ray
    checkpoints/OUT/     Ray Train storage: the best and the latest checkpoint (``epoch_NNNN/checkpoint.pt``);
                         ``--storage`` puts it on a shared filesystem or an object-store URI instead
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emodis_ray.config import Config, load_config
from emodis_ray.core.checkpoint import MODEL_FILE

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"  # the manifest the run trained on
REPORTS_FILE = "reports.jsonl"
BAD_CLIPS_FILE = "bad_clips.csv"


def write_run_info(out: Path, manifest: Path, manifest_hash: str, config_hash: str) -> None:
    """``run.json``: what `emodis evaluate` needs to find the data again."""
    (out / RUN_FILE).write_text(json.dumps({
        "manifest": os.path.abspath(manifest), "manifest_hash": manifest_hash, "config_hash": config_hash}))


def write_selection(out: Path, epoch: int, metric: str, mode: str, value: float | None) -> None:
    """Add to ``run.json`` which epoch ``model.pt`` holds and why."""
    info = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).exists() else {}
    info["model"] = {"epoch": int(epoch) + 1, "selected_by": metric, "mode": mode,
                     "value": None if value is None else float(value)}
    (out / RUN_FILE).write_text(json.dumps(info))


def run_manifest(run: Path, manifest: Path | None = None) -> Path:
    """The manifest a run trained on (from ``RUN/run.json``), unless one is given."""
    if manifest is not None:
        return manifest
    f = run / RUN_FILE
    if not f.exists():
        raise FileNotFoundError(f"{run}: no {RUN_FILE} to say which manifest it trained on; pass --manifest")
    return Path(json.loads(f.read_text())["manifest"])


def run_config(run: Path) -> Config:
    """The config of a finished run (one with a ``model.pt``)."""
    if not (run / MODEL_FILE).exists():
        raise FileNotFoundError(f"{run}: no {MODEL_FILE} — is it a finished `emodis train` run?")
    return load_config(run / CONFIG_FILE)


def read_reports(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dedupe_epochs(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch, the last report of each epoch wins, sorted by epoch."""
    by_epoch = {int(r["epoch"]): r for r in reports}
    return [by_epoch[e] for e in sorted(by_epoch)]


def format_row(row: dict[str, Any], epochs: int) -> str:
    """One console line per epoch; scores in percent, epochs counted from 1 (as in every output)."""
    m = lambda k: row.get(k, float("nan"))  # noqa: E731
    pc = lambda k: 100 * m(k)  # noqa: E731
    return (f"epoch {int(row['epoch']) + 1}/{epochs}  loss {m('train_loss'):.4f}  l_prim {m('train_l_prim'):.4f}"
            f"  | val % emotion F1 {pc('val_emo_f1'):.1f}  identity {pc('val_spk_acc'):.1f}"
            f"  | aux heads %: emotion F1 from spk {pc('val_aux_emo_f1'):.1f}  identity from emo "
            f"{pc('val_aux_spk_acc'):.1f}  | {m('train_epoch_time_s'):.1f} s, {m('train_clips_per_s'):.1f} clips/s")


def numbered_from_1(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as users see them: ``epoch`` counted from 1 (Ray Train's reports count from 0)."""
    return [{**r, "epoch": int(r["epoch"]) + 1} for r in rows]


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.json`` / ``metrics.csv``: one row per epoch, ``epoch`` counted from 1, scores as fractions."""
    import pandas as pd

    rows = numbered_from_1(rows)
    (out / "metrics.json").write_text(json.dumps(rows, indent=1))
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training curves per epoch: losses; validation emotion F1 and identity accuracy; aux-head leakage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    ep = [int(r["epoch"]) + 1 for r in rows]  # counted from 1, as on the console
    col = lambda k: [r.get(k, float("nan")) for r in rows]  # noqa: E731
    pct = lambda k: [100 * v for v in col(k)]  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for k in ("train_loss", "train_l_prim", "train_l_aux", "val_loss_emo", "val_loss_spk"):
        if k in rows[-1]:
            axes[0].plot(ep, col(k), marker=".", label=k)
    axes[0].set_title("losses")
    for k, label in (("val_emo_f1", "emotion macro-F1"), ("val_spk_acc", "identity accuracy")):
        axes[1].plot(ep, pct(k), marker=".", label=label)
    axes[1].set_title("validation (%)")
    axes[1].set_ylim(0, 100)
    for k, label in (("val_aux_emo_f1", "emotion F1 from speaker emb."),
                     ("val_aux_spk_acc", "identity acc. from emotion emb.")):
        axes[2].plot(ep, pct(k), marker=".", label=label)
    axes[2].set_title("aux heads, online leakage (%)")
    axes[2].set_ylim(0, 100)
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:  # a run may report none of a panel's metrics
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
