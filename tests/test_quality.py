"""Validation on constructed cases where the answer is known."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genai_pipeline.config import ExpectationSpec, ValidateSpec
from genai_pipeline.datasets import BUILTINS, ImageData, TabularData
from genai_pipeline.errors import ConfigError
from genai_pipeline.quality.expectations import (
    FreshCheck,
    data_suite,
    derive_suite,
    image_stats,
    run_suite,
    table_frame,
)
from genai_pipeline.quality.tabular import column_shapes

PENGUINS = BUILTINS["penguins"].load()


def _validate(real: TabularData, synthetic: pa.Table, spec: ValidateSpec | None = None, **conditions):
    suite = derive_suite(real, spec or ValidateSpec(), conditions, name="test")
    return run_suite(suite, table_frame(synthetic))


def test_real_data_passes_its_own_suite_and_scores_perfectly() -> None:
    result = _validate(TabularData(PENGUINS, "species"), PENGUINS)
    assert not result.failures and not result.warnings
    assert result.evaluated == result.payload["results"]["statistics"]["evaluated_expectations"] > 20
    assert all(score == pytest.approx(1.0) for score in column_shapes(PENGUINS, PENGUINS).values())


def test_broken_synthetic_data_fails_the_named_expectations() -> None:
    broken = PENGUINS.set_column(
        PENGUINS.schema.get_field_index("island"), "island", pa.array(["Atlantis"] * PENGUINS.num_rows)
    ).set_column(
        PENGUINS.schema.get_field_index("sex"), "sex", pa.nulls(PENGUINS.num_rows, pa.large_string())
    )
    failures = _validate(TabularData(PENGUINS, "species"), broken).failures
    assert any(f.startswith("expect_column_values_to_be_in_set(island)") for f in failures)
    assert any(
        f.startswith("expect_column_proportion_of_non_null_values_to_be_between(sex)") for f in failures
    )
    reordered = PENGUINS.select(list(reversed(PENGUINS.column_names)))
    assert any("ordered_list" in f for f in _validate(TabularData(PENGUINS), reordered).failures)


def test_shifted_columns_lower_their_shape_score() -> None:
    shifted = PENGUINS.set_column(
        2, "bill_length_mm", pa.compute.add(PENGUINS.column("bill_length_mm"), 10.0)
    )
    scores = column_shapes(PENGUINS, shifted)
    assert scores["bill_length_mm"] < 0.5 and scores["island"] == pytest.approx(1.0)


def test_conditions_and_extra_expectations() -> None:
    failures = _validate(TabularData(PENGUINS, "species"), PENGUINS, species="Adelie").failures
    assert failures[0].startswith("expect_column_values_to_be_in_set(species)")
    extra = ValidateSpec(
        expectations=[
            ExpectationSpec(
                type="expect_column_max_to_be_between", kwargs={"column": "year", "max_value": 2008}
            )
        ]
    )
    assert any(
        "expect_column_max_to_be_between(year)" in f
        for f in _validate(TabularData(PENGUINS), PENGUINS, extra).failures
    )
    unknown = ValidateSpec(expectations=[ExpectationSpec(type="expect_the_unexpected")])
    with pytest.raises(ConfigError, match="validate.expectations.0: expect_the_unexpected"):
        derive_suite(TabularData(PENGUINS), unknown, {}, name="x")


def test_image_suite_catches_blank_and_wrong_shape_images() -> None:
    images, labels = BUILTINS["digits"].load()
    real = ImageData(images=images, labels=labels)
    suite = derive_suite(real, ValidateSpec(), {}, name="digits")
    assert not run_suite(suite, image_stats(images[:300], labels[:300])).failures
    blank = np.full_like(images[:300], 255)
    failures = run_suite(suite, image_stats(blank, labels[:300])).failures
    assert any("expect_column_pair_values_a_to_be_greater_than_b" in f for f in failures)
    wrong = np.zeros((10, 9, 8, 1), dtype=np.uint8)
    wrong[:, 0, 0] = 255
    failures = run_suite(suite, image_stats(wrong, labels[:10])).failures
    assert any(f.startswith("expect_column_values_to_be_between(height)") for f in failures)


def test_pair_trends_see_broken_relationships() -> None:
    from genai_pipeline.quality.tabular import pair_trends

    assert all(score == pytest.approx(1.0) for score in pair_trends(PENGUINS, PENGUINS).values())
    rng = np.random.default_rng(0)
    shuffled = pa.table(
        {n: PENGUINS.column(n).take(rng.permutation(PENGUINS.num_rows)) for n in PENGUINS.column_names}
    )
    scores = pair_trends(PENGUINS, shuffled)
    assert len(scores) == 8 * 7 // 2
    assert scores[("flipper_length_mm", "body_mass_g")] < 0.7  # a strong correlation, destroyed
    assert np.mean(list(scores.values())) < 0.85


def test_the_overall_pair_score_counts_the_pairs_related_in_the_real_data() -> None:
    """As SDMetrics' QualityReport: a pair that is unrelated in the real data stays unrelated in
    shuffled data, so it would only dilute the score."""
    from genai_pipeline.quality.tabular import pair_trend_details, pair_trends_score

    details = pair_trend_details(PENGUINS, PENGUINS)
    assert details[("flipper_length_mm", "body_mass_g")].related  # Pearson 0.87
    assert details[("species", "island")].related  # Cramér's V 0.65
    assert not details[("sex", "year")].related
    assert pair_trends_score(PENGUINS, PENGUINS) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    shuffled = pa.table(
        {n: PENGUINS.column(n).take(rng.permutation(PENGUINS.num_rows)) for n in PENGUINS.column_names}
    )
    related = [t.score for t in pair_trend_details(PENGUINS, shuffled).values() if t.related]
    assert pair_trends_score(PENGUINS, shuffled) == pytest.approx(np.mean(related))
    all_pairs = [t.score for t in pair_trend_details(PENGUINS, shuffled).values()]
    assert pair_trends_score(PENGUINS, shuffled) < np.mean(all_pairs)


def test_nulls_are_a_category_of_their_own_in_pair_trends() -> None:
    """Synthetic rows that lose a column's nulls change its contingency tables (SDMetrics counts
    null as a value)."""
    from genai_pipeline.quality.tabular import pair_trends

    filled = PENGUINS.set_column(
        PENGUINS.schema.get_field_index("sex"),
        "sex",
        pa.compute.fill_null(PENGUINS.column("sex"), "male"),
    )
    scores = pair_trends(PENGUINS, filled)
    nulls = PENGUINS.column("sex").null_count / PENGUINS.num_rows
    assert scores[("species", "sex")] == pytest.approx(1 - nulls, abs=1e-9)
    assert scores[("species", "island")] == pytest.approx(1.0)


def test_coverage_and_null_rates_on_known_cases() -> None:
    from genai_pipeline.quality.tabular import column_coverage

    real = pa.table({"x": [0.0, 5.0, 10.0, None], "c": ["a", "b", "c", "d"]})
    assert column_coverage(real["x"], real["x"]) == {"null_rate_similarity": 1.0, "range_coverage": 1.0}
    assert column_coverage(real["c"], real["c"]) == {"null_rate_similarity": 1.0, "category_coverage": 1.0}
    narrow = pa.chunked_array([pa.array([2.0, 4.0, 6.0, 7.0])])  # covers 2..7 of 0..10, no nulls
    assert column_coverage(real["x"], narrow) == pytest.approx(
        {"null_rate_similarity": 0.75, "range_coverage": 0.5}
    )
    wider = pa.chunked_array([pa.array([-50.0, 50.0])])  # beyond the real range: still covers all of it
    assert column_coverage(real["x"], wider)["range_coverage"] == 1.0
    missing = pa.chunked_array([pa.array(["a", "a", "b", None])])
    assert column_coverage(real["c"], missing) == {"null_rate_similarity": 0.75, "category_coverage": 0.5}


def test_new_rows_are_told_from_copied_training_rows() -> None:
    from genai_pipeline.quality.tabular import new_row_share

    assert new_row_share(PENGUINS, PENGUINS) == 0.0  # every row a copy
    rng = np.random.default_rng(0)
    shuffled = pa.table(
        {n: PENGUINS.column(n).take(rng.permutation(PENGUINS.num_rows)) for n in PENGUINS.column_names}
    )
    assert new_row_share(PENGUINS, shuffled) > 0.95
    half = pa.concat_tables([PENGUINS.slice(0, 100), shuffled.slice(100, 100)])
    assert new_row_share(PENGUINS, half) == pytest.approx(0.5, abs=0.03)
    dictionary = PENGUINS.set_column(0, "species", PENGUINS.column("species").dictionary_encode())
    assert new_row_share(dictionary, dictionary) == 0.0  # the same values, whatever the encoding


def _blobs(rows: int, seed: int, shift: float = 0.0) -> pa.Table:
    """Two correlated numbers and a category that depends on them: one distribution, fresh draws."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1, rows)
    y = 0.8 * x + rng.normal(0, 0.6, rows)
    kind = np.where(x + rng.normal(0, 0.5, rows) > shift, "high", "low")
    return pa.table({"x": x, "y": y, "kind": kind, "n": rng.integers(0, 5, rows)})


def test_privacy_of_fresh_draws_copies_and_holdout_reference() -> None:
    from genai_pipeline.quality.privacy import privacy_scores

    train, holdout = _blobs(1500, 1), _blobs(1500, 2)
    fresh = privacy_scores(train, holdout, _blobs(1500, 3))
    assert fresh.dcr_share == pytest.approx(0.5, abs=0.05)
    assert fresh.nndr == pytest.approx(fresh.holdout_nndr, abs=0.05) and fresh.memorised_share < 0.06
    copies = privacy_scores(train, holdout, train)
    assert copies.dcr_share == 1.0 and copies.nndr == 0.0 and copies.memorised_share == 1.0
    bigger_train = privacy_scores(pa.concat_tables([train, _blobs(3000, 4)]), holdout, train)
    assert bigger_train.memorised_share == 1.0  # diluted in the equal-sized DCR share, not here


def test_utility_of_fresh_draws_and_of_a_broken_target() -> None:
    from genai_pipeline.quality.utility import utility_scores

    train, holdout, fresh = _blobs(1500, 1), _blobs(1500, 2), _blobs(1500, 3)
    same = utility_scores(train, holdout, fresh, "kind")
    assert same is not None and same.task == "classification" and same.ratio == pytest.approx(1.0, abs=0.05)
    shuffled = fresh.set_column(2, "kind", pa.array(np.random.default_rng(0).permutation(fresh.column(2))))
    broken = utility_scores(train, holdout, shuffled, "kind")
    assert broken is not None and broken.ratio < 0.75
    regression = utility_scores(train, holdout, fresh, "y")
    assert regression is not None and regression.task == "regression" and regression.trtr > 0.5
    assert (
        utility_scores(train, holdout, fresh.filter(pa.compute.equal(fresh.column(2), "low")), "kind") is None
    )


def test_the_gate_reads_thresholds_directions_and_severities() -> None:
    from genai_pipeline.quality.gate import MetricRows

    rows = MetricRows("r1", ValidateSpec(min_column_shapes=0.8, max_dcr_share=0.6, warn_on=["dcr_share"]))
    rows.add("table", None, "column_shapes", 0.7)
    rows.add("table", None, "dcr_share", 0.9)
    rows.add("column", "x", "column_shape", 0.1)  # per-column rows are reported, never gated
    assert rows.misses("error") == ["column_shapes=0.700 < 0.8"]
    assert rows.misses("warning") == ["dcr_share=0.900 > 0.6"]
    table = rows.table().to_pylist()
    assert [(r["bound"], r["severity"], r["passed"]) for r in table] == [
        ("min", "error", False),
        ("max", "warning", False),
        (None, None, True),
    ]


def test_job_expectations_replace_derived_ones_of_the_same_column() -> None:
    from genai_pipeline.quality.expectations import data_suite, job_suite, load_suite, suite_bytes

    base = load_suite(suite_bytes(data_suite(TabularData(PENGUINS), ValidateSpec(), "p")), "suite.json")
    wider = ExpectationSpec(
        type="expect_column_values_to_be_between",
        kwargs={"column": "body_mass_g", "min_value": 1000, "max_value": 9000},
        severity="warning",
    )
    suite = job_suite(base, ValidateSpec(expectations=[wider]), {}, "tabular")
    between = [
        e
        for e in suite.expectations
        if e.expectation_type == "expect_column_values_to_be_between"
        and e.configuration.kwargs["column"] == "body_mass_g"
    ]
    assert len(between) == 1 and between[0].configuration.kwargs["min_value"] == 1000
    assert len(suite.expectations) == len(base.expectations)
    heavy = PENGUINS.set_column(5, "body_mass_g", pa.array([9500] * PENGUINS.num_rows))
    result = run_suite(suite, table_frame(heavy))
    assert not result.failures
    assert result.warnings[0].startswith("expect_column_values_to_be_between(body_mass_g)")
    with pytest.raises(ConfigError, match="suite.json: not a valid expectation suite"):
        load_suite(b"{not json", "suite.json")


def test_columns_made_fresh_are_expected_unique_in_their_format_never_a_value_set() -> None:
    rows = pa.table({"OrderID": [f"o-{i}" for i in range(50)], "valid": list(range(50)), "n": [1, 2] * 25})
    fresh = {"OrderID": FreshCheck(null_share=0.0, unique=True, pattern=r"^o-[0-9]+$")}
    suite = data_suite(
        TabularData(rows.select(["valid", "n"])), ValidateSpec(), "orders", fresh=fresh, schema=rows.schema
    )
    kinds = {
        (e.expectation_type, e.configuration.kwargs["column"])
        for e in suite.expectations
        if "column" in e.configuration.kwargs
    }
    assert ("expect_column_values_to_be_unique", "OrderID") in kinds
    assert ("expect_column_values_to_match_regex", "OrderID") in kinds
    assert ("expect_column_values_to_be_in_set", "OrderID") not in kinds
    columns = next(
        e for e in suite.expectations if e.expectation_type == "expect_table_columns_to_match_ordered_list"
    )
    assert columns.configuration.kwargs["column_list"] == ["OrderID", "valid", "n"]
    assert not run_suite(suite, table_frame(rows)).failures
    repeated = rows.set_column(0, "OrderID", pa.array(["o-1"] * 49 + ["x-1"]))
    failures = run_suite(suite, table_frame(repeated)).failures
    assert any(f.startswith("expect_column_values_to_be_unique(OrderID)") for f in failures)
    assert any(f.startswith("expect_column_values_to_match_regex(OrderID)") for f in failures)


def test_nearest_neighbours_are_exact_and_their_search_reuses_one_block(monkeypatch) -> None:
    """Copies sit at distance 0 in float32 (the matrix product alone leaves ~1e-3), the neighbours
    are those of the exact distances, and every block of the search is the same buffer, bounded by
    BLOCK_ELEMENTS, however many queries there are: the search's memory is one block."""
    import torch

    from genai_pipeline.quality import neighbours

    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 1_000)
    generator = torch.Generator().manual_seed(0)
    points = torch.rand((300, 40), generator=generator) * 100
    queries = torch.cat([points[:50], torch.rand((150, 40), generator=generator) * 100])
    distances, indices = neighbours.nearest(queries, points, 3)
    exact = torch.cdist(queries.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    expected = exact.topk(3, dim=1, largest=False)
    assert torch.equal(distances[:50, 0], torch.zeros(50))
    assert torch.equal(indices[:50, 0], torch.arange(50))
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(distances.double(), expected.values, rtol=1e-5)
    blocks = [
        (stop - start, block.data_ptr(), block.numel())
        for start, stop, block in neighbours.distance_blocks(queries, points)
    ]
    assert sum(rows for rows, _, _ in blocks) == 200 and len(blocks) == 67
    assert {pointer for _, pointer, _ in blocks} == {blocks[0][1]}
    assert max(size for _, _, size in blocks) <= 1_000
