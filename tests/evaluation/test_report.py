import numpy as np
import pytest
from helpers.evaluation import make_evaluation, noisy
from matplotlib.image import imread

from emodis_ray.data.labels import EMOTIONS
from emodis_ray.evaluation.records import compare
from emodis_ray.evaluation.report import (
    METHOD_LABELS,
    baseline_markdown,
    confusion_png,
    plot_fig3a,
    plot_fig3b,
    significance_markdown,
    table1_markdown,
    write_report,
)
from emodis_ray.evaluation.stats import stuart_maxwell

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIMS = (256, 64)
METHODS = ("stl-emotion", "stl-speaker", "mtl", "gr", "alt", "conf")


def grid() -> list:
    return [make_evaluation(m, d, seed=i) for i, (m, d) in enumerate((m, d) for m in METHODS for d in DIMS)]


def assert_png(path) -> None:
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_table1_has_a_row_per_method_and_a_column_per_size():
    evals = grid()
    md = table1_markdown(evals)
    lines = md.strip().splitlines()
    assert lines[0] == "| Method | d_spk = 256 | d_spk = 64 |"
    assert len(lines) == 2 + len(METHODS)
    mtl64 = next(e for e in evals if e.method == "mtl" and e.spk_dim == 64)
    assert "| MTL baseline | " in md and mtl64.spk_acc.fmt() in md
    assert next(row for row in lines if row.startswith("| STL (emotion)")).endswith("| — | — |")  # no identity head
    # Several runs of one cell (seeds) are summarised as mean ± sd.
    two = [make_evaluation("mtl", 64, seed=0), make_evaluation("mtl", 64, seed=1)]
    assert "(2 runs)" in table1_markdown([e.to_dict() for e in two])  # plain dicts are accepted too


def test_write_report_renders_markdown_and_pngs(tmp_path):
    evals = grid()
    rng = np.random.default_rng(0)
    emo = rng.integers(0, 5, 200)
    mtl = next(e for e in evals if e.method == "mtl" and e.spk_dim == 64)
    gr = next(e for e in evals if e.method == "gr" and e.spk_dim == 64)
    comparisons = [compare(gr, mtl, emo, noisy(emo, 5, 0.7, 1), noisy(emo, 5, 0.7, 2), n_boot=100),
                   compare(mtl, mtl, emo, emo, emo.copy(), n_boot=100)]  # identical predictions: singular
    path = write_report(tmp_path / "rep", [e.to_dict() for e in evals], title="Grid", comparisons=comparisons)
    assert path == tmp_path / "rep" / "report.md"
    md = path.read_text()
    assert md.startswith("# Grid\n")
    for m in METHODS:
        assert f"| {METHOD_LABELS[m]} |" in md
    for e in evals:
        assert f"| {e.run} |" in md  # the all-runs table
    assert "![Fig. 3a](fig3a.png)" in md and "![Fig. 3b](fig3b.png)" in md
    assert "singular" in md and "α = 0.01" in md
    assert "*Singular table*" in md and "cannot be inverted" in md  # a singular test is explained, once
    assert md.count("*Singular table*") == 1
    assert "Disentangling methods vs the MTL baseline" in md
    for name in ("fig3a.png", "fig3b.png", "confusion_mtl-64.png"):
        assert_png(tmp_path / "rep" / name)
    stl_speaker = next(e for e in evals if e.method == "stl-speaker")
    assert not (tmp_path / "rep" / f"confusion_{stl_speaker.run}.png").exists()  # no emotion head
    with pytest.raises(ValueError, match="nothing to report"):
        write_report(tmp_path / "empty", [])


def test_plots_and_confusion_png(tmp_path):
    evals = grid()
    assert_png(plot_fig3a(evals, tmp_path / "a.png"))
    assert_png(plot_fig3b(evals, tmp_path / "sub" / "b.png"))
    cm = np.array([[5, 1, 0, 0, 0], [0, 3, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 2, 0], [0, 0, 1, 0, 4]])
    assert_png(confusion_png(cm, EMOTIONS, tmp_path / "cm.png"))


def test_significance_and_baseline_tables():
    a = np.array([0, 1, 2, 3, 4] * 40)
    b = noisy(a, 5, 0.7, seed=0)
    b[a == 4] = 0  # B never predicts class 4: the margins differ
    gr, mtl = make_evaluation("gr", 64, seed=1), make_evaluation("mtl", 64, seed=2)
    c = compare(gr, mtl, a, a, b, n_boot=100)
    sm = stuart_maxwell(a, b)
    md = significance_markdown([c])
    row = md.strip().splitlines()[-1]
    assert row.startswith("| GR | 64 | mtl-64 |") and f"{sm.statistic:.2f}" in row and "| yes |" in row
    base = baseline_markdown([gr, mtl])
    assert base.strip().splitlines()[-1].startswith("| GR (gr-64) | 64 |")
