"""An orders table with the rules shops have, and those rules as ``generate.constraints``: what
the constraint tests train on (``test_constraints``, the model contract, the flow)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genai_pipeline.constraints import _SPECS, ConstraintSpec, CustomRule

#: one of each kind a model enforces by construction (unique and custom are tested on their own)
RULES = [
    {"kind": "inequality", "low": "ordered_at", "high": "shipped_on", "strict": True},
    {"kind": "inequality", "low": "shipped_on", "high": "delivered_on", "gap": "1 day"},
    {"kind": "range", "column": "discount", "low": 0, "high": "price"},
    {"kind": "fixed_combinations", "columns": ["city", "country"]},
    {"kind": "formula", "column": "total", "expression": "price * quantity - discount"},
    {"kind": "one_of", "column": "status", "values": ["new", "shipped", "returned"]},
    {"kind": "positive", "columns": ["quantity"], "strict": True},
]

CITIES = {"Paris": "FR", "Lyon": "FR", "Berlin": "DE", "Hamburg": "DE", "Madrid": "ES"}


def orders(rows: int = 600, seed: int = 0) -> pa.Table:
    """Orders placed in business hours, shipped 1–8 days later and delivered 1–4 days after that,
    a discount below the price, a total that is price × quantity − discount to the cent, cities
    with their country, no returns in Paris."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    minutes = rng.integers(0, 365, rows) * 24 * 60 + rng.integers(8 * 60, 20 * 60, rows)  # BusinessHours
    ordered = start + (minutes * 60_000_000).astype("timedelta64[us]")
    days = rng.integers(1, 9, rows)
    shipped = (ordered.astype("datetime64[D]") + days.astype("timedelta64[D]")).astype("datetime64[D]")
    delivered = shipped + rng.integers(1, 5, rows).astype("timedelta64[D]")
    price = np.round(rng.lognormal(3, 0.6, rows), 2)
    quantity = rng.integers(1, 6, rows)
    discount = np.round(price * rng.uniform(0, 0.3, rows), 2)
    city = rng.choice(list(CITIES), rows, p=[0.3, 0.2, 0.25, 0.15, 0.1])
    status = rng.choice(["new", "shipped", "returned"], rows, p=[0.2, 0.6, 0.2])
    status = np.where((city == "Paris") & (status == "returned"), "shipped", status)  # NoReturnsInParis
    return pa.table(
        {
            "order_id": [f"O-{seed:02d}{row:06d}" for row in range(rows)],
            "ordered_at": pa.array(ordered, pa.timestamp("us")),
            "shipped_on": pa.array(
                [dt.date.fromisoformat(str(day)) for day in shipped.astype(str)], pa.date32()
            ),
            "delivered_on": pa.array(
                [dt.date.fromisoformat(str(day)) for day in delivered.astype(str)], pa.date32()
            ),
            "price": price,
            "quantity": pa.array(quantity, pa.int32()),
            "discount": discount,
            "total": np.round(price * quantity - discount, 2),
            "city": city,
            "country": [CITIES[name] for name in city],
            "status": status,
        }
    )


def rules(items: list[dict] | None = None) -> tuple[ConstraintSpec, ...]:
    """Constraint specs from their job-spec dicts (default :data:`RULES`)."""
    return tuple(_SPECS.validate_python(item) for item in (RULES if items is None else items))


class BusinessHours(CustomRule):
    """Orders placed between 8:00 and 20:00, repaired by moving them to the nearest end of the day's
    hours (a rule with a reverse transform)."""

    def is_valid(self, table: pa.Table) -> np.ndarray:
        hours = pc.hour(table.column("ordered_at")).to_numpy(zero_copy_only=False)
        return np.isnan(hours) | ((hours >= 8) & (hours < 20))

    def reverse_transform(self, table: pa.Table) -> pa.Table:
        at = table.column("ordered_at")
        day = pc.floor_temporal(at, unit="day")
        opens = pc.add(day, pa.scalar(np.timedelta64(8 * 3600 * 10**6, "us")))
        closes = pc.add(day, pa.scalar(np.timedelta64(20 * 3600 * 10**6 - 1, "us")))
        fixed = pc.min_element_wise(pc.max_element_wise(at, opens), closes)
        return table.set_column(table.schema.get_field_index("ordered_at"), "ordered_at", fixed)


class NoReturnsInParis(CustomRule):
    """No order from Paris is returned: a rule without a repair, its rows drawn again."""

    def __init__(self, city: str = "Paris"):
        self.city = city

    def is_valid(self, table: pa.Table) -> list[bool]:
        pairs = zip(table.column("city").to_pylist(), table.column("status").to_pylist(), strict=True)
        return [not (city == self.city and status == "returned") for city, status in pairs]
