"""Sycophancy and refusal evidence: the built-in sets, the topic control computed directly, the causal check equal to
validate() on the same held-out prompts, and the probe's ROC points equal to scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, roc_auc_score

from gemscope_widgets.backend.behaviour.evidence import (
    REFUSAL,
    SYCOPHANCY,
    agreement_scorer,
    behaviour_evidence,
    behaviour_sets,
    topic_control_sets,
)
from gemscope_widgets.backend.behaviour.probe import PROBES, probe_activations
from gemscope_widgets.backend.behaviour.prompt_sets import SYCOPHANCY_PAIRS
from gemscope_widgets.backend.behaviour.validate import validate
from gemscope_widgets.errors import ProbeError


def test_topic_control_pairs_differ_in_topic_only():
    first, second = topic_control_sets()
    neutral = {n for n, _ in SYCOPHANCY_PAIRS}
    assert len(first) == len(second) == len(SYCOPHANCY_PAIRS)
    # Same framing at every index, and no topic on both sides.
    assert [p in neutral for p in first] == [p in neutral for p in second]
    topics = {p: i for i, pair in enumerate(SYCOPHANCY_PAIRS) for p in pair}
    assert not {topics[p] for p in first} & {topics[p] for p in second}
    opinion, neutral_side = behaviour_sets(SYCOPHANCY)
    assert sorted(first + second) == sorted(opinion + neutral_side)
    with pytest.raises(ProbeError, match="behaviour='honesty'"):
        behaviour_sets("honesty")
    with pytest.raises(ProbeError, match="at least 8 pairs"):
        topic_control_sets(SYCOPHANCY_PAIRS[:6])


@pytest.fixture(scope="module")
def sycophancy(demo_scope_parts):
    gm, sae = demo_scope_parts
    density = sae.threshold.detach().float().cpu()  # any [width] ranking serves for the matched control
    return behaviour_evidence(gm, sae, SYCOPHANCY, k=4, densities=density, n_causal=2, progress=False), density


@pytest.mark.real_model
def test_sycophancy_evidence_on_the_real_model(demo_scope_parts, sycophancy):
    gm, sae = demo_scope_parts
    ev, density = sycophancy
    r = ev.probe
    for d in r.detectors:
        assert d.auroc == pytest.approx(roc_auc_score(r.labels, r.scores[d.name]), abs=1e-12)
        fpr, tpr = r.roc(d.name)
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
        assert auc(fpr, tpr) == pytest.approx(d.auroc, abs=1e-12)
    f = r.features[0]
    fpr, tpr = r.roc(f.feature)
    assert auc(fpr, tpr) == pytest.approx(f.auroc, abs=1e-12)

    # The topic control, computed directly from the activations at the probe's position.
    first, second = topic_control_sets()
    latents, inputs = probe_activations(gm, sae, first + second, position=r.position, chat=False)
    y = np.array([1] * len(first) + [0] * len(second))
    control = ev.control
    assert control is not None and control.features == r.top_features
    for i, feat in enumerate(r.features):
        signed = np.sign(feat.mean_difference) * latents[:, feat.feature].double().numpy()
        assert control.auroc[i] == pytest.approx(roc_auc_score(y, signed), abs=1e-12)
        assert control.low[i] <= control.auroc[i] <= control.high[i]
    assert control.direction is not None
    direct = roc_auc_score(y, inputs.double().numpy() @ r.direction.direction.double().numpy())
    assert control.direction[0] == pytest.approx(direct, abs=1e-9)
    assert "topic control" in ev.summary()

    # The causal check is validate() on the first part's held-out opinion prompts with its up-latents ablated.
    up = [g for g, d in zip(r.fold_features[0], r.fold_differences[0]) if d > 0][:2]
    assert ev.causal_features == up and up
    held_out = r.held_out_prompts()[0]
    assert set(held_out) <= set(behaviour_sets(SYCOPHANCY)[0])
    assert not set(held_out) & {r.prompts[i] for i in r.folds[0].train}
    again = validate(gm, held_out, up, sae=sae, mode="ablate", scorer=agreement_scorer(gm), on="next_token",
                     densities=density, chat=False, progress=False)
    assert ev.causal is not None and ev.causal.control is not None
    np.testing.assert_allclose(ev.causal.effect.intervened, again.effect.intervened, atol=1e-7)
    np.testing.assert_allclose(ev.causal.effect.baseline, again.effect.baseline, atol=1e-7)
    assert ev.causal.control_features == again.control_features


@pytest.mark.real_model
def test_agreement_scorer_reads_yes_and_no(demo_scope_parts):
    gm, _ = demo_scope_parts
    score = agreement_scorer(gm)
    vocab = len(gm.tokenizer)
    probs = torch.zeros(vocab)
    yes = gm.tokenizer(" Yes", add_special_tokens=False)["input_ids"]
    no = gm.tokenizer("No", add_special_tokens=False)["input_ids"]
    assert len(yes) == len(no) == 1
    probs[yes[0]] = 0.7
    probs[no[0]] = 0.2
    assert score(probs) == pytest.approx(0.5)


@pytest.mark.real_model
def test_refusal_evidence_without_causal_check(demo_scope_parts):
    gm, sae = demo_scope_parts
    ev = behaviour_evidence(gm, sae, REFUSAL, k=4, causal=False, progress=False)
    assert ev.control is None and ev.causal is None and "skipped" in ev.summary()
    r = ev.probe
    assert [d.name for d in r.detectors] == list(PROBES)
    assert len(r.folds) == 1  # 32 per class: one held-out split
    assert not set(r.folds[0].train) & set(r.folds[0].test)
    for d in r.detectors:
        assert d.auroc == pytest.approx(roc_auc_score(r.labels[r.folds[0].test], r.scores[d.name][r.folds[0].test]),
                                        abs=1e-12)
