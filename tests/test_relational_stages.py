"""Jobs of several tables: the spec, the holdout by entity, the sampled entities, the files written
in one stream, the metric rows per table and the report's sections (the flow: test_flow_relational)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import spec_error
from relational_data import shop_schema, shop_tables

from genai_pipeline.config import ValidateSpec
from genai_pipeline.datasets.base import schema_diff
from genai_pipeline.datasets.builtin import BUILTINS, nycflights13
from genai_pipeline.jobs import build_job
from genai_pipeline.parquet import write_parquet_files
from genai_pipeline.quality.gate import MetricRows
from genai_pipeline.quality.report import ReportInput, TableSection, render_report
from genai_pipeline.relational import Relations, TableSpec, check_keys
from genai_pipeline.relational_stages import sample_entities, split_tables
from genai_pipeline.storage import Storage

URIS = {name: f"{name}.parquet" for name in ("customers", "orders", "items")}
JOB = {"name": "shop", "dataset": {"tables": shop_schema(URIS)}, "model": {"family": "autoregressive"}}


def _with(**sections: Any) -> dict[str, Any]:
    job = {**JOB}
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value}
    return job


def test_a_job_of_several_tables_loads_with_its_tables_parents_first() -> None:
    job = build_job(JOB)
    assert job.dataset.relations is not None and job.dataset.relations.order == [
        "customers",
        "orders",
        "items",
    ]
    assert job.dataset.source == "tables customers, orders, items" and job.dataset.modality == "tabular"
    assert job.dataset.table("orders").uri == "orders.parquet"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(dataset={"uri": "x.parquet"}), "dataset: give uri (one table or images) or tables"),
        ({**JOB, "dataset": {}}, "dataset: give uri (one table or images) or tables"),
        (_with(dataset={"label": "segment"}), "dataset: label: for a single table (uri), not with tables"),
        (_with(dataset={"columns": {"age": {"type": "numeric"}}}), "columns: for a single table"),
        (_with(generate={"num_samples": 10}), "generate.num_samples: not with dataset.tables"),
        (_with(generate={"shards": 2}), "generate.shards: not with dataset.tables"),
        (_with(generate={"per_label": 3}), "generate.per_label: not with dataset.tables"),
        (_with(train={"max_rows": 1000}), "train.max_rows: not with dataset.tables"),
        (
            _with(generate={"constraints": [{"kind": "positive", "columns": ["amount"]}]}),
            "generate.constraints: not with dataset.tables (each table's rules are its own: "
            "dataset.tables.<name>.constraints)",
        ),
        (_with(train={"privacy": {"epsilon": 3}}), "train.privacy: not with dataset.tables"),
        (_with(validate={"suite": "saved"}), "validate.suite: not with dataset.tables"),
        (
            _with(validate={"expectations": [{"type": "expect_table_row_count_to_be_between"}]}),
            "validate.expectations: not with dataset.tables",
        ),
        (_with(validate={"min_utility_ratio": 0.5}), "validate.min_utility_ratio: not with dataset.tables"),
        (
            {**JOB, "model": {"family": "gan"}},
            "model.family: gan cannot generate orders per row of its parent",
        ),
        (
            _with(dataset={"tables": {**shop_schema(URIS), "items": {"uri": "builtin://nope"}}}),
            "tables.items.uri: unknown built-in dataset 'nope'",
        ),
        (
            _with(dataset={"tables": {**shop_schema(URIS), "items": {"uri": "builtin://digits"}}}),
            "tables.items.uri: builtin://digits holds images, not a table",
        ),
        (
            _with(
                dataset={
                    "tables": {
                        **shop_schema(URIS),
                        "orders": {**shop_schema(URIS)["orders"], "columns": {"customer_id": {"type": "id"}}},
                    }
                }
            ),
            "columns.customer_id: a key column; keys are always made fresh",
        ),
    ],
)
def test_what_several_tables_cannot_do_is_refused_by_its_field(data: dict[str, Any], message: str) -> None:
    assert message in spec_error(data)


def test_split_tables_holds_out_whole_entities() -> None:
    """A held-out customer takes their orders and those orders' items along: no training row's
    parent is held out, and the split is the same for the same key."""
    real = shop_tables()
    relations = Relations.of(
        {name: TableSpec.model_validate(spec) for name, spec in shop_schema(URIS).items()}
    )
    train, held = split_tables(real, relations, 0.2, 5_000, key="ab12")
    for name in real:
        assert train[name].num_rows + held[name].num_rows == real[name].num_rows
    assert held["customers"].num_rows == 30
    for part in (train, held):
        keys = set(part["customers"].column("customer_id").to_pylist())
        assert set(part["orders"].column("customer_id").to_pylist()) <= keys
        orders = set(part["orders"].column("order_id").to_pylist())
        assert set(part["items"].column("order_id").to_pylist()) <= orders
    again, _ = split_tables(real, relations, 0.2, 5_000, key="ab12")
    assert again["items"].equals(train["items"])
    check_keys(train, relations)  # the training part is a database of its own


def test_sample_entities_keeps_whole_sequences_and_a_bounded_root(tmp_path: Path) -> None:
    real = shop_tables(customers=400)
    relations = Relations.of(
        {name: TableSpec.model_validate(spec) for name, spec in shop_schema(URIS).items()}
    )
    storage = Storage(str(tmp_path))
    files = {}
    for name, table in real.items():
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=100)
        files[name] = f"{name}.parquet"
    sample = sample_entities(storage, files, relations, 100, seed=1)
    assert sample["customers"].num_rows == 100
    chosen = set(sample["customers"].column("customer_id").to_pylist())
    expected = [c in chosen for c in real["orders"].column("customer_id").to_pylist()]
    assert sample["orders"].num_rows == sum(expected)  # every order of the sampled customers
    assert sample["items"].num_rows == sum(
        o in set(sample["orders"].column("order_id").to_pylist())
        for o in real["items"].column("order_id").to_pylist()
    )


def test_several_files_are_written_in_one_stream_and_the_first_named_is_committed_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(str(tmp_path))
    schema = pa.schema([("x", pa.int64())])
    files = {"mark": ("b/mark.parquet", schema), "other": ("a/other.parquet", schema)}
    committed: list[str] = []
    atomic = Storage.open_atomic

    @contextmanager
    def recording(self: Storage, rel: str) -> Iterator[Any]:
        with atomic(self, rel) as handle:
            yield handle
        committed.append(rel)

    monkeypatch.setattr(Storage, "open_atomic", recording)

    def batches() -> Iterator[tuple[str, pa.Table]]:
        for i in range(5):
            yield ("other" if i % 2 else "mark"), pa.table({"x": np.arange(i, i + 3)})
        assert not committed  # nothing is visible while the stream runs

    assert write_parquet_files(batches(), storage, files, metadata={b"k": b"v"}) == {"mark": 9, "other": 6}
    assert committed == ["a/other.parquet", "b/mark.parquet"]
    assert pq.read_table(tmp_path / "b" / "mark.parquet").num_rows == 9
    assert pq.ParquetFile(tmp_path / "a" / "other.parquet").schema_arrow.metadata[b"k"] == b"v"

    def failing() -> Iterator[tuple[str, pa.Table]]:
        yield "other", pa.table({"x": [1]})
        raise RuntimeError("the model diverged")

    with pytest.raises(RuntimeError):
        write_parquet_files(failing(), Storage(str(tmp_path / "again")), files)
    assert not [p for p in (tmp_path / "again").rglob("*") if p.is_file()]  # no half of a run


def test_the_schema_of_several_tables_changes_table_by_table() -> None:
    one = {"columns": [{"name": "a", "type": "int64"}], "label": None}
    two = {"columns": [{"name": "a", "type": "string"}], "label": None}
    assert schema_diff({"tables": {"t": one}}, {"tables": {"t": two, "u": one}}) == [
        "table 'u' added",
        "t: column 'a' changed type int64 → string",
    ]
    assert schema_diff(one, {"tables": {"t": one}}) == ["one dataset became several tables"]
    keyed = {"tables": {"t": one}, "keys": {"t": {"primary_key": "a", "order_by": None}}}
    reordered = {"tables": {"t": one}, "keys": {"t": {"primary_key": "a", "order_by": "a"}}}
    assert schema_diff(keyed, reordered) == ["t: its keys changed"]


def test_metric_rows_of_a_table_name_it_and_relations_are_gated() -> None:
    rows = MetricRows("r", ValidateSpec(min_column_shapes=0.9))
    rows.of_table("orders").add("table", None, "column_shapes", 0.5)
    rows.add("relation", "orders.customer_id → customers", "referential_integrity", 0.99)
    assert rows.table().column("table").to_pylist() == ["orders", None]
    assert rows.misses("error") == [
        "orders.column_shapes=0.500 < 0.9",
        "referential_integrity(orders.customer_id → customers)=0.990 < 1.0",
    ]


def test_the_report_has_a_section_per_table_and_escapes_their_contents() -> None:
    real = pa.table({"<script>x</script>": [1, 2, 3]})
    metrics = [
        {"table": "orders", "scope": "table", "column": None, "metric": "column_shapes", "value": 0.9,
         "threshold": 0.75, "bound": "min", "passed": True, "severity": "error"},
        {"table": None, "scope": "relation", "column": "orders.customer_id → customers",
         "metric": "referential_integrity", "value": 1.0, "threshold": 1.0, "bound": "min", "passed": True,
         "severity": "error"},
    ]  # fmt: skip
    page = render_report(
        ReportInput(
            title="t",
            status="passed",
            summary={},
            metrics=metrics,
            tables={"orders": TableSection(real, real)},
        )
    )
    assert (
        "Table orders" in page and "Relations between the tables" in page and "referential_integrity" in page
    )
    assert "<script>x" not in page


def test_the_builtin_flights_are_three_related_tables() -> None:
    tables = nycflights13()
    relations = Relations.of(
        {
            "airlines": TableSpec(uri="builtin://nycflights13/airlines", primary_key="carrier"),
            "planes": TableSpec(uri="builtin://nycflights13/planes", primary_key="tailnum"),
            "flights": TableSpec.model_validate(
                {
                    "uri": "builtin://nycflights13/flights",
                    "foreign_keys": [
                        {"column": "tailnum", "references": "planes"},
                        {"column": "carrier", "references": "airlines", "context": False},
                    ],
                    "order_by": "time_hour",
                }
            ),
        }
    )
    checked, report = check_keys(tables, relations)
    assert not report.dropped and {name: t.num_rows for name, t in checked.items()} == {
        "airlines": 16, "planes": 300, "flights": 2591
    }  # fmt: skip
    assert BUILTINS["nycflights13/flights"].load().equals(tables["flights"])
