"""A small shop database for the tests of several tables: customers → orders → items.

Two levels and one sequence: a customer's orders are ordered by ``order_ts`` (premium customers
order more, and spend more), and each order has one to three items. Keys have the formats real
systems use (``C00042`` strings, integer order and item ids), so the fresh keys' formats are tested
too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import TINY_MODELS, workspace_for

from genai_pipeline.config import JobSpec
from genai_pipeline.jobs import build_job

TABLES = ("customers", "orders", "items")


def shop_tables(customers: int = 150, seed: int = 0) -> dict[str, pa.Table]:
    """``{"customers", "orders", "items"}`` of a shop with ``customers`` customers."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["retail", "business", "premium"], customers, p=[0.6, 0.3, 0.1])
    ids = [f"C{i:05d}" for i in range(customers)]
    counts = rng.poisson(np.select([segment == "premium", segment == "business"], [6.0, 3.0], 1.5))
    owner = np.repeat(np.arange(customers), counts)
    gaps = rng.exponential(5 * 86400, len(owner)).astype(np.int64)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts - 1] * (starts > 0), counts)
    spend = np.where(segment[owner] == "premium", 120.0, 40.0)
    orders = pa.table(
        {
            "order_id": np.arange(len(owner), dtype=np.int64) + 1000,
            "customer_id": [ids[i] for i in owner],
            "order_ts": pa.array(
                np.datetime64("2024-01-01T00:00:00", "s") + elapsed.astype("timedelta64[s]")
            ),
            "amount": np.round(spend * rng.lognormal(0, 0.4, len(owner)), 2),
            "channel": rng.choice(["web", "store"], len(owner)),
        }
    )
    per_order = rng.integers(1, 4, len(owner))
    items = pa.table(
        {
            "item_id": np.arange(per_order.sum(), dtype=np.int64),
            "order_id": np.repeat(orders.column("order_id").to_numpy(), per_order),
            "product": rng.choice(["book", "pen", "lamp", "desk"], per_order.sum()),
            "quantity": rng.integers(1, 5, per_order.sum()),
        }
    )
    people = pa.table({"customer_id": ids, "segment": segment, "age": rng.integers(18, 80, customers)})
    return {"customers": people, "orders": orders, "items": items}


def write_tables(tables: dict[str, pa.Table], folder: Path) -> dict[str, str]:
    """Each table as ``folder/<name>.parquet``; their paths (Parquet keeps times in ms at the
    coarsest: read them back to compare with the output)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in tables.items():
        pq.write_table(table, folder / f"{name}.parquet")
        paths[name] = str(folder / f"{name}.parquet")
    return paths


def shop_schema(uris: dict[str, str]) -> dict[str, Any]:
    """The shop's ``dataset.tables``."""
    return {
        "customers": {"uri": uris["customers"], "primary_key": "customer_id"},
        "orders": {
            "uri": uris["orders"],
            "primary_key": "order_id",
            "foreign_keys": [{"column": "customer_id", "references": "customers"}],
            "order_by": "order_ts",
        },
        "items": {
            "uri": uris["items"],
            "primary_key": "item_id",
            "foreign_keys": [{"column": "order_id", "references": "orders"}],
        },
    }


def shop_job(uris: dict[str, str], output: str, **sections: Any) -> JobSpec:
    """A job on the shop that trains in seconds."""
    data: dict[str, Any] = {
        "name": "shop",
        "dataset": {"tables": shop_schema(uris)},
        "model": {"family": "autoregressive", **TINY_MODELS[("tabular", "autoregressive")]},
        "train": {"epochs": 20, "batch_size": 64, "device": "cpu", "seed": 3},
        "validate": {"min_column_shapes": 0.0, "null_tolerance": 1.0},
        "export": {"output": output, "workspace": workspace_for(output)},
        "retries": {"count": 0, "delay_seconds": 0},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return build_job(data, source="shop-job")
