"""Membership and attribute inference calibrated on known cases: copies leak, fresh real rows do not."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pytest

from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.quality.attacks import attribute_inference, membership_auc

PENGUINS: pa.Table = BUILTINS["penguins"].load()
SEEDS = (0, 1, 2)


def _population(rows: int, seed: int) -> pa.Table:
    """Draws from one known mixture of three groups: numbers (one with nulls), a noisy group label,
    a flag, a date, a timestamp and an integer, so that fresh draws are real rows no model has seen."""
    rng = np.random.default_rng(seed)
    group = rng.choice(3, rows, p=[0.5, 0.3, 0.2])
    centres = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
    a, b = (centres[group] + rng.normal(0, 1, (rows, 2))).T
    label = np.where(rng.random(rows) < 0.7, group, rng.choice(3, rows))
    start = datetime.date(2020, 1, 1)
    return pa.table(
        {
            "a": a,
            "b": pa.array(b, mask=rng.random(rows) < 0.05),
            "label": np.array(["low", "mid", "high"])[label],
            "flag": rng.random(rows) < 0.3 + 0.2 * group,
            "day": pa.array(
                [start + datetime.timedelta(days=int(d)) for d in 200 * a + rng.integers(0, 60, rows)]
            ),
            "seen": pa.array(
                (1.6e9 + 86_400 * (50 * b + rng.random(rows))).astype(np.int64), pa.timestamp("s")
            ),
            "age": np.round(40 + 8 * b + rng.normal(0, 6, rows)).astype(np.int64),
            "income": np.exp(10 + 0.3 * group + rng.normal(0, 0.4, rows)),
        }
    )


def _cases(seed: int) -> tuple[pa.Table, pa.Table, dict[str, pa.Table]]:
    """Training and holdout rows (3,000 each) and three models: one that copies the training rows,
    one that draws fresh rows from the population, one that copies 30% and draws 70%."""
    real, fresh = _population(6_000, seed), _population(3_000, 100 + seed)
    train, holdout = real.slice(0, 3_000), real.slice(3_000)
    partial = pa.concat_tables([train.slice(0, 900), fresh.slice(0, 2_100)])
    return train, holdout, {"copies": train, "fresh": fresh, "partial": partial}


def _penguin_cases(seed: int) -> tuple[pa.Table, pa.Table, dict[str, pa.Table]]:
    """Penguins shuffled into 144 training, 100 holdout and 100 fresh rows."""
    shuffled = PENGUINS.take(np.random.default_rng(seed).permutation(PENGUINS.num_rows))
    train, holdout, fresh = shuffled.slice(0, 144), shuffled.slice(144, 100), shuffled.slice(244)
    partial = pa.concat_tables([train.slice(0, 43), fresh])
    return train, holdout, {"copies": train, "fresh": fresh, "partial": partial}


@pytest.mark.parametrize("seed", SEEDS)
def test_membership_auc_is_high_for_copies_half_for_fresh_rows_and_between_for_some_copies(seed: int) -> None:
    train, holdout, models = _cases(seed)
    auc = {name: membership_auc(train, holdout, synthetic, seed=seed) for name, synthetic in models.items()}
    assert {result.rows for result in auc.values()} == {1_500}
    assert auc["copies"].auc >= 0.95
    assert auc["fresh"].auc == pytest.approx(0.5, abs=0.07)
    assert auc["fresh"].auc + 0.08 < auc["partial"].auc < auc["copies"].auc - 0.2


@pytest.mark.parametrize("seed", SEEDS)
def test_membership_auc_on_penguins(seed: int) -> None:
    train, holdout, models = _penguin_cases(seed)
    auc = {name: membership_auc(train, holdout, synthetic, seed=seed) for name, synthetic in models.items()}
    assert auc["copies"].rows == 50
    assert auc["copies"].auc >= 0.95
    assert auc["fresh"].auc == pytest.approx(0.5, abs=0.2)  # 50 against 50 rows: the AUC's sd is 0.06
    assert auc["fresh"].auc < auc["partial"].auc < auc["copies"].auc


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("target", ["label", "income"])
def test_attribute_inference_gains_from_copies_not_from_fresh_rows(seed: int, target: str) -> None:
    train, holdout, models = _cases(seed)
    copies = attribute_inference(train, holdout, models["copies"], target, seed=seed)
    fresh = attribute_inference(train, holdout, models["fresh"], target, seed=seed)
    assert copies.rows == fresh.rows == 2_000
    assert copies.train_accuracy == 1.0 and copies.gain > 0.2  # the label is 70% predictable at most
    assert abs(fresh.gain) < 0.05
    assert fresh.holdout_accuracy == pytest.approx(copies.holdout_accuracy, abs=0.05)  # the population


@pytest.mark.parametrize("seed", SEEDS)
def test_attribute_inference_on_penguins(seed: int) -> None:
    train, holdout, models = _penguin_cases(seed)
    for target in ("year", "body_mass_g"):
        copies = attribute_inference(train, holdout, models["copies"], target, seed=seed)
        fresh = attribute_inference(train, holdout, models["fresh"], target, seed=seed)
        assert copies.train_accuracy == 1.0 and copies.gain > 0.3
        assert abs(fresh.gain) < copies.gain / 2


def test_excluded_columns_single_columns_and_encodings() -> None:
    train, holdout, models = _cases(0)
    kept = train.column_names
    # identifiers generated fresh: copied rows no longer match on them, so they must be left out
    ids = np.random.default_rng(0).permutation(train.num_rows)
    copies_with_ids = models["copies"].append_column("id", pa.array(ids))
    train_with_ids = train.append_column("id", pa.array(np.arange(train.num_rows)))
    holdout_with_ids = holdout.append_column("id", pa.array(train.num_rows + np.arange(holdout.num_rows)))
    with_ids = (train_with_ids, holdout_with_ids, copies_with_ids)
    assert attribute_inference(*with_ids, "label", seed=0).gain < 0.1
    assert attribute_inference(*with_ids, "label", seed=0, columns=kept).gain > 0.2
    assert membership_auc(*with_ids, seed=0, columns=kept).auc >= 0.95
    # one number: fresh rows' nearest synthetic rows sit ~1e-4 away, so a copy stands out less
    assert membership_auc(train, holdout, models["copies"], seed=0, columns=["a"]).auc >= 0.8
    # one category only: every row has identical twins on both sides, so there is nothing to tell
    assert membership_auc(train, holdout, models["copies"], seed=0, columns=["label"]).auc == pytest.approx(
        0.5, abs=0.02
    )
    encoded = models["copies"].set_column(2, "label", models["copies"].column("label").dictionary_encode())
    assert membership_auc(train, holdout, encoded, seed=0).auc >= 0.95
    known_one = attribute_inference(train, holdout, encoded, "label", seed=0, columns=["a", "label"])
    assert known_one.train_accuracy == 1.0 and known_one.gain > 0.3
    assert attribute_inference(train, holdout, encoded, "flag", seed=0, columns=["day"]).gain > 0.2


def test_too_small_holdouts_and_nothing_to_compare_are_refused() -> None:
    train, holdout, models = _cases(0)
    with pytest.raises(ValueError, match="19 holdout rows"):
        membership_auc(train, holdout.slice(0, 19), models["fresh"], seed=0)
    with pytest.raises(ValueError, match="19 holdout rows"):
        attribute_inference(train, holdout.slice(0, 19), models["fresh"], "label", seed=0)
    with pytest.raises(ValueError, match="at least one column"):
        attribute_inference(train, holdout, models["fresh"], "label", seed=0, columns=["label"])
    small = membership_auc(train, holdout.slice(0, 20), models["fresh"], seed=0)
    assert small.rows == 10 and 0.0 <= small.auc <= 1.0
