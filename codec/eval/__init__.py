"""Measures of a reconstruction against its original (the same in the CLI, the plugin and the benchmarks)."""
