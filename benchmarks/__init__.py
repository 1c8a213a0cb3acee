"""Benchmark scripts and the baseline consumers they compare s3stream with (not installed)."""
