"""The embedded default: demo SAE trained once, cached atomically, loaded through load_sae."""

from __future__ import annotations

import itertools
import json
import threading

import pytest

from gemscope_widgets.backend import default
from gemscope_widgets.backend.dictionaries.loading import load_sae
from gemscope_widgets.backend.dictionaries.sae import JumpReLUSAE
from gemscope_widgets.backend.stats.corpus import default_corpus
from gemscope_widgets.backend.training import train as training


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_demo_sae_is_trained_once_even_with_concurrent_callers(private_cache, tiny_model, monkeypatch):
    calls: list[str] = []
    real_train = training.train_sae
    corpus = default_corpus(max_docs=60)

    def small_train(_gm, _layer, *, out_dir, **_recipe):
        calls.append(str(out_dir))
        return real_train(
            tiny_model, 1, corpus=corpus, out_dir=out_dir, width=32, target_l0=4, n_tokens=1500, steps=40,
            batch_size=128, ctx=64, progress=False,
        )

    monkeypatch.setattr(training, "train_sae", small_train)
    monkeypatch.setattr(default, "collection_model", lambda gm, progress: tiny_model)
    assert not default.is_trained()
    results: list = []
    def call() -> None:
        results.append(default.ensure_demo_sae(progress=False))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(calls) == 1, calls
    assert len(set(results)) == 1 and len(results) == 3
    path = results[0]
    assert path == default.demo_sae_path()
    assert path.parent == private_cache / "saes"
    assert default.is_trained(path)
    # Nothing half-written is left next to it, and a later call reuses the cache.
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, f"{default.DEMO_NAME}.lock"])
    assert default.ensure_demo_sae(progress=False) == path
    assert len(calls) == 1
    assert isinstance(load_sae(path), JumpReLUSAE)


def test_demo_recipe_names_its_cache_folder():
    r = default.DEMO_RECIPE
    assert f"layer_{r['layer']}_" in default.DEMO_NAME
    assert f"width_{r['width'] // 1024}k" in default.DEMO_NAME
    assert f"l0_{r['target_l0']}" in default.DEMO_NAME
    assert default.demo_sae_path().name == default.DEMO_NAME


@pytest.mark.real_model
@pytest.mark.slow
def test_demo_sae_meets_quality_targets_on_held_out_text(demo_scope_parts):
    gm, sae = demo_scope_parts
    r = default.DEMO_RECIPE
    assert sae.config.hook_in == training.hook_point(r["site"], r["layer"])
    assert sae.config.width == r["width"]
    assert gm.name == "google/gemma-3-270m"
    card = default.demo_quality(gm, progress=False)
    assert card["n_tokens"] > 5000
    # Measured (v5, held-out, 20,447 tokens): L0 49.3, FVU 0.092, no feature dense, 0.3 % dead.
    assert card["fvu"] <= 0.1, card
    assert card["dead_fraction"] <= 0.05, card
    # The frequency penalty: no more than 1 % of the features fire on more than 10 % of held-out tokens.
    assert card["dense_fraction"] <= 0.01, card
    # The L0 target is held by the fit's integral term: within 15 % of 48 on text it never saw.
    assert abs(card["l0"] - r["target_l0"]) <= 0.15 * r["target_l0"], card
    # The reconstruction must carry most of what the layer contributes to the next-token loss.
    assert card["loss_clean"] < card["loss_spliced"] < card["loss_zero_ablation"], card
    assert card["loss_recovered"] > 0.8, card
    report = json.loads((default.demo_sae_path() / "training.json").read_text())
    assert report["seed"] == r["seed"]
    # Matryoshka: each nested prefix reconstructs on its own; larger prefixes are better, and the coarse ones beat
    # as many latents drawn at random (a flat dictionary's prefix is no better than random).
    assert [row["size"] for row in card["prefixes"]] == list(r["matryoshka_groups"])
    fvus = [row["fvu"] for row in card["prefixes"]]
    assert all(b <= a for a, b in itertools.pairwise(fvus)), card["prefixes"]
    for row in card["prefixes"][:2]:
        assert row["fvu"] < row["random_fvu"] - 0.1, row


@pytest.mark.real_model
@pytest.mark.slow
def test_quality_command_prints_the_card(demo_scope_parts, capsys):
    from gemscope_widgets.cli import main

    gm, _ = demo_scope_parts
    card = default.demo_quality(gm, progress=False)
    assert main(["quality", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"FVU                {card['fvu']:.3f}" in out
    assert "dead features" in out and "spliced" in out
    assert card["prefixes"], card  # every nested prefix, one line each
    for row in card["prefixes"]:
        assert f"{row['size']:>15,}    {row['fvu']:.3f}  {row['l0']:5.1f}  {100 * row['loss_recovered']:.1f} %" in out


def test_collection_model_copies_from_memory_only_once_the_weights_are_resident(monkeypatch):
    # A model that has not run keeps its checkpoint pages unread (the copy comes from the file); one that has run
    # is copied from memory (the copy shares its tokenizer), so the float32 file is never mapped twice.
    import torch

    from gemscope_widgets.backend.gemma.model import load_model

    monkeypatch.setattr(default, "_cpu_has_fast_bf16", lambda: True)
    gm = load_model(default.EMBEDDED_NAME, device="cpu", dtype="float32", progress=False)
    assert not default._weights_resident(gm)
    from_file = default.collection_model(gm, False)
    assert from_file.dtype == torch.bfloat16 and from_file.tokenizer is not gm.tokenizer
    assert not default._weights_resident(gm)  # the copy did not read the loaded model's pages
    del from_file
    with torch.no_grad():
        gm.model(input_ids=torch.tensor([[2, 818, 5279]]))
    assert default._weights_resident(gm)
    from_memory = default.collection_model(gm, False)
    assert from_memory.dtype == torch.bfloat16 and from_memory.tokenizer is gm.tokenizer
