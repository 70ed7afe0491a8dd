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
        f"next-token loss    clean {card['loss_clean']:.3f}, spliced {card['loss_spliced']:.3f} "
        f"(+{card['delta_loss']:.3f}), zero-ablated {card['loss_zero_ablation']:.3f} "
        f"({card.get('loss_tokens', card['n_tokens'])} tokens)",
        f"loss recovered     {100 * card['loss_recovered']:.1f} %",
    ]
    return "\n".join(lines)


def _quality(args: argparse.Namespace) -> int:
    from gemscope_widgets.backend.default import demo_quality

    card = demo_quality(progress=not args.quiet)
    print(format_card(card))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gemscope`` console script."""
    parser = argparse.ArgumentParser(prog="gemscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("prepare", "convert the embedded Gemma 3 270M, train the demo SAE and scan its feature statistics (once)"),
        ("quality", "print the demo SAE's L0, FVU, dead features and spliced loss on held-out text"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from .errors import GemscopeError

    try:
        return {"prepare": _prepare, "quality": _quality}[args.command](args)
    except GemscopeError as exc:
        print(f"gemscope: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
