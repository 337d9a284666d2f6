"""Which metrics a run gets, on which rows: from a run's data to its metric rows.

:func:`score_tables` and :func:`score_images` take the real training rows, the real holdout, a
sample of the output and what the job asked for (conditions, counts per label), add every metric
to the run's :class:`~genai_pipeline.quality.gate.MetricRows` (which applies the thresholds), and
return what the report charts. They know nothing of runs, storage or Prefect: a notebook can
score any two tables with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genai_pipeline.columns import dense, is_categorical
from genai_pipeline.datasets.base import ImageData
from genai_pipeline.privacy.protection import Protection
from genai_pipeline.privacy.roles import ColumnRole
from genai_pipeline.quality.attacks import attribute_inference, membership_auc
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
from genai_pipeline.quality.privacy import privacy_scores, rare_real_values
from genai_pipeline.quality.tabular import (
    column_coverage,
    column_pairs,
    column_shapes,
    new_row_share,
    overall_pair_trend,
    pair_trend_details,
    rows_meeting,
)
from genai_pipeline.quality.text import CONSISTENCY_CATEGORIES, score_text
from genai_pipeline.quality.utility import utility_scores

log = logging.getLogger(__name__)

#: Pair trends are scored on at most this many synthetic rows: a contingency table needs no more.
PAIR_TREND_ROWS = 20_000
#: synthetic texts the report shows per text column
TEXT_EXAMPLES = 12
#: Fewer real rows than this meeting a run's conditions are too few to compare shapes with.
MIN_REFERENCE_ROWS = 30
#: images compared at most per side in feature space (k-NN and Fréchet statistics settle by then)
MAX_FEATURE_IMAGES = 10_000


@dataclass(frozen=True)
class TablePrivacy:
    """What scoring needs of a table's privacy by construction: the columns' roles (those made
    fresh, and text, are not compared value by value), the value protection, the counts of values
    ingest protected, and the protected view of real rows that charts may show (None: the rows
    themselves, for data that may be shown)."""

    roles: Mapping[str, ColumnRole] = field(default_factory=dict)
    protection: Protection = field(default_factory=Protection)
    protected: Mapping[str, int] = field(default_factory=dict)
    public: Callable[[pa.Table], pa.Table] | None = None
    sensitive: str | None = None  # what an attribute-inference attacker guesses (default: the target)
    private: bool = False  # the model trained with differential privacy
    #: columns a constraint computes from others (a formula's): functions of published values, not
    #: learned, so not compared with the rare real values
    computed: frozenset[str] = frozenset()

    def learned(self, names: list[str]) -> list[str]:
        """The columns a model learns value by value (not made fresh, not text)."""
        return [name for name in names if name not in self.roles or not self.roles[name].unlearned]

    def shown(self, real: pa.Table) -> pa.Table:
        return self.public(real) if self.public is not None else real


@dataclass(frozen=True)
class TextSample:
    """What the report shows of a text column: ``(group, text)`` pairs of synthetic rows (and of
    real ones only when value protection is off: data that may be shown), the words at least
    ``min_rows`` real texts use, and which column ``group`` is."""

    synthetic: list[tuple[str | None, str | None]]
    real: list[tuple[str | None, str | None]]
    common_words: list[str]
    by: str | None


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


def rebalanced_reference(real: pa.Table, column: str, shares: Mapping[Any, float], seed: int) -> pa.Table:
    """The real rows drawn again (seeded, with replacement, as many) so that ``column``'s values
    have the shares ``generate.rebalance`` asked for, the others their real proportions of the
    rest: what a rebalanced run's other columns are compared with (each value's rows as they are)."""
    values = np.asarray([str(value) for value in dense(real.column(column)).to_pylist()], dtype=object)
    names, counts = np.unique(values, return_counts=True)
    asked = {str(value): share for value, share in shares.items()}
    rest = sum(count for name, count in zip(names, counts, strict=True) if name not in asked)
    left = max(0.0, 1 - sum(asked.values()))
    target = {
        name: asked.get(name, left * count / rest if rest else 0.0)
        for name, count in zip(names, counts, strict=True)
    }
    weight = {name: target[name] / count for name, count in zip(names, counts, strict=True)}
    probabilities = np.asarray([weight[value] for value in values], dtype=np.float64)
    if probabilities.sum() <= 0:
        return real
    picked = np.random.default_rng(seed).choice(
        real.num_rows, size=real.num_rows, replace=True, p=probabilities / probabilities.sum()
    )
    return real.take(pa.array(np.sort(picked)))


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
    privacy: TablePrivacy | None = None,
    rebalance: Mapping[str, Mapping[Any, float]] | None = None,
    every: Callable[[], Iterable[pa.Table]] | None = None,
) -> dict[str, Any]:
    """Fidelity, privacy and utility of a table run. ``target`` is the label/target column (the
    utility model's), ``per_label`` whether the run fixed its counts per label, ``rebalance`` the
    shares it gave a column's values (its shapes and pair trends are then compared with real rows
    drawn to those shares, :func:`rebalanced_reference`, without that column's own); pair trends are
    scored on at most ``max_pairs`` pairs (a seeded sample beyond). Columns made fresh, and text,
    are left out of the value-by-value metrics (``privacy``); every column is checked for real
    values fewer than ``min_rows`` rows hold. ``every``: where ``real`` is a sample of a table read
    a row group at a time, those row groups, in which copies of real rows and rare real values are
    looked for (the other metrics are the sample's). Returns the real (as they may be shown) and
    synthetic columns that were compared, as the report charts them."""
    privacy = privacy or TablePrivacy()
    learned = privacy.learned(real.column_names)
    real_all, synthetic_all = real, synthetic
    real, synthetic = real.select(learned), synthetic.select(learned)
    fixed = ({target} if per_label and target else set()) | set(rebalance or {})
    reference, compared = shape_reference(real, conditions, fixed)
    for column, shares in (rebalance or {}).items():
        reference = rebalanced_reference(reference, column, shares, seed)
    shapes = column_shapes(reference.select(compared), synthetic)
    for name, score in shapes.items():
        rows.add("column", name, "column_shape", score)
    if shapes:  # none: every column made fresh, no shape to compare
        rows.add("table", None, "column_shapes", float(np.mean(list(shapes.values()))))
    for name in compared:
        for metric, value in column_coverage(reference.column(name), synthetic.column(name)).items():
            rows.add("column", name, metric, value)
    rows.add("table", None, "new_row_share", new_row_share(real, synthetic, every() if every else None))
    pairs = scored_pairs(column_pairs(reference.select(compared), synthetic), max_pairs, seed)
    trends = pair_trend_details(reference.select(compared), synthetic.slice(0, PAIR_TREND_ROWS), pairs=pairs)
    for (first, second), trend in trends.items():
        rows.add("pair", f"{first} × {second}", "pair_trend", trend.score)
    if trends:
        rows.add("table", None, "pair_trends", overall_pair_trend(trends))
    _privacy_by_construction(rows, privacy, real_all, holdout, synthetic_all, every() if every else None)
    charts: dict[str, Any] = {
        "real": privacy.shown(reference).select(compared),
        "synthetic": synthetic.select(compared),
    }
    texts = _score_texts(rows, privacy, real_all, holdout, synthetic_all, target, seed)
    if texts:
        charts["texts"] = texts
    if holdout is None:
        log.info("validate.holdout is 0: no privacy or utility metrics against held-out rows")
        return charts
    if not learned:  # keys and personal data only, all made fresh: no row is near a real one
        return charts
    holdout = holdout.select(learned)
    scores = privacy_scores(real, holdout, synthetic, seed=seed)
    rows.add("table", None, "dcr_share", scores.dcr_share)
    rows.add("table", None, "memorised_share", scores.memorised_share)
    rows.add("table", None, "nndr", scores.nndr)
    rows.add("table", None, "holdout_nndr", scores.holdout_nndr)
    fixed = set(conditions) | fixed
    _attacks(rows, real, holdout, synthetic, privacy.sensitive or target, fixed=fixed, seed=seed)
    if target is None or target in conditions or len(learned) < 2:  # no feature to predict it from
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


def _score_texts(
    rows: MetricRows,
    privacy: TablePrivacy,
    real: pa.Table,
    holdout: pa.Table | None,
    synthetic: pa.Table,
    target: str | None,
    seed: int,
) -> dict[str, TextSample]:
    """Each text column's metrics (:mod:`genai_pipeline.quality.text`) as rows, and what the report
    shows of it: synthetic examples with the row's label (or first categorical column), and the
    words at least ``min_rows`` real texts use (real texts themselves only without protection)."""
    names = [
        n
        for n in real.column_names
        if n in privacy.roles and privacy.roles[n].role == "text" and n in synthetic.column_names
    ]
    held = holdout if holdout is not None else real.slice(0, 0)
    categorical = [
        n
        for n in ([target] if target else []) + privacy.learned(real.column_names)
        if n in synthetic.column_names
        and is_categorical(real.schema.field(n).type)
        and 1 < pc.count_distinct(real.column(n)).as_py() <= CONSISTENCY_CATEGORIES
    ]

    def values(table: pa.Table, column: str) -> list[str]:
        return [str(v) for v in table.column(column).to_pylist()]

    columns = {
        other: (values(real, other), values(held, other), values(synthetic, other))
        for other in dict.fromkeys(categorical)
    }
    by = categorical[0] if categorical else None

    def examples(table: pa.Table, name: str) -> list[tuple[str | None, str | None]]:
        shown = table.slice(0, TEXT_EXAMPLES).to_pylist()
        return [(None if by is None else str(row[by]), row[name]) for row in shown]

    samples = {}
    for name in names:
        scores = score_text(
            real.column(name).to_pylist(),
            held.column(name).to_pylist() if name in held.column_names else [],
            synthetic.column(name).to_pylist(),
            columns=columns,
            min_rows=privacy.protection.threshold,
            seed=seed,
        )
        rows.add("text", name, "text_length", scores.length)
        rows.add("text", name, "text_vocabulary", scores.vocabulary)
        for metric, value in scores.distinct.items():
            rows.add("text", name, metric, value)
        if scores.perplexity_ratio is not None:
            rows.add("text", name, "text_perplexity_ratio", scores.perplexity_ratio)
        rows.add("text", name, "text_memorised", scores.memorised_share)
        rows.add("text", name, "text_copied", scores.copied_share)
        for other, value in scores.consistency.items():
            rows.add("text", f"{name} ~ {other}", "text_consistency", value)
        samples[name] = TextSample(
            synthetic=examples(synthetic, name),
            real=[] if privacy.protection.threshold > 1 else examples(real, name),
            common_words=scores.common_words,
            by=by,
        )
    return samples


def _attacks(
    rows: MetricRows,
    real: pa.Table,
    holdout: pa.Table,
    synthetic: pa.Table,
    sensitive: str | None,
    *,
    fixed: set[str],
    seed: int,
) -> None:
    """Privacy measured by attack (:mod:`genai_pipeline.quality.attacks`) on the learned columns:
    membership inference, and attribute inference of the sensitive column unless the run fixed it."""
    try:
        rows.add("table", None, "membership_auc", membership_auc(real, holdout, synthetic, seed=seed).auc)
    except ValueError as exc:
        log.info("no membership-inference attack: %s", exc)
    if sensitive is None or sensitive in fixed or sensitive not in real.column_names:
        return
    try:
        guessed = attribute_inference(real, holdout, synthetic, sensitive, seed=seed)
    except ValueError as exc:
        log.info("no attribute-inference attack on %s: %s", sensitive, exc)
        return
    rows.add("table", sensitive, "attribute_gain", guessed.gain)
    rows.add("table", sensitive, "attribute_holdout_accuracy", guessed.holdout_accuracy)


def _privacy_by_construction(
    rows: MetricRows,
    privacy: TablePrivacy,
    real: pa.Table,
    holdout: pa.Table | None,
    synthetic: pa.Table,
    every: Iterable[pa.Table] | None,
) -> None:
    """How many values protection kept from the model (per column, and in all), how unique the
    columns made fresh came out, and how many synthetic values are real ones fewer than
    ``min_rows`` rows hold (any real one, in a column made fresh): 0 by construction, gated."""
    for name, count in privacy.protected.items():
        rows.add("column", name, "protected_values", count)
    rows.add("table", None, "protected_values", sum(privacy.protected.values()))
    for name, role in privacy.roles.items():
        if role.fresh and name in synthetic.column_names:
            present = synthetic.column(name).drop_null()
            rows.add("column", name, "unique_share", len(present.unique()) / max(len(present), 1))
    found, share = rare_real_values(
        real,
        holdout,
        synthetic.drop_columns([name for name in privacy.computed if name in synthetic.column_names]),
        protection=privacy.protection,
        roles=privacy.roles,
        private=privacy.private,
        every=every,
    )
    for name, count in found.items():
        if count:  # a column's row only where construction failed: the table's share is always there
            rows.add("column", name, "rare_real_values", count)
    rows.add("table", None, "rare_real_value_share", share)


def label_means(
    images: np.ndarray, labels: np.ndarray, min_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean images, labels, counts)``: each label's mean image, for labels with at least
    ``min_rows`` images. What the published report shows of the real images: an aggregate, never
    one of them."""
    names, counts = np.unique(labels, return_counts=True)
    keep = counts >= max(min_rows, 2)
    means = [np.rint(images[labels == name].mean(axis=0)).astype(np.uint8) for name in names[keep]]
    empty = np.zeros((0, *images.shape[1:]), dtype=np.uint8)
    return (np.stack(means) if means else empty), names[keep], counts[keep]


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
    min_rows: int = 1,
) -> dict[str, Any]:
    """Pixel statistics, then what a classifier trained on the real images sees (``classifier``
    gives it, asked only when there are two labels or more): label consistency, Fréchet distance
    and precision/recall/density/coverage in its feature space, CAS on the real holdout;
    memorisation against the training images and repeats within the output. ``conditioned``: the
    run fixed the label, so its label distribution is not compared. Returns the images the report
    shows: synthetic ones, and of the real ones only each label's mean over at least ``min_rows``."""
    rows.add("images", None, "pixel_histogram", pixel_histogram(real.images, synthetic.images))
    if not conditioned:
        rows.add("images", None, "label_distribution", label_distribution(real.labels, synthetic.labels))
    rows.add("images", None, "memorised_share", memorisation_share(synthetic.images, real.images))
    rows.add("images", None, "duplicate_share", duplicate_share(synthetic.images))
    charts = {
        "real_images": label_means(real.images, real.labels, min_rows),
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
