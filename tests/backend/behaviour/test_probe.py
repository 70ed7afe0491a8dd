"""Probes with honest baselines: splits, held-out AUROCs against scikit-learn, and the probes refitted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gemscope_widgets.backend.analysis.features import prompt_features
from gemscope_widgets.backend.behaviour.direction import behaviour_direction
from gemscope_widgets.backend.behaviour.heldout import (
    CV_BELOW,
    MIN_PER_SPLIT,
    auroc_interval,
    check_classes,
    folds,
)
from gemscope_widgets.backend.behaviour.probe import DENSE_PROBE, DIFF_MEANS, PROBES, SAE_PROBE, probe
from gemscope_widgets.errors import ProbeError
from gemscope_widgets.testing.calibrated import calibrated_sae

ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "duck", "mouse"]
POS = [f"The {a} sleeps in the warm barn." for a in ANIMALS]
NEG = [f"import {a} as module_{i}" for i, a in enumerate(ANIMALS)]


@pytest.fixture(scope="module")
def tiny_sae(tiny_model, tmp_path_factory):
    text = " ".join(POS + NEG) * 4
    return calibrated_sae(tiny_model, 2, width=256, l0=24, folder=tmp_path_factory.mktemp("probe-sae"), text=text,
                          window=32)


@pytest.fixture(scope="module")
def tiny_result(tiny_model, tiny_sae):
    return probe(tiny_model, tiny_sae, POS, NEG, k=4, seed=3, chat=False, progress=False, labels=lambda f: f"L{f}",
                 densities=torch.linspace(0, 1, 256))


def test_split_is_stratified_disjoint_and_seeded():
    y = np.array([1] * 40 + [0] * 40)
    one = folds(y, seed=7)
    assert len(one) == 1 and n_min_ok(one, y)
    assert set(one[0].train).isdisjoint(one[0].test) and len(one[0].train) + len(one[0].test) == 80
    assert (y[one[0].test] == 1).sum() == (y[one[0].test] == 0).sum() == 10
    again = folds(y, seed=7)
    assert np.array_equal(one[0].test, again[0].test)
    assert not np.array_equal(one[0].test, folds(y, seed=8)[0].test)
    small = np.array([1] * 10 + [0] * 10)
    parts = folds(small, seed=1)
    assert len(parts) == 5 and CV_BELOW > 10
    held = np.concatenate([p.test for p in parts])
    assert sorted(held.tolist()) == list(range(20))  # every prompt held out exactly once
    for p in parts:
        assert set(p.train).isdisjoint(p.test)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(parts, folds(small, seed=1)))


def n_min_ok(parts, y):
    return all(min((y[p.test] == c).sum(), (y[p.train] == c).sum()) >= MIN_PER_SPLIT for p in parts for c in (0, 1))


def test_bootstrap_interval_equals_brute_force():
    rng = np.random.default_rng(0)
    y = np.array([1] * 12 + [0] * 9)
    s = np.round(rng.normal(size=21) + y, 1)  # rounded: ties occur and count half
    low, high = auroc_interval(y, s, seed=5, n_bootstrap=200)
    draw = np.random.default_rng(5)
    pos, neg = s[y == 1], s[y == 0]
    cp = draw.multinomial(12, np.full(12, 1 / 12), size=200)
    cn = draw.multinomial(9, np.full(9, 1 / 9), size=200)
    values = [roc_auc_score([1] * 12 + [0] * 9, np.concatenate([np.repeat(pos, a), np.repeat(neg, b)]))
              for a, b in zip(cp, cn)]
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    assert low <= roc_auc_score(y, s) <= high


def test_aurocs_equal_sklearn_and_probes_refit_by_hand(tiny_model, tiny_sae, tiny_result):
    r = tiny_result
    y = r.labels
    assert r.scheme == "5-fold cross-validation" and len(r.prompts) == 20
    for d in r.detectors:
        assert d.auroc == pytest.approx(roc_auc_score(y, r.scores[d.name]), abs=1e-12)
        assert d.low <= d.auroc <= d.high
    # Oracle: the activations from prompt_features at the last token, and every probe refitted per fold.
    latents = np.stack([prompt_features(tiny_model, tiny_sae, p)[0].dense()[-1].numpy() for p in r.prompts])
    captured = []
    for p in r.prompts:
        with torch.no_grad():
            hs = tiny_model.model(input_ids=tiny_model.prompt(p).input_ids[None], output_hidden_states=True)
        captured.append(hs.hidden_states[3][0, -1].numpy())  # output of layer 2
    dense = np.stack(captured).astype(np.float64)
    expected = {name: np.zeros(len(y)) for name in PROBES}
    for part in r.folds:
        tr, te = part.train, part.test
        diff = latents[tr][y[tr] == 1].mean(0) - latents[tr][y[tr] == 0].mean(0)
        top = np.argsort(-np.abs(diff), kind="stable")[:4]
        fit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(latents[tr][:, top], y[tr])
        expected[SAE_PROBE][te] = fit.decision_function(latents[te][:, top])
        fit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(dense[tr], y[tr])
        expected[DENSE_PROBE][te] = fit.decision_function(dense[te])
        # The difference of means is behaviour_direction's, on the training prompts only.
        train_pos = [r.prompts[i] for i in tr if y[i] == 1]
        train_neg = [r.prompts[i] for i in tr if y[i] == 0]
        direction = behaviour_direction(tiny_model, train_pos, train_neg, layer=2, chat=False, progress=False)
        expected[DIFF_MEANS][te] = dense[te] @ direction.direction.double().numpy()
    for name in PROBES:
        np.testing.assert_allclose(r.scores[name], expected[name], rtol=2e-3, atol=2e-3)
        assert roc_auc_score(y, expected[name]) == pytest.approx(r.detector(name).auroc, abs=0.03)


def test_single_latents_scored_on_held_out_only(tiny_model, tiny_sae, tiny_result):
    r = tiny_result
    assert r.features and all(1 <= f.chosen_in <= len(r.folds) for f in r.features)
    latents = np.stack([prompt_features(tiny_model, tiny_sae, p)[0].dense()[-1].numpy() for p in r.prompts])
    for f in r.features:
        test, signed = [], []
        for part in r.folds:
            tr = part.train
            diff = latents[tr][r.labels[tr] == 1].mean(0) - latents[tr][r.labels[tr] == 0].mean(0)
            if f.feature in np.argsort(-np.abs(diff), kind="stable")[:4]:
                test.append(part.test)
                signed.append(np.sign(diff[f.feature]) * latents[part.test, f.feature])
        test = np.concatenate(test)
        assert len(test) == f.n_held_out
        assert f.auroc == pytest.approx(roc_auc_score(r.labels[test], np.concatenate(signed)), abs=1e-6)
        assert f.label == f"L{f.feature}" and f.density == pytest.approx(f.feature / 255)


def test_learning_curve_ends_at_the_full_fit(tiny_result):
    r = tiny_result
    assert r.curve_sizes.tolist() == [2, 4, 8]  # 8 training prompts per class in each of the 5 folds
    for name in PROBES:
        assert r.curve[name].shape == (3,) and np.all((r.curve[name] >= 0) & (r.curve[name] <= 1))
        assert r.curve[name][-1] == pytest.approx(r.detector(name).auroc, abs=1e-9)
    text = r.summary()
    assert "SAE probe (top 4 latents)" in text and "learning curve" in text and f"L{r.features[0].feature}" in text


def test_seed_reproduces_everything(tiny_model, tiny_sae, tiny_result):
    again = probe(tiny_model, tiny_sae, POS, NEG, k=4, seed=3, chat=False, progress=False)
    assert [d.auroc for d in again.detectors] == [d.auroc for d in tiny_result.detectors]
    assert again.top_features == tiny_result.top_features


def test_bad_input(tiny_model, tiny_sae):
    with pytest.raises(ProbeError, match="equal size"):
        probe(tiny_model, tiny_sae, POS, NEG[:-1], progress=False)
    with pytest.raises(ProbeError, match="too few"):
        probe(tiny_model, tiny_sae, POS[:3], NEG[:3], progress=False)
    with pytest.raises(ProbeError, match="position"):
        probe(tiny_model, tiny_sae, POS, NEG, position="middle", progress=False)
    with pytest.raises(ProbeError, match="k="):
        probe(tiny_model, tiny_sae, POS, NEG, k=0, progress=False)
    with pytest.raises(ProbeError, match="curve_sizes"):
        probe(tiny_model, tiny_sae, POS, NEG, curve_sizes=[1, 4], chat=False, progress=False)
    with pytest.raises(ProbeError, match="no negative prompt"):
        check_classes(np.array([1, 1, 1]), "held-out")
    with pytest.raises(ProbeError, match="only 1"):
        check_classes(np.array([1, 1, 0]), "training")


@pytest.mark.real_model
def test_real_model_probe_with_labels_and_densities(demo_scope_parts):
    from gemscope_widgets.backend.behaviour.prompt_sets import HARMFUL_REQUESTS, HARMLESS_REQUESTS
    from gemscope_widgets.scope import Scope

    gm, sae = demo_scope_parts
    scope = Scope(gm, sae)
    r = scope.probe(list(HARMFUL_REQUESTS[:8]), list(HARMLESS_REQUESTS[:8]), k=4, progress=False)
    density = scope.stats().density
    # The Scope's labels (automatic ones may be empty: a latent firing on and promoting no readable token).
    names = scope.labels().labels([f.feature for f in r.features])
    for f in r.features:
        assert f.label == names[f.feature] and f.density == pytest.approx(float(density[f.feature]))
    assert any(f.label for f in r.features)
    for d in r.detectors:
        assert d.auroc == pytest.approx(roc_auc_score(r.labels, r.scores[d.name]), abs=1e-12)
    assert r.direction is not None and r.direction.layer == sae.config.layer


def test_one_split_is_scored_on_its_held_out_part_only(tiny_model, tiny_sae):
    pos = [f"The {a} number {i} sleeps in the warm barn." for i in range(4) for a in ANIMALS][:CV_BELOW]
    neg = [f"import {a} as module_{i}" for i in range(4) for a in ANIMALS][:CV_BELOW]
    r = probe(tiny_model, tiny_sae, pos, neg, k=4, chat=False, progress=False)
    assert len(r.folds) == 1
    train, test = r.folds[0].train, r.folds[0].test
    assert np.array_equal(r.held_out, test)
    for d in r.detectors:
        assert d.n_held_out == len(test)
        assert d.auroc == pytest.approx(roc_auc_score(r.labels[test], r.scores[d.name][test]), abs=1e-12)
        assert np.isnan(r.scores[d.name][train]).all()
        fpr, tpr = r.roc(d.name)
        assert np.trapezoid(tpr, fpr) == pytest.approx(d.auroc, abs=1e-12)
    f = r.features[0]
    fpr, tpr = r.roc(f.feature)
    assert np.trapezoid(tpr, fpr) == pytest.approx(f.auroc, abs=1e-12)
    assert r.fold_features == [r.top_features]
    with pytest.raises(ProbeError, match="No ROC curve"):
        r.roc(10**6)
