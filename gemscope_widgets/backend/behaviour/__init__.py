"""Chat behaviours: difference-of-means directions, refusal scoring, contrasts, chain-of-thought faithfulness."""
