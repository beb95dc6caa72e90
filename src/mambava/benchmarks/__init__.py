"""Benchmarks of the hot paths; each measures a baseline in the same run and prints ratios."""
