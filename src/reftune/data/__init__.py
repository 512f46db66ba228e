"""Datasets: the `Example` record, the embedded synthetic task and loaders for real benchmarks."""

from reftune.example import Example

__all__ = ["Example"]
