"""Datasets: reading sources, built-in samples, fingerprints and run snapshots."""

from genai_pipeline.datasets.base import (
    Dataset,
    ImageData,
    TabularData,
    describe_schema,
    fingerprint,
    read_snapshot,
    write_snapshot,
)
from genai_pipeline.datasets.builtin import BUILTINS

__all__ = [
    "BUILTINS",
    "Dataset",
    "ImageData",
    "TabularData",
    "describe_schema",
    "fingerprint",
    "read_snapshot",
    "write_snapshot",
]
