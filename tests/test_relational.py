"""The relational schema (tables joined by keys): what is refused when it is loaded, and the key
checks against the data at ingest, orphans failed or dropped with what depends on them."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from genai_pipeline.errors import ConfigError, DatasetError, format_validation_error
from genai_pipeline.relational import Relations, TableSpec, check_keys


def schema(**tables: dict[str, Any]) -> Relations:
    return Relations.of(
        {name: TableSpec.model_validate({"uri": f"{name}.parquet", **spec}) for name, spec in tables.items()}
    )


def shop(**orders: Any) -> Relations:
    """customers → orders → items, and products → items (a second parent, not the context)."""
    return schema(
        items={
            "primary_key": "item_id",
            "foreign_keys": [
                {"column": "product_id", "references": "products"},
                {"column": "order_id", "references": "orders", "context": True},
            ],
        },
        orders={
            "primary_key": "order_id",
            "foreign_keys": [{"column": "customer_id", "references": "customers"}],
            "order_by": "ordered_at",
            **orders,
        },
        customers={"primary_key": "customer_id"},
        products={"primary_key": "sku"},
    )


def shop_data(**changes: pa.Table) -> dict[str, pa.Table]:
    data = {
        "customers": pa.table({"customer_id": ["C1", "C2", "C3"], "segment": ["a", "b", "a"]}),
        "products": pa.table({"sku": [10, 20], "price": [1.5, 9.0]}),
        "orders": pa.table(
            {"order_id": [1, 2, 3, 4], "customer_id": ["C1", "C1", "C2", "C9"], "ordered_at": [1, 2, 3, 4]}
        ),
        "items": pa.table(
            {"item_id": [1, 2, 3, 4, 5], "order_id": [1, 1, 2, 4, 3], "product_id": [10, 20, None, 10, 20]}
        ),
    }
    return {**data, **changes}


def test_tables_are_ordered_parents_first_with_their_context() -> None:
    relations = shop()
    assert relations.order == ["customers", "products", "orders", "items"]
    context = relations.context
    assert context["items"] is not None and context["items"].references == "orders"  # declared, not first
    assert context["orders"] is not None and context["orders"].references == "customers"  # the first
    assert context["customers"] is None
    assert relations.children("orders") == ["items"] and relations.parents("items") == ["products", "orders"]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({}, "dataset.tables: no table declared"),
        ({"../etc": {}}, "dataset.tables.'../etc': a table name is a letter"),
        (
            {"staff": {"primary_key": "id", "foreign_keys": [{"column": "boss", "references": "staff"}]}},
            "dataset.tables.staff.foreign_keys[0]: staff.boss references its own table",
        ),
        (
            {"orders": {"foreign_keys": [{"column": "customer_id", "references": "clients"}]}},
            "dataset.tables.orders.foreign_keys[0].references: no table 'clients' (tables: orders)",
        ),
        (
            {
                "customers": {},
                "orders": {"foreign_keys": [{"column": "customer_id", "references": "customers"}]},
            },
            "dataset.tables.orders.foreign_keys[0]: customers has no primary_key",
        ),
        (
            {
                "a": {"primary_key": "id", "foreign_keys": [{"column": "b_id", "references": "b"}]},
                "b": {"primary_key": "id", "foreign_keys": [{"column": "c_id", "references": "c"}]},
                "c": {"primary_key": "id", "foreign_keys": [{"column": "a_id", "references": "a"}]},
                "d": {"primary_key": "id"},
            },
            "dataset.tables: the foreign keys form a cycle (a → b → c → a)",
        ),
    ],
)
def test_a_bad_schema_is_refused_naming_the_table(tables: dict[str, dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        schema(**tables)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_table_has_one_context_and_a_column_one_key() -> None:
    two = [{"column": c, "references": "p", "context": True} for c in ("a", "b")]
    with pytest.raises(ValueError, match="at most one foreign key is the context"):
        TableSpec.model_validate({"uri": "x", "foreign_keys": two})
    twice = [{"column": "a", "references": p} for p in ("p", "q")]
    with pytest.raises(ValueError, match="declared as a foreign key twice"):
        TableSpec.model_validate({"uri": "x", "foreign_keys": twice})


def test_credentials_in_a_table_uri_are_refused_without_repeating_them() -> None:
    # as the job loader reports it: one line per problem, naming the field
    with pytest.raises(ValidationError) as error:
        TableSpec.model_validate({"uri": "s3://AKIA:hunter2@bucket/orders.parquet"})
    message = format_validation_error(error.value, section="dataset.tables.orders")
    assert "a URL with credentials in it" in message and "hunter2" not in message


def test_an_orphan_fails_the_job_by_default_counting_rows_not_quoting_keys() -> None:
    with pytest.raises(DatasetError) as error:
        check_keys(shop_data(), shop())
    message = str(error.value)
    assert message == (
        "dataset.tables.orders.foreign_keys[0]: 1 of 4 rows of orders reference no row of customers "
        "(dataset.tables.orders.on_orphans: drop leaves them out)"
    )
    assert "C9" not in message


def test_dropped_orphans_take_the_rows_that_depend_on_them_along() -> None:
    tables, report = check_keys(shop_data(), shop(on_orphans="drop"))
    assert tables["orders"].column("order_id").to_pylist() == [1, 2, 3]
    # item 4 belonged to the orphan order 4: it goes with it, though items did not say drop
    assert tables["items"].column("item_id").to_pylist() == [1, 2, 3, 5]
    assert report.dropped == {"orders": 1, "items": 1}
    # a null matched key (item 3 has no product) is no orphan; every key left resolves
    for child, column, parent, key in [
        ("orders", "customer_id", "customers", "customer_id"),
        ("items", "order_id", "orders", "order_id"),
    ]:
        assert set(tables[child].column(column).to_pylist()) <= set(tables[parent].column(key).to_pylist())


def test_a_null_context_key_is_an_orphan() -> None:
    items = pa.table({"item_id": [1], "order_id": pa.array([None], pa.int64()), "product_id": [10]})
    orders = pa.table({"order_id": [1], "customer_id": ["C1"], "ordered_at": [1]})
    with pytest.raises(DatasetError, match=r"items.foreign_keys\[1\]: 1 of 1 rows of items reference no row"):
        check_keys(shop_data(items=items, orders=orders), shop())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"customers": pa.table({"customer_id": ["C1", "C1", "C2"]})},
            "dataset.tables.customers.primary_key: 1 rows repeat another row's customer_id",
        ),
        (
            {"customers": pa.table({"customer_id": ["C1", None, "C2"]})},
            "dataset.tables.customers.primary_key: 1 rows have no customer_id",
        ),
        (
            {"products": pa.table({"sku": [1.5, 2.5]})},
            "dataset.tables.products.primary_key: sku is double; a key is an integer or a string",
        ),
        (
            {"customers": pa.table({"id": ["C1"]})},
            "dataset.tables.customers.primary_key: no column 'customer_id' (columns: id)",
        ),
        (
            {"orders": pa.table({"order_id": [1], "customer_id": ["C1"]})},
            "dataset.tables.orders.order_by: no column 'ordered_at'",
        ),
        (
            {"orders": pa.table({"order_id": [1], "customer_id": [1], "ordered_at": [1]})},
            "dataset.tables.orders.foreign_keys[0]: orders.customer_id is int64, the key it references "
            "(customers.customer_id) is string",
        ),
    ],
)
def test_bad_keys_in_the_data_are_refused_naming_table_and_column(
    changes: dict[str, pa.Table], message: str
) -> None:
    with pytest.raises(DatasetError) as error:
        check_keys(shop_data(**changes), shop(on_orphans="drop"))
    assert str(error.value).startswith(message)


def test_keys_of_different_widths_still_match() -> None:
    orders = pa.table(
        {
            "order_id": pa.array([1, 300], pa.int16()),
            "customer_id": pa.array(["C1", "C2"], pa.large_string()),
            "ordered_at": [1, 2],
        }
    )
    items = pa.table(
        {"item_id": [1], "order_id": pa.array([300], pa.int64()), "product_id": pa.array([10], pa.int8())}
    )
    tables, report = check_keys(shop_data(orders=orders, items=items), shop())
    assert tables["items"].num_rows == 1 and report.dropped == {}
