import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from emodis_ray.data.labels import majority_chance_f1
from emodis_ray.evaluation.leakage import measure_leakage
from emodis_ray.evaluation.probe import train_probe

torch.set_num_threads(1)
SPEAKERS = 12
PRIOR = [0.4, 0.2, 0.15, 0.15, 0.1]  # skewed, neutral dominant as in EmoVox


def make_split(n: int, rng: np.random.Generator, emo_in_spk: float, spk_in_emo: float,
               d_emo: int = 96, d_spk: int = 32) -> dict[str, np.ndarray]:
    """Emotion embeddings carry emotion (and ``spk_in_emo`` of identity); speaker embeddings carry identity
    (and ``emo_in_spk`` of emotion). Class patterns are fixed so that every split shares them."""
    pat = np.random.default_rng(1234)
    emo_pat_e, spk_pat_e = pat.normal(size=(5, d_emo)), pat.normal(size=(SPEAKERS, d_emo))
    emo_pat_s, spk_pat_s = pat.normal(size=(5, d_spk)), pat.normal(size=(SPEAKERS, d_spk))
    emo, spk = rng.choice(5, n, p=PRIOR), rng.integers(0, SPEAKERS, n)
    emo_emb = emo_pat_e[emo] + spk_in_emo * spk_pat_e[spk] + rng.normal(size=(n, d_emo))
    spk_emb = spk_pat_s[spk] + emo_in_spk * emo_pat_s[emo] + rng.normal(size=(n, d_spk))
    return {"emo_emb": emo_emb.astype(np.float32), "spk_emb": spk_emb.astype(np.float32),
            "emotion": emo, "speaker": spk}


def make_emb(emo_in_spk: float, spk_in_emo: float, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {s: make_split(n, rng, emo_in_spk, spk_in_emo) for s, n in (("train", 600), ("val", 200), ("test", 300))}


def weights(p) -> list[torch.Tensor]:
    return [t.clone() for t in p.net.state_dict().values()]


def test_probe_metrics_equal_sklearn():
    emb = make_emb(1.0, 1.0)
    tr, va, te = emb["train"], emb["val"], emb["test"]
    p = train_probe(tr["spk_emb"], tr["emotion"], va["spk_emb"], va["emotion"], 5, metric="f1", max_epochs=30)
    yhat = p.predict(te["spk_emb"])
    assert yhat.dtype == np.int64 and yhat.shape == (300,)
    expected = f1_score(te["emotion"], yhat, average="macro", labels=list(range(5)), zero_division=0)
    assert p.score(te["spk_emb"], te["emotion"]) == pytest.approx(expected)
    val_pred = p.predict(va["spk_emb"])
    assert p.best_val == pytest.approx(f1_score(va["emotion"], val_pred, average="macro", labels=list(range(5)),
                                                zero_division=0))  # the kept weights are the best epoch's
    leak = measure_leakage({"train": tr, "test": te}, scored="test", seeds=(0, 1), n_boot=0, max_epochs=30)
    d = leak.directions["emo_from_spk"]
    for score, pred in zip(d.probe_seeds, d.probe_pred, strict=True):
        assert score == pytest.approx(f1_score(te["emotion"], pred, average="macro", labels=list(range(5)),
                                               zero_division=0))
    assert d.probe == pytest.approx(np.mean(d.probe_seeds))
    s = leak.directions["spk_from_emo"]
    assert s.probe_seeds[0] == pytest.approx(accuracy_score(te["speaker"], s.probe_pred[0]))
    proba = p.predict_proba(te["spk_emb"])
    assert proba.shape == (300, 5) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.array_equal(proba.argmax(1), yhat)


def test_probe_on_separable_embeddings_is_near_perfect():
    leak = measure_leakage(make_emb(emo_in_spk=3.0, spk_in_emo=3.0), scored="test", seeds=(0,), n_boot=0)
    assert leak.directions["emo_from_spk"].probe > 0.9
    assert leak.directions["spk_from_emo"].probe > 0.9


def test_probe_on_uninformative_embeddings_is_near_chance():
    emb = make_emb(emo_in_spk=0.0, spk_in_emo=0.0)
    leak = measure_leakage(emb, scored="test", seeds=(0, 1, 2), n_boot=0)
    te = emb["test"]
    # No per-speaker priors here (emotion and speaker are drawn independently): the probe and its floors
    # stay near majority chance (a low bar for macro-F1: guessing with the priors scores ~1/K = 0.2 here).
    e, s = leak.directions["emo_from_spk"], leak.directions["spk_from_emo"]
    assert e.probe < majority_chance_f1(te["emotion"]) + 0.12
    assert abs(e.probe - e.floor_shuffled) < 0.1 and e.above_floor < 0.1
    assert s.probe < 1 / SPEAKERS + 0.06 and s.floor_shuffled < 1 / SPEAKERS + 0.06


def test_probe_never_sees_the_scored_labels():
    emb = make_emb(1.0, 1.0)
    emb = {"train": emb["train"], "test": emb["test"]}
    clean = measure_leakage(emb, scored="test", seeds=(3,), n_boot=0, max_epochs=20)
    rng = np.random.default_rng(0)
    poisoned = {**emb, "test": {**emb["test"], "emotion": rng.permutation(emb["test"]["emotion"]),
                                "speaker": np.full_like(emb["test"]["speaker"], SPEAKERS - 1)}}
    dirty = measure_leakage(poisoned, scored="test", seeds=(3,), n_boot=0, max_epochs=20,
                            num_speakers=SPEAKERS)
    for k in ("emo_from_spk", "spk_from_emo"):
        a, b = clean.directions[k], dirty.directions[k]
        assert np.array_equal(a.probe_pred[0], b.probe_pred[0])  # the probe is the same: labels only score it
    assert dirty.directions["emo_from_spk"].probe != clean.directions["emo_from_spk"].probe


def test_train_probe_deterministic_standardised_early_stopped():
    emb = make_emb(0.5, 0.5)
    tr, va = emb["train"], emb["val"]
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    args = (tr["emo_emb"], tr["speaker"], va["emo_emb"], va["speaker"], SPEAKERS)
    a = train_probe(*args, seed=7, metric="acc", patience=5)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    b = train_probe(*args, seed=7, metric="acc", patience=5)
    c = train_probe(*args, seed=8, metric="acc", patience=5, max_epochs=3)
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(weights(a), weights(c), strict=True))
    assert np.allclose(a.mean, tr["emo_emb"].mean(0)) and np.allclose(a.std, tr["emo_emb"].std(0), rtol=1e-4)
    assert a.best_val == max(a.history) and a.history.index(a.best_val) == a.best_epoch
    assert len(a.history) <= a.best_epoch + 5 + 1 and len(c.history) == 3


def test_train_probe_rejects_bad_inputs():
    x, y = np.zeros((10, 4), np.float32), np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="labels must lie"):
        train_probe(x, y + 5, x, y, num_classes=5)
    with pytest.raises(ValueError, match="unknown probe metric"):
        train_probe(x, y, x, y, num_classes=5, metric="auc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        train_probe(x, y, x[:, :3], y, num_classes=5)
    with pytest.raises(KeyError, match="speaker"):
        measure_leakage({"train": {"emo_emb": x, "spk_emb": x, "emotion": y}, "test": {}}, seeds=(0,))
    emb = make_emb(1.0, 1.0)
    with pytest.raises(KeyError, match="test"):
        measure_leakage({"train": emb["train"], "val": emb["val"]}, seeds=(0,), max_epochs=1)


def test_train_probe_can_stop_on_the_held_out_cross_entropy():
    emb = make_emb(0.5, 0.5)
    tr, va = emb["train"], emb["val"]
    p = train_probe(tr["spk_emb"], tr["emotion"], va["spk_emb"], va["emotion"], 5, seed=1, stop_on="logloss")
    assert p.best_val == max(p.history) < 0  # minus the cross-entropy, best epoch kept
    logits = torch.from_numpy(p.logits(va["spk_emb"]))
    ce = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(va["emotion"].astype(np.int64))))
    assert -ce == pytest.approx(p.best_val, abs=1e-5)
