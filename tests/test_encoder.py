"""The tabular encoder: exact round trips (without value protection), every column type, bounded
width, JSON state; value protection (the default): what the fitted state may hold and what decodes."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import numpy as np
import pyarrow as pa
import pytest

from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.privacy.protection import Protection

#: round trips are exact only for data that may be replayed: protection off
OFF = Protection(enabled=False)

MIXED = pa.table(
    {
        "when": pa.array(
            [dt.datetime(2024, 1, 1 + i % 28, i % 24, tzinfo=dt.UTC) for i in range(60)][:-3] + [None] * 3,
            pa.timestamp("us", tz="UTC"),
        ),
        "day": pa.array([dt.date(2024, 2, 1 + i % 28) for i in range(60)]),
        "kind": pa.array(["a", "b", "c"] * 20).dictionary_encode(),
        "flag": pa.array([True, False, None] * 20),
        "small": pa.array([i % 4 for i in range(60)], pa.int8()),
        "price": pa.array([decimal.Decimal(f"{i}.25") for i in range(60)], pa.decimal128(8, 2)),
        "empty": pa.nulls(60, pa.float64()),
        "ratio": pa.array(np.linspace(-3, 3, 60), pa.float32()),
    }
)


def _roundtrip(table: pa.Table, **kwargs) -> tuple[TableEncoder, pa.Table]:
    encoder = TableEncoder.fit(table, **{"protection": OFF, "roles": {}, **kwargs})
    x, cond = encoder.encode(table)
    assert x.dtype == np.float32 and x.shape == (table.num_rows, encoder.width)
    return encoder, encoder.decode(x, cond, seed=0)


def test_penguins_round_trip_keeps_schema_values_and_nulls() -> None:
    real = BUILTINS["penguins"].load()
    encoder, back = _roundtrip(real, condition="species")
    assert back.schema.equals(real.schema)
    for name in real.column_names:
        if pa.types.is_floating(real.schema.field(name).type):
            assert np.allclose(
                back.column(name).to_numpy(), real.column(name).to_numpy(), equal_nan=True, atol=1e-3
            )
        else:
            assert back.column(name).equals(real.column(name)), name
    assert encoder.condition_values == ["Adelie", "Chinstrap", "Gentoo"]


def test_every_supported_type_round_trips() -> None:
    encoder, back = _roundtrip(MIXED)
    assert back.schema.equals(MIXED.schema)
    for name in ("day", "kind", "flag", "small", "price", "empty"):
        assert back.column(name).equals(MIXED.column(name)), name
    assert back.column("when").null_count == 3
    assert np.allclose(back.column("ratio").to_numpy(), MIXED.column("ratio").to_numpy(), atol=1e-3)


def test_state_is_json_and_rebuilds_the_same_encoder() -> None:
    encoder = TableEncoder.fit(MIXED)
    again = TableEncoder.from_state(json.loads(json.dumps(encoder.to_state())))
    x, _ = encoder.encode(MIXED)
    assert np.array_equal(again.encode(MIXED)[0], x)
    assert again.decode(x, None, seed=1).equals(encoder.decode(x, None, seed=1))


def test_high_cardinality_is_bounded_and_decodes_to_real_values() -> None:
    ids = pa.table({"id": [f"user-{i}" for i in range(5000)], "v": np.arange(5000.0)})
    encoder, back = _roundtrip(ids, max_categories=50)
    assert encoder.width == 51 + 1  # 50 kept + 1 rare bucket, plus the numeric column
    assert set(back.column("id").to_pylist()) <= set(ids.column("id").to_pylist())


def test_unsupported_types_are_named() -> None:
    with pytest.raises(ValueError, match="column 'blob': type binary is not supported"):
        TableEncoder.fit(pa.table({"blob": [b"x", b"y"]}))


def test_spikes_decode_exactly() -> None:
    values = np.concatenate([np.zeros(500), np.random.default_rng(0).normal(size=500)])
    table = pa.table({"x": values})
    encoder, back = _roundtrip(table)
    assert (back.column("x").to_numpy() == 0.0).sum() == 500
    x, _ = encoder.encode(table)
    spread = x + np.random.default_rng(1).normal(scale=0.05, size=x.shape).astype(np.float32)
    zeros = encoder.decode(spread, None, seed=0).column("x").to_numpy()[:500]
    assert (zeros == 0.0).mean() > 0.95  # a model's spread around the spike still decodes to it


def _outlier_table() -> pa.Table:
    """300 rows: a common and a rare category, and a number with one extreme outlier."""
    rng = np.random.default_rng(0)
    town = ["Springfield"] * 200 + ["Shelbyville"] * 96 + ["Ogdenville"] * 3 + ["North Haverbrook"]
    salary = np.round(rng.normal(50_000, 8_000, 300))
    salary[-1] = 9_876_543
    return pa.table({"town": town, "salary": pa.array(salary.astype(np.int64))})


def test_protected_state_holds_no_value_fewer_than_min_rows_rows_hold() -> None:
    table = _outlier_table()
    encoder = TableEncoder.fit(table, roles={})
    state = json.dumps(encoder.to_state())
    assert "Ogdenville" not in state and "North Haverbrook" not in state  # 3 rows and 1 row: under 5
    assert "Springfield" in state and "9876543" not in state
    salaries = table.column("salary").to_numpy()
    knots = encoder.codecs[1].knots
    assert not set(knots) & {float(v) for v in np.unique(salaries) if (salaries == v).sum() < 5}
    assert max(knots) < 80_000  # the outlier moves nothing: the top is a mean of five typical salaries
    assert encoder.codecs[0].protected == 2 and encoder.codecs[1].protected >= 8  # 4 clipped at each end


def test_protected_values_decode_to_the_token_and_numbers_stay_in_the_protected_range() -> None:
    table = _outlier_table()
    encoder = TableEncoder.fit(table, roles={})
    x, _ = encoder.encode(table)
    back = encoder.decode(x, None, seed=0)
    towns = back.column("town").to_pylist()
    assert set(towns) == {"Springfield", "Shelbyville", "_RARE_"} and towns.count("_RARE_") == 4
    low, high = encoder.codecs[1].knots[0], encoder.codecs[1].knots[-1]
    assert low <= min(back.column("salary").to_pylist()) and max(back.column("salary").to_pylist()) <= high
    public = encoder.public_view(table)  # what a suite or a chart may show: the same protection
    assert set(public.column("town").to_pylist()) == set(towns)
    assert max(public.column("salary").to_pylist()) <= high < 9_876_543
    numbers = TableEncoder.fit(pa.table({"n": [1] * 50 + [2] * 3}), roles={}, discrete_threshold=20)
    one = numbers.decode(numbers.encode(pa.table({"n": [2, 2, 1]}))[0], None, seed=0)
    assert one.column("n").to_pylist() == [1, 1, 1]  # no token for a number: the most frequent value
    token = TableEncoder.fit(table, roles={}, protection=Protection(rare_token=None))
    assert "_RARE_" not in token.decode(token.encode(table)[0], None, seed=0).column("town").to_pylist()


def test_integer_tails_are_not_rounded_back_onto_a_real_tail_value() -> None:
    """An integer column's protected low end of 179.4 decodes (rounded) to 179: a real value in the
    clipped tail. The range is narrowed to whole numbers inside it instead."""
    values = pa.table({"n": pa.array([172, 174, 176, 178, 179, 180, 180, 180, 181] + list(range(181, 230)))})
    encoder = TableEncoder.fit(values, roles={})
    low = encoder.codecs[0].knots[0]
    assert low == int(low) and low >= 180
