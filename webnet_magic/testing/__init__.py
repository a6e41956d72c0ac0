"""Test beds that tests and benchmarks share: things that stand in for the world outside 127.0.0.1."""
