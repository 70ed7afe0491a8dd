"""Tools that need gradients work when called inside torch.inference_mode() or torch.no_grad(), a common notebook
habit, and give the same results as outside."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from gemscope_widgets.backend.behaviour.faithfulness import cot_faithfulness
from gemscope_widgets.backend.circuits.attribution import attribute
from gemscope_widgets.backend.circuits.transcoder_set import load_transcoders
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.training.fit import fit_jumprelu
from gemscope_widgets.testing.transcoders import write_calibrated_set

Q = "Tom has 3 apples and buys 2 more. How many apples does he have?"
COT = "He starts with 3. He buys 2. 3 + 2 = 5."
CUE = " The answer is"
ANSWERS = [" 5", " 6"]
MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_cot_dependence_inside(mode, tiny_model, gemma_scope_folders):
    sae = load_sae(gemma_scope_folders["resid_post"])
    kwargs = dict(chat=False, sae=sae, progress=False)
    outside = cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS, **kwargs).dependence
    with MODES[mode]():
        inside = cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS, **kwargs).dependence
    assert outside is not None and inside is not None
    np.testing.assert_allclose(inside.total, outside.total, rtol=1e-5)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_attribute_inside(mode, tiny_model, tmp_path):
    root = write_calibrated_set(tiny_model, tmp_path / "set", width=64, l0=8, affine=True, seed=2)
    tset = load_transcoders(root)
    outside = attribute(tiny_model, tset, "The fox runs.", progress=False)
    with MODES[mode]():
        inside = attribute(tiny_model, tset, "The fox runs.", progress=False)
    torch.testing.assert_close(inside.adjacency_matrix, outside.adjacency_matrix)


def test_no_grad_context_is_left_as_it_was(tiny_model, gemma_scope_folders):
    sae = load_sae(gemma_scope_folders["resid_post"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        cot_faithfulness(tiny_model, Q, COT, CUE, ANSWERS, chat=False, sae=sae, progress=False)
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()


def test_training_inside_inference_mode():
    acts = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(width=32, target_l0=4, steps=20, batch_size=64, progress=False, seed=0)
    outside, _ = fit_jumprelu(acts, **kwargs)
    with torch.inference_mode():
        inside, _ = fit_jumprelu(acts, **kwargs)
    for name, value in outside.items():
        torch.testing.assert_close(inside[name], value)
