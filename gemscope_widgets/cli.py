"""The ``gemscope`` command: prepare the embedded default offline, and report the demo SAE's quality."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any


def _prepare(args: argparse.Namespace) -> int:
    from gemscope_widgets.backend.default import prepare_default

    start = time.perf_counter()
    ready = prepare_default(progress=not args.quiet)
    print(f"model:    {ready['model']}")
    print(f"demo SAE: {ready['sae']}")
    print(f"stats:    {ready['stats']!r}")
    units = ready["units"]
    print(f"units:    p{100 * units.quantile:g} of non-zero activations over {units.n_tokens:,} corpus tokens")
    if args.transcoders:
        from gemscope_widgets.backend.default_transcoders import ensure_demo_transcoders

        print(f"demo transcoders: {ensure_demo_transcoders(progress=not args.quiet)}")
    print(f"ready in {time.perf_counter() - start:.0f} s")
    return 0


def format_card(card: dict[str, Any]) -> str:
    """The SAE card as aligned text lines."""
    lines = [
        f"SAE                {card.get('sae')}",
        f"model              {card.get('model')}",
        f"held-out tokens    {card.get('n_tokens')} ({card.get('n_docs')} documents)",
        f"L0                 {card['l0']:.1f}",
        f"FVU                {card['fvu']:.3f}",
        f"dead features      {card['dead_features']} ({100 * card['dead_fraction']:.1f} %)",
        f"dense features     {card.get('dense_features', '?')} ({100 * card.get('dense_fraction', float('nan')):.1f} %"
        f" fire on more than 10 % of tokens)",
        f"next-token loss    clean {card['loss_clean']:.3f}, spliced {card['loss_spliced']:.3f} "
        f"(+{card['delta_loss']:.3f}), zero-ablated {card['loss_zero_ablation']:.3f} "
        f"({card.get('loss_tokens', card['n_tokens'])} tokens)",
        f"loss recovered     {100 * card['loss_recovered']:.1f} %",
    ]
    if card.get("prefixes"):
        lines.append(f"first k latents    FVU     L0     loss recovered ({card.get('prefix_tokens')} tokens, "
                     f"{card.get('prefix_docs')} documents)")
        for row in card["prefixes"]:
            recovered = row.get("loss_recovered")
            lines.append(f"{row['size']:>15,}    {row['fvu']:.3f}  {row['l0']:5.1f}  "
                         f"{'?' if recovered is None else f'{100 * recovered:.1f} %'}")
    if card.get("train_seconds") is not None:
        lines.append(f"trained in         {card['train_seconds']:.0f} s (activations and fit)")
    return "\n".join(lines)


def format_transcoder_card(card: dict[str, Any]) -> str:
    """The transcoder set's card as aligned text lines: one FVU per layer, then the replaced-model losses."""
    lines = [
        f"transcoder set     {len(card['layers'])} layers, width {card['width']} (affine skip)",
        f"model              {card.get('model')}",
        f"held-out tokens    {card.get('n_tokens')} ({card.get('n_docs')} documents)",
        "layer   FVU     L0     dead",
    ]
    for row in card["layers"]:
        lines.append(f"{row['layer']:>5}   {row['fvu']:.3f}  {row['l0']:5.1f}  {100 * row['dead_fraction']:5.1f} %")
    lines += [
        f"FVU                mean {card['fvu_mean']:.3f}, max {card['fvu_max']:.3f}",
        f"next-token loss    clean {card['loss_clean']:.3f}, all MLPs replaced {card['loss_replaced']:.3f} "
        f"(+{card['delta_loss']:.3f}), all MLPs zeroed {card['loss_mlps_zeroed']:.3f} ({card['loss_tokens']} tokens)",
        f"loss recovered     {100 * card['loss_recovered']:.1f} %",
    ]
    seconds = card.get("training", {}).get("seconds")
    if seconds is not None:
        lines.append(f"trained in         {seconds:.0f} s (one activation pass and the batched fit)")
    return "\n".join(lines)


def _quality(args: argparse.Namespace) -> int:
    from gemscope_widgets.backend.default import demo_quality

    card = demo_quality(progress=not args.quiet)
    print(format_card(card))
    if args.transcoders:
        from gemscope_widgets.backend.default_transcoders import demo_transcoders_quality

        print()
        print(format_transcoder_card(demo_transcoders_quality(progress=not args.quiet)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gemscope`` console script."""
    parser = argparse.ArgumentParser(prog="gemscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("prepare", "convert the embedded Gemma 3 270M, train the demo SAE, scan its feature statistics and "
                    "compute its steering units (once)"),
        ("quality", "print the demo SAE's L0, FVU, dead features and spliced loss on held-out text, and the FVU, "
                    "L0 and loss recovered of each of its nested prefixes"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument(
            "--transcoders", action="store_true", help="also the demo transcoder set of all 18 layers (for circuits)"
        )
    args = parser.parse_args(argv)
    from .errors import GemscopeError

    try:
        return {"prepare": _prepare, "quality": _quality}[args.command](args)
    except GemscopeError as exc:
        print(f"gemscope: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
