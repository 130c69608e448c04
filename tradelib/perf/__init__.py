"""Measuring: the step side by side, profiling, the benchmarks."""
