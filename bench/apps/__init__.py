"""Tiny apps the benchmarks serve, so a scenario measures the stack, not our code."""
