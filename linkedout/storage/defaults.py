"""Storage defaults the configs show in `--help`, kept free of heavy imports so that building
the command line does not load torch or Lance."""

COMMIT_EVERY = 16
"""Rows per atomic commit: a killed run loses at most this many; more makes fewer fragments."""
