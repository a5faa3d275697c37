import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from emodis_ray.data.labels import majority_chance_f1
from emodis_ray.evaluation import probe as probe_mod
from emodis_ray.evaluation.probe import run_probes, train_probe

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
    res = run_probes(emb, seed=0, max_epochs=30)
    assert res.emo_from_spk_f1 == pytest.approx(
        f1_score(te["emotion"], res.emo_from_spk_pred, average="macro", labels=list(range(5)), zero_division=0))
    assert res.spk_from_emo_acc == pytest.approx(accuracy_score(te["speaker"], res.spk_from_emo_pred))
    proba = res.emo_probe.predict_proba(te["spk_emb"])
    assert proba.shape == (300, 5) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.array_equal(proba.argmax(1), res.emo_from_spk_pred)


def test_probe_on_separable_embeddings_is_near_perfect():
    res = run_probes(make_emb(emo_in_spk=3.0, spk_in_emo=3.0), seed=0)
    assert res.emo_from_spk_f1 > 0.9
    assert res.spk_from_emo_acc > 0.9


def test_probe_on_uninformative_embeddings_is_near_chance():
    emb = make_emb(emo_in_spk=0.0, spk_in_emo=0.0)
    res = run_probes(emb, seed=0, null_baseline=True)
    te = emb["test"]
    # Majority-class chance is a low bar for macro-F1 (guessing with the priors scores ~1/K = 0.2 here);
    # the probe must stay near it and near the same probe trained on permuted labels.
    assert res.emo_from_spk_f1 < majority_chance_f1(te["emotion"]) + 0.12
    assert abs(res.emo_from_spk_f1 - res.emo_null_f1) < 0.1
    assert res.spk_from_emo_acc < 1 / SPEAKERS + 0.06
    assert res.spk_null_acc < 1 / SPEAKERS + 0.06


def test_probe_never_sees_test_labels():
    emb = make_emb(1.0, 1.0)
    clean = run_probes(emb, seed=3, max_epochs=20)
    rng = np.random.default_rng(0)
    poisoned = {**emb, "test": {**emb["test"], "emotion": rng.permutation(emb["test"]["emotion"]),
                                "speaker": np.full_like(emb["test"]["speaker"], 999)}}
    dirty = run_probes(poisoned, seed=3, max_epochs=20)
    for a, b in ((clean.emo_probe, dirty.emo_probe), (clean.spk_probe, dirty.spk_probe)):
        assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))
        assert a.history == b.history
    assert np.array_equal(clean.emo_from_spk_pred, dirty.emo_from_spk_pred)
    assert np.array_equal(clean.spk_from_emo_pred, dirty.spk_from_emo_pred)
    assert dirty.spk_from_emo_acc == 0.0  # the poisoned labels are used for scoring only


def test_train_probe_is_given_train_and_val_arrays_only(monkeypatch):
    emb = make_emb(1.0, 1.0)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return train_probe(*args, **kwargs)

    monkeypatch.setattr(probe_mod, "train_probe", spy)
    probe_mod.run_probes(emb, seed=0, max_epochs=5, null_baseline=True)
    assert len(calls) == 4
    test_arrays = list(emb["test"].values())
    for args in calls:
        for a in args[:4]:
            assert not any(np.shares_memory(a, t) for t in test_arrays)
        assert len(args[0]) == 600 and len(args[2]) == 200  # train, then val


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
    with pytest.raises(KeyError, match="lacks speaker"):
        run_probes({"train": {"emo_emb": x, "spk_emb": x, "emotion": y}, "val": {}}, seed=0)
    emb = make_emb(1.0, 1.0)
    with pytest.raises(KeyError, match="no 'test' split"):
        run_probes({"train": emb["train"], "val": emb["val"]}, seed=0, max_epochs=1)
