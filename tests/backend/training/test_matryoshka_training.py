"""The nested-prefix (Matryoshka) objective of the training loop, on the tiny random Gemma 3."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gemscope_widgets.backend.analysis.evaluation import fvu
from gemscope_widgets.backend.analysis.matryoshka import prefix_curve
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.stats.corpus import default_corpus
from gemscope_widgets.backend.training.activations import collect_activations, token_windows
from gemscope_widgets.backend.training.fit import fit_jumprelu
from gemscope_widgets.backend.training.train import MATRYOSHKA_KEY, hook_point, train_sae
from gemscope_widgets.errors import MatryoshkaError, TrainingError

LAYER, WIDTH, TARGET_L0 = 1, 128, 8
GROUPS = (16, 64, WIDTH)
TRAIN = {"width": WIDTH, "target_l0": TARGET_L0, "n_tokens": 6000, "steps": 200, "batch_size": 256, "ctx": 64}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return default_corpus(max_docs=400)


@pytest.fixture(scope="module")
def acts(tiny_model, corpus) -> torch.Tensor:
    windows = token_windows(tiny_model.tokenizer, corpus, 64)
    return collect_activations(tiny_model, hook_point("resid_post", LAYER), windows, max_tokens=6000, progress=False)


def prefix_fvu(params: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> float:
    pre = x @ params["w_enc"] + params["b_enc"]
    a = torch.where(pre > params["threshold"], pre, torch.zeros(()))
    a[:, k:] = 0.0
    return fvu(x, a @ params["w_dec"] + params["b_dec"])


def test_nested_prefixes_reconstruct_on_their_own(tiny_model, corpus, acts, tmp_path):
    flat = train_sae(tiny_model, LAYER, corpus=corpus, out_dir=tmp_path / "flat", progress=False, **TRAIN)
    nested = train_sae(tiny_model, LAYER, corpus=corpus, out_dir=tmp_path / "nested", progress=False,
                       matryoshka_groups=GROUPS, **TRAIN)
    config = json.loads((nested / "config.json").read_text())
    assert config[MATRYOSHKA_KEY] == list(GROUPS)
    assert MATRYOSHKA_KEY not in json.loads((flat / "config.json").read_text())
    assert load_sae(nested).width == WIDTH  # the extra key does not disturb a Gemma Scope 2 loader
    p_flat, p_nested = (load_file(str(f / "params.safetensors")) for f in (flat, nested))
    coarse_flat, coarse_nested = prefix_fvu(p_flat, acts, GROUPS[0]), prefix_fvu(p_nested, acts, GROUPS[0])
    assert coarse_nested < coarse_flat - 0.05, (coarse_nested, coarse_flat)
    assert prefix_fvu(p_nested, acts, WIDTH) < 0.9  # the whole dictionary still reconstructs
    # prefix_curve reads the recorded groups as its default sizes.
    curve = prefix_curve(tiny_model, load_sae(nested), corpus[:8], loss=False, progress=False)
    assert curve.sizes == list(GROUPS) and curve.monotone


def test_one_group_is_the_plain_loss(acts):
    kw = {"width": 32, "target_l0": 4, "steps": 15, "batch_size": 128, "progress": False}
    plain, _ = fit_jumprelu(acts, **kw)
    one, _ = fit_jumprelu(acts, matryoshka_groups=(32,), **kw)
    for name, tensor in plain.items():
        assert torch.equal(one[name], tensor), name


def test_full_weight_trades_the_coarse_prefix_for_the_whole(acts):
    # Weighting the whole dictionary's error above the smaller prefixes' moves reconstruction from the coarse
    # prefix to the whole dictionary (the demo recipe's lever).
    kw = {"width": WIDTH, "target_l0": TARGET_L0, "steps": 200, "batch_size": 256, "progress": False,
          "matryoshka_groups": GROUPS}
    equal, _ = fit_jumprelu(acts, **kw)
    heavy, _ = fit_jumprelu(acts, matryoshka_full_weight=8.0, **kw)
    assert prefix_fvu(heavy, acts, WIDTH) < prefix_fvu(equal, acts, WIDTH) - 0.01
    assert prefix_fvu(heavy, acts, GROUPS[0]) > prefix_fvu(equal, acts, GROUPS[0]) + 0.01


def test_bad_groups_are_refused(acts):
    kw = {"width": 32, "target_l0": 4, "steps": 1, "progress": False}
    with pytest.raises(TrainingError, match="end at the width"):
        fit_jumprelu(acts, matryoshka_groups=(8, 16), **kw)
    with pytest.raises(MatryoshkaError, match="increase"):
        fit_jumprelu(acts, matryoshka_groups=(16, 8, 32), **kw)
    with pytest.raises(TrainingError, match="positive"):
        fit_jumprelu(acts, matryoshka_groups=(8, 32), matryoshka_full_weight=0.0, **kw)
