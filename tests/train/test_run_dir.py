"""The run folder as users read it: epochs counted from 1 and scores in percent, on the console and in files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emodis_ray.train.run_dir import format_row, write_metrics

ROWS = [{"epoch": 0, "train_loss": 1.5, "train_l_prim": 1.2, "val_emo_f1": 0.4123, "val_spk_acc": 0.75,
         "val_aux_emo_f1": 0.2, "val_aux_spk_acc": 0.1, "train_epoch_time_s": 3.0, "train_clips_per_s": 12.0},
        {"epoch": 1, "train_loss": 1.1, "val_emo_f1": 0.5}]


def test_the_epoch_line_counts_from_1_and_shows_percent() -> None:
    line = format_row(ROWS[0], epochs=10)
    assert line.startswith("epoch 1/10 ")
    assert "emotion F1 41.2" in line and "identity 75.0" in line and "0.412" not in line


def test_metrics_files_count_epochs_from_1(tmp_path: Path) -> None:
    write_metrics(tmp_path, ROWS)
    assert [r["epoch"] for r in json.loads((tmp_path / "metrics.json").read_text())] == [1, 2]
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert ROWS[0]["epoch"] == 0  # the caller's rows (Ray's reports, counted from 0) are left as they are
