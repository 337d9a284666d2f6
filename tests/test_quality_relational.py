"""Cross-table and sequence metrics: calibrated on constructed cases (the real tables against
themselves score 1, a broken key, a lost parent–child trend, reversed or uncorrelated sequences
score what they should)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genai_pipeline.quality.relational import (
    cardinality_shape,
    children_per_parent,
    in_order_share,
    referential_integrity,
    relation_scores,
)
from genai_pipeline.relational import Relations, TableSpec


def relations() -> Relations:
    return Relations.of(
        {
            "customers": TableSpec(uri="customers", primary_key="customer_id"),
            "orders": TableSpec.model_validate(
                {
                    "uri": "orders",
                    "primary_key": "order_id",
                    "foreign_keys": [{"column": "customer_id", "references": "customers"}],
                    "order_by": "day",
                }
            ),
        }
    )


def shop(seed: int = 0, customers: int = 400) -> dict[str, pa.Table]:
    """Premium customers order more, and more expensive things; each customer's amounts follow
    each other (an AR(1) walk) on days that go forwards by 1-10."""
    rng = np.random.default_rng(seed)
    premium = rng.random(customers) < 0.3
    counts = rng.poisson(np.where(premium, 6, 2))
    owner = np.repeat(np.arange(customers), counts)
    amounts, days = [], []
    for count, rich in zip(counts, premium):
        walk = np.zeros(count)
        for t in range(count):
            walk[t] = (0.9 * walk[t - 1] if t else 0) + rng.normal()
        amounts.append(walk + (100 if rich else 20))
        days.append(np.cumsum(rng.integers(1, 11, count)))
    return {
        "customers": pa.table(
            {
                "customer_id": [f"C{i:05d}" for i in range(customers)],
                "segment": np.where(premium, "premium", "basic"),
            }
        ),
        "orders": pa.table(
            {
                "order_id": np.arange(len(owner)),
                "customer_id": [f"C{i:05d}" for i in owner],
                "amount": np.concatenate(amounts),
                "day": np.concatenate(days).astype(np.int64),
            }
        ),
    }


def only(scores: list) -> object:
    assert len(scores) == 1
    return scores[0]


def test_the_real_tables_against_themselves_score_one() -> None:
    real = shop()
    score = only(relation_scores(real, real, relations()))
    assert score.name == "orders.customer_id → customers"
    assert score.integrity == 1.0 and score.cardinality == 1.0
    assert {pair: round(trend.score, 9) for pair, trend in score.pair_trends.items()} == {
        ("customers.segment", "orders.amount"): 1.0,
        ("customers.segment", "orders.day"): 1.0,
    }
    assert score.pair_trends[("customers.segment", "orders.amount")].related  # the trend to keep
    assert score.order == 1.0 and score.gaps == 1.0 and score.autocorrelation == {"amount": 1.0}


def test_an_independent_sample_of_the_same_process_scores_high() -> None:
    score = only(relation_scores(shop(0), shop(1), relations()))
    assert score.cardinality > 0.9 and score.gaps > 0.9 and score.autocorrelation["amount"] > 0.95
    assert score.pair_trends[("customers.segment", "orders.amount")].score > 0.9


def test_orders_given_to_random_customers_lose_the_parent_child_trend() -> None:
    real = shop()
    rng = np.random.default_rng(7)
    orders = real["orders"]
    shuffled = rng.choice(
        real["customers"].column("customer_id").to_numpy(zero_copy_only=False), orders.num_rows
    )
    synthetic = {**real, "orders": orders.set_column(1, "customer_id", pa.array(shuffled))}
    score = only(relation_scores(real, synthetic, relations()))
    assert score.integrity == 1.0  # every key still resolves: integrity alone cannot see it
    assert score.pair_trends[("customers.segment", "orders.amount")].score < 0.75


def test_integrity_counts_dangling_keys_and_a_null_only_when_the_key_is_optional() -> None:
    parents = pa.chunked_array([pa.array(["a", "b"])])
    children = pa.chunked_array([pa.array(["a", "b", "zz", None])])
    assert referential_integrity(children, parents, optional=True) == 0.75
    assert referential_integrity(children, parents, optional=False) == 0.5
    assert referential_integrity(children.slice(0, 0), parents, optional=False) == 1.0


def test_cardinality_is_one_minus_ks_of_children_per_parent_zero_included() -> None:
    parents = pa.chunked_array([pa.array([1, 2, 3, 4])])
    real = pa.chunked_array([pa.array([2, 3, 3, 4, 4, 4, 99])])  # 0, 1, 2, 3 children; 99 is no parent
    assert children_per_parent(parents, real).tolist() == [0, 1, 2, 3]
    synthetic = pa.chunked_array([pa.array([1, 2, 3, 4])])
    assert cardinality_shape((parents, real), (parents, synthetic)) == pytest.approx(0.5)


def test_events_read_backwards_or_shuffled_are_out_of_order() -> None:
    table = pa.table({"who": ["a", "b", "a", "b", "a"], "day": [1, 5, 2, 4, 3]})
    # a: 1, 2, 3 in file order (in order); b: 5 then 4 (backwards)
    assert in_order_share(table, "who", "day") == pytest.approx(2 / 3)
    assert in_order_share(table.slice(0, 2), "who", "day") is None


def test_sequences_without_their_memory_or_with_other_gaps_score_lower() -> None:
    real = shop()
    rng = np.random.default_rng(3)
    orders = real["orders"]
    amounts = orders.column("amount").to_numpy()
    # the same amounts and days, shuffled within each segment's customers: no walk left, and
    # daily gaps of 30 instead of 1-10
    premium = np.asarray([a > 60 for a in amounts])
    shuffled = amounts.copy()
    for group in (premium, ~premium):
        shuffled[group] = rng.permutation(amounts[group])
    owners = orders.column("customer_id").to_numpy(zero_copy_only=False)
    position = np.concatenate([np.arange(n) for n in np.unique(owners, return_counts=True)[1]])
    synthetic = {
        **real,
        "orders": orders.set_column(2, "amount", pa.array(shuffled)).set_column(
            3, "day", pa.array(30 * (position + 1))
        ),
    }
    score = only(relation_scores(real, synthetic, relations()))
    assert score.order == 1.0
    assert score.autocorrelation["amount"] < 0.75
    assert score.gaps < 0.2


def test_an_empty_child_table_and_timestamps_are_scored_without_error() -> None:
    real = shop()
    orders = real["orders"]
    days = pa.array(orders.column("day").to_numpy() * 86_400_000_000, pa.timestamp("us"))
    real = {**real, "orders": orders.set_column(3, "day", days)}
    score = only(relation_scores(real, real, relations()))
    assert score.order == 1.0 and score.gaps == 1.0
    empty = {**real, "orders": real["orders"].slice(0, 0)}
    score = only(relation_scores(real, empty, relations()))
    assert score.integrity == 1.0 and score.cardinality is not None and score.cardinality < 0.2
    assert score.order is None and score.gaps is None and score.autocorrelation == {}
