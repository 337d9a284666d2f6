"""What kind of values an Arrow column holds, and its values as plain arrays.

The encoder, the quality metrics, the Great Expectations suite, the report and the dataset reader
all ask the same questions of a column (is it a category or a number? can a model learn it?) and
need its values the same way (dictionary-decoded, numbers and timestamps as float64). The answers
live here once, so that a column counts as numeric in the metrics exactly when the models treat it
as one.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def is_categorical(type_: pa.DataType) -> bool:
    """Types whose values are categories (one-hot encoded, checked against a value set)."""
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_boolean(type_)


def is_numeric(type_: pa.DataType) -> bool:
    """Types modelled as numbers: integers, floats, decimals, dates and timestamps.

    Half floats, times of day, durations and intervals are left out: Arrow has no min/max kernel for
    some of them and the data suite cannot bound the others, so they would fail after training.
    """
    return (
        pa.types.is_integer(type_)
        or (pa.types.is_floating(type_) and not pa.types.is_float16(type_))
        or pa.types.is_decimal(type_)
        or pa.types.is_date(type_)
        or pa.types.is_timestamp(type_)
    )


def value_type(type_: pa.DataType) -> pa.DataType:
    """The type of a column's values: a dictionary's value type, else the type itself."""
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def is_supported(type_: pa.DataType) -> bool:
    """Types a tabular model can learn (dictionary-encoded ones too): checked when a table is read,
    so an unusable column fails at ingest, naming it, instead of at training."""
    type_ = value_type(type_)
    return pa.types.is_null(type_) or is_numeric(type_) or is_categorical(type_)


def dense(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array, dictionary-decoded."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def row_hashes(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each row's values of ``names``, as text (null as its own marker): rows
    alike hash alike whatever their table. As text, because an integer column with nulls is
    float64 in one table's pandas frame and int64 in another's, and copies would hash apart.
    Each column's distinct texts are hashed once (``pd.util.hash_array``) and taken per row by
    their dictionary index: no Python string per row."""
    import pandas as pd

    combined = np.zeros(table.num_rows, dtype=np.uint64)
    for name in names:
        encoded = pc.dictionary_encode(pc.cast(dense(table.column(name)), pa.string()))
        texts = np.append(encoded.dictionary.to_numpy(zero_copy_only=False).astype(object), _NULL_TEXT)
        hashes = pd.util.hash_array(texts)
        indices = encoded.indices.fill_null(len(texts) - 1).to_numpy(zero_copy_only=False)
        combined = combined * _FNV_PRIME ^ hashes[indices]
    return combined


#: what a null is hashed as (no value's text starts with a NUL), and the multiplier that combines
#: a row's column hashes in their order (FNV-1's prime)
_NULL_TEXT = "\x00null"
_FNV_PRIME = np.uint64(1099511628211)


def to_float(array: pa.Array) -> np.ndarray:
    """Numeric or temporal values as float64 (temporal: their integer storage), nulls as NaN."""
    type_ = array.type
    if pa.types.is_temporal(type_):
        array = array.view(pa.int32() if type_.bit_width == 32 else pa.int64())
    # unsafe: integers beyond 2**53 (64-bit ids) round to the nearest float instead of failing
    return np.asarray(
        pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def quantum(type_: pa.DataType) -> float:
    """What a column's values are multiples of, as floats (:func:`to_float`): 1 for integers, dates
    and timestamps (their integer storage), ``10**-scale`` for decimals, 0 for floats."""
    type_ = value_type(type_)
    if pa.types.is_integer(type_) or pa.types.is_temporal(type_):
        return 1.0
    if pa.types.is_decimal(type_):
        return 10.0**-type_.scale
    return 0.0


def from_float(values: np.ndarray, type_: pa.DataType, mask: np.ndarray) -> pa.Array:
    """The inverse of :func:`to_float`, rounding where the type is integral."""
    if pa.types.is_temporal(type_):
        storage = pa.int32() if type_.bit_width == 32 else pa.int64()
        ints = pa.array(np.rint(values).astype(np.int64), mask=mask).cast(storage)
        return ints.view(type_)
    if pa.types.is_integer(type_):
        info = np.iinfo(type_.to_pandas_dtype())
        high = float(info.max)  # 2**63 or 2**64 as a float: one past the range, which would wrap
        high = np.nextafter(high, 0.0) if int(high) > info.max else high
        values = np.clip(np.rint(values), info.min, high)
        return pa.array(values.astype(type_.to_pandas_dtype()), type=type_, mask=mask)
    return pc.cast(pa.array(values, type=pa.float64(), mask=mask), type_, safe=False)


def encoded_as(array: pa.Array, type_: pa.DataType) -> pa.Array:
    """``array`` (of ``type_``'s value type) as ``type_``: a dictionary column re-encoded."""
    return array.dictionary_encode().cast(type_) if pa.types.is_dictionary(type_) else array


def schema_to_text(schema: pa.Schema) -> str:
    """A schema as JSON-able text (Arrow IPC, base64): what a model's state keeps of a table."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    """:func:`schema_to_text`'s schema back."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
