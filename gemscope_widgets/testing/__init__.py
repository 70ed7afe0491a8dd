"""Stand-ins for the real thing, shared by the test suite and the benchmarks: a tiny random Gemma 3 and a
calibrated random SAE in the Gemma Scope 2 layout. The library itself never imports this package."""
