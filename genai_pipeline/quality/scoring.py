"""Which metrics a run gets, on which rows: from a run's data to its metric rows.

:func:`score_tables` and :func:`score_images` take the real training rows, the real holdout, a
sample of the output and what the job asked for (conditions, counts per label), add every metric
to the run's :class:`~genai_pipeline.quality.gate.MetricRows` (which applies the thresholds), and
return what the report charts. They know nothing of runs, storage or Prefect: a notebook can
score any two tables with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from genai_pipeline.datasets.base import ImageData
from genai_pipeline.quality.gate import MetricRows
from genai_pipeline.quality.images import (
    LabelClassifier,
    classification_accuracy_score,
    duplicate_share,
    frechet_distance,
    label_distribution,
    manifold_scores,
    memorisation_share,
    pixel_histogram,
)
from genai_pipeline.quality.privacy import privacy_scores
from genai_pipeline.quality.tabular import (
    column_coverage,
    column_pairs,
    column_shapes,
    new_row_share,
    overall_pair_trend,
    pair_trend_details,
    rows_meeting,
)
from genai_pipeline.quality.utility import utility_scores

log = logging.getLogger(__name__)

#: Pair trends are scored on at most this many synthetic rows: a contingency table needs no more.
PAIR_TREND_ROWS = 20_000
#: Fewer real rows than this meeting a run's conditions are too few to compare shapes with.
MIN_REFERENCE_ROWS = 30
#: images compared at most per side in feature space (k-NN and Fréchet statistics settle by then)
MAX_FEATURE_IMAGES = 10_000


def shape_reference(
    real: pa.Table, conditions: Mapping[str, Any], fixed: set[str]
) -> tuple[pa.Table, list[str]]:
    """``(real rows, columns)`` that a run's column shapes are compared with.

    A conditioned run is compared with the real rows that meet its conditions (all rows when fewer
    than :data:`MIN_REFERENCE_ROWS` do), on the columns it did not fix: the conditioned ones, and
    ``fixed`` (the label, whose distribution ``per_label`` sets).
    """
    reference = real
    if conditions:
        matching = rows_meeting(real, conditions)
        if matching.num_rows >= MIN_REFERENCE_ROWS:
            reference = matching
        else:
            log.warning(
                "only %d real rows meet generate.conditions: column shapes are compared with all rows",
                matching.num_rows,
            )
    skipped = set(conditions) | fixed
    return reference, [name for name in real.column_names if name not in skipped]


def scored_pairs(pairs: list[tuple[str, str]], limit: int, seed: int) -> list[tuple[str, str]]:
    """The pairs whose trends are scored: all of them, or a seeded sample of ``limit`` in their own
    order (pairs grow with the square of the columns: 1,000 columns are half a million pairs)."""
    if len(pairs) <= limit:
        return pairs
    log.info("pair trends: %d of %d column pairs scored (validate.max_pairs)", limit, len(pairs))
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False))
    return [pairs[index] for index in keep]


def score_tables(
    rows: MetricRows,
    real: pa.Table,
    holdout: pa.Table | None,
    synthetic: pa.Table,
    *,
    target: str | None,
    conditions: Mapping[str, Any],
    per_label: bool,
    seed: int,
    max_pairs: int = 1_000,
) -> dict[str, Any]:
    """Fidelity, privacy and utility of a table run. ``target`` is the label/target column (the
    utility model's), ``per_label`` whether the run fixed its counts per label; pair trends are
    scored on at most ``max_pairs`` pairs (a seeded sample beyond). Returns the real and synthetic
    columns that were compared, as the report charts them."""
    reference, compared = shape_reference(real, conditions, {target} if per_label and target else set())
    shapes = column_shapes(reference.select(compared), synthetic)
    for name, score in shapes.items():
        rows.add("column", name, "column_shape", score)
    rows.add("table", None, "column_shapes", float(np.mean(list(shapes.values()))) if shapes else 0.0)
    for name in compared:
        for metric, value in column_coverage(reference.column(name), synthetic.column(name)).items():
            rows.add("column", name, metric, value)
    rows.add("table", None, "new_row_share", new_row_share(real, synthetic))
    pairs = scored_pairs(column_pairs(reference.select(compared), synthetic), max_pairs, seed)
    trends = pair_trend_details(reference.select(compared), synthetic.slice(0, PAIR_TREND_ROWS), pairs=pairs)
    for (first, second), trend in trends.items():
        rows.add("pair", f"{first} × {second}", "pair_trend", trend.score)
    if trends:
        rows.add("table", None, "pair_trends", overall_pair_trend(trends))
    charts = {"real": reference.select(compared), "synthetic": synthetic.select(compared)}
    if holdout is None:
        log.info("validate.holdout is 0: no privacy or utility metrics against held-out rows")
        return charts
    privacy = privacy_scores(real, holdout, synthetic, seed=seed)
    rows.add("table", None, "dcr_share", privacy.dcr_share)
    rows.add("table", None, "memorised_share", privacy.memorised_share)
    rows.add("table", None, "nndr", privacy.nndr)
    rows.add("table", None, "holdout_nndr", privacy.holdout_nndr)
    if target is None or target in conditions:
        return charts
    test = rows_meeting(holdout, conditions) if conditions else holdout
    too_few = test.num_rows < MIN_REFERENCE_ROWS
    utility = None if too_few else utility_scores(real, test, synthetic, target, seed=seed)
    if utility is None:
        log.info("no utility score: too few labelled holdout rows, or a single class, for %s", target)
        return charts
    rows.add("table", target, "tstr", utility.tstr)
    rows.add("table", target, "trtr", utility.trtr)
    rows.add("table", target, "utility_ratio", utility.ratio)
    return charts


def score_images(
    rows: MetricRows,
    real: ImageData,
    holdout: ImageData | None,
    synthetic: ImageData,
    *,
    classifier: Callable[[], LabelClassifier],
    conditioned: bool,
    seed: int,
    cas_seed: int,
    cas_steps: int,
) -> dict[str, Any]:
    """Pixel statistics, then what a classifier trained on the real images sees (``classifier``
    gives it, asked only when there are two labels or more): label consistency, Fréchet distance
    and precision/recall/density/coverage in its feature space, CAS on the real holdout;
    memorisation against the training images and repeats within the output. ``conditioned``: the
    run fixed the label, so its label distribution is not compared. Returns the images the report
    shows."""
    rows.add("images", None, "pixel_histogram", pixel_histogram(real.images, synthetic.images))
    if not conditioned:
        rows.add("images", None, "label_distribution", label_distribution(real.labels, synthetic.labels))
    rows.add("images", None, "memorised_share", memorisation_share(synthetic.images, real.images))
    rows.add("images", None, "duplicate_share", duplicate_share(synthetic.images))
    charts = {
        "real_images": (real.images, real.labels),
        "synthetic_images": (synthetic.images, synthetic.labels),
    }
    if len(real.label_names) < 2:
        log.info("a single label: no classifier-based image metrics")
        return charts
    judge = classifier()
    rows.add("images", None, "classifier_accuracy", judge.real_accuracy)
    rows.add("images", None, "label_consistency", judge.consistency(synthetic.images, synthetic.labels))
    rng = np.random.default_rng(seed)
    count = min(len(synthetic.images), len(real.images), MAX_FEATURE_IMAGES)
    real_features = judge.features(real.images[rng.choice(len(real.images), count, replace=False)])
    synthetic_features = judge.features(
        synthetic.images[rng.choice(len(synthetic.images), count, replace=False)]
    )
    rows.add("images", None, "frechet_distance", frechet_distance(real_features, synthetic_features))
    for metric, value in manifold_scores(real_features, synthetic_features).items():
        rows.add("images", None, metric, value)
    if holdout is not None:
        rows.add(
            "images",
            None,
            "cas",
            classification_accuracy_score(synthetic, holdout, seed=cas_seed, min_steps=cas_steps),
        )
    return charts
