"""Which metrics a run gets, on which rows: scoring from data and specs alone, no run or storage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from genai_pipeline.config import ValidateSpec
from genai_pipeline.datasets import BUILTINS, ImageData
from genai_pipeline.quality.gate import MetricRows
from genai_pipeline.quality.scoring import TablePrivacy, score_images, score_tables

PENGUINS = BUILTINS["penguins"].load()


def _metrics(rows: MetricRows, scope: str) -> dict[str | None, dict[str, float]]:
    out: dict[str | None, dict[str, float]] = {}
    for row in rows.rows:
        if row["scope"] == scope:
            out.setdefault(row["column"], {})[row["metric"]] = row["value"]
    return out


def test_a_conditioned_table_run_is_compared_with_the_real_rows_that_meet_its_conditions() -> None:
    dream = PENGUINS.filter(pc.equal(PENGUINS.column("island"), "Dream"))
    rows = MetricRows("r", ValidateSpec())
    charts = score_tables(
        rows, PENGUINS, None, dream, target="species", conditions={"island": "Dream"}, per_label=False, seed=0
    )
    shapes = {
        column: values["column_shape"]
        for column, values in _metrics(rows, "column").items()
        if "column_shape" in values
    }
    assert "island" not in shapes and min(shapes.values()) == pytest.approx(1.0)
    assert charts["real"].num_rows == dream.num_rows and "island" not in charts["synthetic"].column_names
    table = _metrics(rows, "table")[None]
    assert table["column_shapes"] == pytest.approx(1.0)
    assert "dcr_share" not in table  # no holdout, no privacy or utility


def test_a_rebalanced_run_is_compared_with_real_rows_drawn_to_its_shares() -> None:
    # "synthetic" rows that are real rows at the asked shares: half Torgersen, the rest as the real
    torgersen = PENGUINS.filter(pc.equal(PENGUINS.column("island"), "Torgersen"))
    others = PENGUINS.filter(pc.not_equal(PENGUINS.column("island"), "Torgersen"))
    synthetic = pa.concat_tables([torgersen.take(pa.array(np.arange(292) % torgersen.num_rows)), others])
    shapes = {}
    for rebalance in ({}, {"island": {"Torgersen": 0.5}}):
        rows = MetricRows("r", ValidateSpec())
        score_tables(
            rows,
            PENGUINS,
            None,
            synthetic,
            target="species",
            conditions={},
            per_label=False,
            seed=0,
            rebalance=rebalance,
        )
        shapes[bool(rebalance)] = _metrics(rows, "column")
    assert "column_shape" not in shapes[True].get("island", {})  # the shares asked for: not a miss
    # Torgersen's penguins are all Adelie: against the real rows as they are, species looks off
    assert shapes[False]["species"]["column_shape"] < 0.8 < 0.9 < shapes[True]["species"]["column_shape"]


def test_per_label_counts_leave_the_label_out_and_a_holdout_brings_privacy_and_utility() -> None:
    order = np.random.default_rng(0).permutation(PENGUINS.num_rows)
    train, holdout = PENGUINS.take(pa.array(order[100:])), PENGUINS.take(pa.array(order[:100]))
    rows = MetricRows("r", ValidateSpec())
    score_tables(rows, train, holdout, train, target="species", conditions={}, per_label=True, seed=0)
    assert "column_shape" not in _metrics(rows, "column").get("species", {})
    table = _metrics(rows, "table")
    assert table[None]["memorised_share"] == 1.0  # the "synthetic" rows are the training rows
    # … and so hold what value protection keeps out: rare values and outliers (failing the gate)
    assert table[None]["rare_real_value_share"] > 0 and "rare_real_value_share=" in rows.misses("error")[0]
    assert table[None]["membership_auc"] > 0.8  # copies: the attack tells training rows apart
    assert "attribute_gain" not in table["species"]  # per_label fixed the label: nothing to infer
    rows = MetricRows("r", ValidateSpec())
    privacy = TablePrivacy(sensitive="year")  # the species is told from the bills by anyone: no gain
    score_tables(
        rows, train, holdout, train, target="species", conditions={}, per_label=False, seed=0, privacy=privacy
    )
    assert _metrics(rows, "table")["year"]["attribute_gain"] > 0.3
    assert 0 < table["species"]["utility_ratio"] <= 1.5


def test_an_image_run_of_one_label_asks_for_no_classifier() -> None:
    images, labels = BUILTINS["digits"].load()
    ones = ImageData(images=images[labels == "1"], labels=labels[labels == "1"])

    def no_classifier() -> None:
        raise AssertionError("a classifier of one label tells nothing")

    for conditioned in (False, True):
        rows = MetricRows("r", ValidateSpec())
        charts = score_images(
            rows,
            ones,
            None,
            ones,
            classifier=no_classifier,
            conditioned=conditioned,
            seed=0,
            cas_seed=0,
            cas_steps=10,
        )
        metrics = _metrics(rows, "images")[None]
        assert metrics["pixel_histogram"] == 1.0 and metrics["memorised_share"] == 1.0
        assert ("label_distribution" in metrics) is not conditioned
        assert charts["synthetic_images"][0] is ones.images


def test_pair_trends_beyond_the_limit_are_scored_on_a_seeded_sample_of_pairs() -> None:
    """Pairs grow with the square of the columns (4 ms a pair: 1,000 columns took about 35 minutes,
    every pair stored in the manifest): at most validate.max_pairs, the same ones for the same seed."""
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.normal(size=200) for i in range(30)})  # 435 pairs
    scored = []
    for seed in (0, 0, 1):
        rows = MetricRows("r", ValidateSpec())
        score_tables(
            rows, table, None, table, target=None, conditions={}, per_label=False, seed=seed, max_pairs=50
        )
        scored.append([row["column"] for row in rows.rows if row["metric"] == "pair_trend"])
    assert len(scored[0]) == 50 and scored[0] == scored[1] != scored[2]
    rows = MetricRows("r", ValidateSpec())
    score_tables(rows, table, None, table, target=None, conditions={}, per_label=False, seed=0)
    assert sum(row["metric"] == "pair_trend" for row in rows.rows) == 435  # under the default limit
