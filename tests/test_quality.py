"""Validation on constructed cases where the answer is known."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genai_pipeline.config import ExpectationSpec, ValidateSpec
from genai_pipeline.datasets import BUILTINS, ImageData, TabularData
from genai_pipeline.errors import ConfigError
from genai_pipeline.quality.expectations import derive_suite, image_stats, run_suite, table_frame
from genai_pipeline.quality.tabular import column_shapes

PENGUINS = BUILTINS["penguins"].load()


def _validate(real: TabularData, synthetic: pa.Table, spec: ValidateSpec | None = None, **conditions):
    suite = derive_suite(real, spec or ValidateSpec(), conditions, name="test")
    return run_suite(suite, table_frame(synthetic))


def test_real_data_passes_its_own_suite_and_scores_perfectly() -> None:
    passed, failures, results = _validate(TabularData(PENGUINS, "species"), PENGUINS)
    assert passed and not failures
    assert results["results"]["statistics"]["evaluated_expectations"] > 20
    assert all(score == pytest.approx(1.0) for score in column_shapes(PENGUINS, PENGUINS).values())


def test_broken_synthetic_data_fails_the_named_expectations() -> None:
    broken = PENGUINS.set_column(
        PENGUINS.schema.get_field_index("island"), "island", pa.array(["Atlantis"] * PENGUINS.num_rows)
    ).set_column(
        PENGUINS.schema.get_field_index("sex"), "sex", pa.nulls(PENGUINS.num_rows, pa.large_string())
    )
    passed, failures, _ = _validate(TabularData(PENGUINS, "species"), broken)
    assert not passed
    assert any(f.startswith("expect_column_values_to_be_in_set(island)") for f in failures)
    assert any(
        f.startswith("expect_column_proportion_of_non_null_values_to_be_between(sex)") for f in failures
    )
    reordered = PENGUINS.select(list(reversed(PENGUINS.column_names)))
    assert any("ordered_list" in f for f in _validate(TabularData(PENGUINS), reordered)[1])


def test_shifted_columns_lower_their_shape_score() -> None:
    shifted = PENGUINS.set_column(
        2, "bill_length_mm", pa.compute.add(PENGUINS.column("bill_length_mm"), 10.0)
    )
    scores = column_shapes(PENGUINS, shifted)
    assert scores["bill_length_mm"] < 0.5 and scores["island"] == pytest.approx(1.0)


def test_conditions_and_extra_expectations() -> None:
    passed, failures, _ = _validate(TabularData(PENGUINS, "species"), PENGUINS, species="Adelie")
    assert not passed and failures[0].startswith("expect_column_values_to_be_in_set(species)")
    extra = ValidateSpec(
        expectations=[
            ExpectationSpec(
                type="expect_column_max_to_be_between", kwargs={"column": "year", "max_value": 2008}
            )
        ]
    )
    assert any(
        "expect_column_max_to_be_between(year)" in f
        for f in _validate(TabularData(PENGUINS), PENGUINS, extra)[1]
    )
    unknown = ValidateSpec(expectations=[ExpectationSpec(type="expect_the_unexpected")])
    with pytest.raises(ConfigError, match="validate.expectations.0: expect_the_unexpected"):
        derive_suite(TabularData(PENGUINS), unknown, {}, name="x")


def test_image_suite_catches_blank_and_wrong_shape_images() -> None:
    images, labels = BUILTINS["digits"].load()
    real = ImageData(images=images, labels=labels)
    suite = derive_suite(real, ValidateSpec(), {}, name="digits")
    assert run_suite(suite, image_stats(images[:300], labels[:300]))[0]
    blank = np.full_like(images[:300], 255)
    passed, failures, _ = run_suite(suite, image_stats(blank, labels[:300]))
    assert not passed and any("expect_column_pair_values_a_to_be_greater_than_b" in f for f in failures)
    wrong = np.zeros((10, 9, 8, 1), dtype=np.uint8)
    wrong[:, 0, 0] = 255
    failures = run_suite(suite, image_stats(wrong, labels[:10]))[1]
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
