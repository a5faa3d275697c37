"""Leakage above the identity-only floor: the floors against hand computations, the shuffle, the probes'
held-out rows, and the measure on embeddings built to carry identity only or the clip's emotion too."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import f1_score

from emodis_ray.core.scores import prior_cross_entropy
from emodis_ray.evaluation import leakage as leakage_mod
from emodis_ray.evaluation.leakage import (
    above_floor,
    apply_map,
    holdout_split,
    map_scores,
    measure_direction,
    measure_leakage,
    prior_map,
    shuffle_within,
)


def sk_f1(y: np.ndarray, yhat: np.ndarray, k: int = 5) -> float:
    return float(f1_score(y, yhat, average="macro", labels=list(range(k)), zero_division=0))


def table_clips(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Clips from a speaker x emotion count table: (speaker, emotion) per clip."""
    s, e = [], []
    for spk, row in enumerate(table):
        for emo, n in enumerate(row):
            s += [spk] * n
            e += [emo] * n
    return np.asarray(s), np.asarray(e)


# A table where each speaker's majority is neutral (class 0), so plain argmax p(e | s) scores one class only,
# while the best identity-only map gives each speaker the class it is relatively richest in.
TABLE = [[10, 6, 0, 1, 0],
         [10, 0, 6, 0, 1],
         [10, 1, 0, 6, 0],
         [12, 0, 1, 0, 0]]


def test_prior_floor_is_the_best_identity_only_map_by_hand() -> None:
    spk, emo = table_clips(TABLE)
    best = max(sk_f1(emo, np.asarray(m)[spk]) for m in itertools.product(range(5), repeat=len(TABLE)))
    mapping = prior_map(spk, emo, 5, "f1")
    assert sk_f1(emo, apply_map(mapping, spk, 0)) == pytest.approx(best)
    majority = np.asarray(TABLE).argmax(1)[spk]  # plain argmax p(e | s): neutral for everyone
    assert sk_f1(emo, majority) < best
    assert mapping == {0: 1, 1: 2, 2: 3, 3: 0}  # the relatively richest class of each speaker


def test_prior_floor_coordinate_ascent_matches_exhaustive_search(monkeypatch: pytest.MonkeyPatch) -> None:
    spk, emo = table_clips(TABLE)
    exhaustive = prior_map(spk, emo, 5, "f1")
    monkeypatch.setattr(leakage_mod, "EXHAUSTIVE_MAPS", 1)  # force the lift start + coordinate ascent
    ascent = prior_map(spk, emo, 5, "f1")
    assert sk_f1(emo, apply_map(ascent, spk, 0)) == pytest.approx(sk_f1(emo, apply_map(exhaustive, spk, 0)))


def test_map_scores_equal_sklearn_on_the_clips() -> None:
    """The scores from the count table equal sklearn's on the clips themselves, for thousands of maps,
    with classes absent from the clips and classes never predicted among them."""
    rng = np.random.default_rng(0)
    for groups, k in [(4, 5), (6, 5), (3, 8)]:
        counts = rng.integers(0, 6, size=(groups, k))
        counts[:, -1] = 0  # a class no clip has
        spk, emo = table_clips(counts.tolist())
        maps = rng.integers(0, k, size=(300, groups))
        fast = map_scores(counts, maps)
        slow = [sk_f1(emo, m[spk], k) for m in maps]
        assert np.allclose(fast, slow, rtol=0, atol=1e-12)
        acc = map_scores(counts, maps, "acc")
        assert np.allclose(acc, [np.mean(emo == m[spk]) for m in maps], rtol=0, atol=1e-12)


def test_prior_floor_for_accuracy_is_each_groups_majority() -> None:
    spk, emo = table_clips(TABLE)
    mapping = prior_map(emo, spk, 4, "acc")  # groups: emotion; labels: speaker
    assert mapping == {c: int(np.asarray(TABLE)[:, c].argmax()) for c in range(5)}


def test_prior_floor_of_a_direction_scores_the_train_map_on_the_scored_split() -> None:
    spk, emo = table_clips(TABLE)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(spk), 4)).astype(np.float32)
    test_spk, test_emo = table_clips([[3, 2, 0, 0, 1], [3, 0, 2, 1, 0], [2, 1, 0, 2, 0], [4, 0, 0, 0, 1]])
    xt = rng.normal(size=(len(test_spk), 4)).astype(np.float32)
    d = measure_direction("emo_from_spk", x, emo, spk, xt, test_emo, test_spk, 5, "f1", seeds=(0,), n_boot=0,
                          max_epochs=3)
    by_hand = sk_f1(test_emo, np.asarray([1, 2, 3, 0])[test_spk])
    assert d.floor_prior == pytest.approx(by_hand)


def test_shuffle_keeps_each_speakers_multiset_of_embeddings() -> None:
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 6, 200)
    x = rng.normal(size=(200, 3))
    perm = shuffle_within(groups, 5)
    assert sorted(perm) == list(range(200)) and not np.array_equal(perm, np.arange(200))
    assert np.array_equal(groups[perm], groups)  # every row stays with its speaker
    for g in range(6):
        a, b = x[groups == g], x[perm][groups == g]
        assert np.array_equal(a[np.lexsort(a.T)], b[np.lexsort(b.T)])


def test_above_floor_and_prior_cross_entropy_by_hand() -> None:
    assert above_floor(0.6, 0.2) == pytest.approx(0.5)
    assert above_floor(0.1, 0.2) == 0.0 and above_floor(0.9, 1.0) == 0.0
    g, y = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    # p(y | g=0) = (2+1, 1+1)/5, p(y | g=1) = (0+1, 1+1)/3 with add-one counts
    ce = prior_cross_entropy(g, y, np.array([0, 1]), np.array([1, 1]), 2)
    assert ce == pytest.approx(-(np.log(2 / 5) + np.log(2 / 3)) / 2)


def _clips(n_spk: int, per: int, seed: int, carry_emotion: float) -> dict[str, np.ndarray]:
    """Skewed per-speaker emotion priors; the "speaker embedding" is the speaker's code plus noise, plus
    ``carry_emotion`` times the clip's emotion code. The emotion embedding is the emotion's code (no identity)."""
    rng = np.random.default_rng(seed)
    speaker = np.repeat(np.arange(n_spk), per)
    priors = np.random.default_rng(97).dirichlet(np.full(5, 0.3), size=n_spk)  # each person's, in every split
    emotion = np.asarray([rng.choice(5, p=priors[s]) for s in speaker])
    spk_code = np.random.default_rng(99).normal(size=(n_spk, 16))
    emo_code = np.random.default_rng(98).normal(size=(5, 16))
    spk_emb = spk_code[speaker] + 0.1 * rng.normal(size=(len(speaker), 16)) + carry_emotion * emo_code[emotion]
    emo_emb = emo_code[emotion] + 0.1 * rng.normal(size=(len(speaker), 16))
    return {"spk_emb": spk_emb.astype(np.float32), "emo_emb": emo_emb.astype(np.float32),
            "emotion": emotion, "speaker": speaker}


def _emb(carry_emotion: float) -> dict[str, dict[str, np.ndarray]]:
    return {"train": _clips(8, 60, 0, carry_emotion), "test": _clips(8, 40, 1, carry_emotion)}


def test_identity_only_embeddings_leak_nothing_above_the_floor() -> None:
    rep = measure_leakage(_emb(0.0), scored="test", seeds=(0, 1, 2), n_boot=200)
    d = rep.directions["emo_from_spk"]
    assert d.probe > d.chance + 0.1  # far above majority chance: the priors alone predict emotion
    assert d.above_floor < 0.05 and rep.headline == d.above_floor
    assert d.above_floor_ci is not None and d.above_floor_ci[0] <= 0.05


def test_embeddings_that_carry_the_emotion_leak_clearly() -> None:
    rep = measure_leakage(_emb(1.5), scored="test", seeds=(0, 1, 2), n_boot=200)
    d = rep.directions["emo_from_spk"]
    assert d.above_floor > 0.5 and d.above_floor_ci[0] > 0.3
    assert d.floor_shuffled < d.probe and d.probe_logloss < d.floor_shuffled_logloss
    assert rep.targets == ("emo_from_spk",) and rep.mean_both != rep.headline


def test_probes_early_stop_on_held_out_train_rows_never_on_the_scored_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = _emb(1.0)
    seen: list[np.ndarray] = []
    real = leakage_mod.train_probe

    def spy(x_train, y_train, x_val, y_val, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(np.asarray(x_val))
        return real(x_train, y_train, x_val, y_val, *a, **k)

    monkeypatch.setattr(leakage_mod, "train_probe", spy)
    measure_leakage(emb, scored="test", seeds=(0, 1), n_boot=0, max_epochs=2)
    assert len(seen) == 2 * 2 * 2  # 2 directions x 2 seeds x (probe, shuffled floor)
    train_rows = {r.tobytes() for k in ("spk_emb", "emo_emb") for r in emb["train"][k]}
    scored_rows = {r.tobytes() for k in ("spk_emb", "emo_emb") for r in emb["test"][k]}
    for x_val in seen:
        rows = {r.tobytes() for r in x_val}
        assert rows <= train_rows and not rows & scored_rows
    fit, hold = holdout_split(480, 0.2, 0)
    assert len(hold) == 96 and not set(fit) & set(hold) and len(fit) + len(hold) == 480


def test_the_other_direction_and_both() -> None:
    rep = measure_leakage(_emb(0.0), scored="test", method_direction="both", seeds=(0,), n_boot=100)
    assert rep.targets == ("emo_from_spk", "spk_from_emo")
    assert rep.headline == pytest.approx(rep.mean_both)
    spk = rep.directions["spk_from_emo"]
    assert spk.metric == "acc" and spk.floor_prior <= spk.probe + 0.05  # the emotion embedding has no identity
    lo, hi = rep.headline_ci()
    assert lo <= rep.headline <= hi
    with pytest.raises(ValueError, match="method direction"):
        measure_leakage(_emb(0.0), method_direction="sideways")


def test_stopping_on_held_out_cross_entropy_is_steadier_across_probe_seeds() -> None:
    """On ~80 held-out rows a macro-F1 stops the probe early and at random; the cross-entropy does not."""
    emb = {"train": _clips(12, 32, 0, 0.0), "test": _clips(12, 55, 1, 0.0)}
    sd = {}
    for stop in ("score", "logloss"):
        d = measure_leakage(emb, scored="test", seeds=range(5), n_boot=0, stop_on=stop).directions["emo_from_spk"]
        sd[stop] = float(np.std(d.probe_seeds, ddof=1))
    assert sd["logloss"] < sd["score"] / 2, sd


def test_shuffled_floor_of_identity_only_embeddings_is_the_speakers_majority_by_hand() -> None:
    """One-hot speaker embeddings: shuffling within speakers changes nothing, and a cross-entropy probe that
    knows only the speaker predicts each speaker's most frequent training emotion."""
    spk, emo = table_clips(TABLE)
    x = np.eye(len(TABLE), dtype=np.float32)[spk]
    test_spk, test_emo = table_clips([[5, 3, 1, 1, 0], [4, 1, 3, 0, 1], [6, 0, 1, 3, 0], [5, 1, 0, 1, 1]])
    xt = np.eye(len(TABLE), dtype=np.float32)[test_spk]
    d = measure_direction("emo_from_spk", x, emo, spk, xt, test_emo, test_spk, 5, "f1", seeds=(0, 1), n_boot=0,
                          lr=1e-2)
    by_hand = sk_f1(test_emo, np.asarray(TABLE).argmax(1)[test_spk])  # every speaker's majority: neutral
    assert d.floor_shuffled == pytest.approx(by_hand) and d.probe == pytest.approx(by_hand)
    assert d.above_floor == 0.0
