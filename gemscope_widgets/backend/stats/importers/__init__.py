"""stats/importers."""
