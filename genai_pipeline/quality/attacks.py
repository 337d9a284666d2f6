"""Privacy of a synthetic table measured by attack: what an attacker holding it learns about real rows.

Distances (:mod:`genai_pipeline.quality.privacy`) say how close synthetic rows sit to training rows;
an attack says what that closeness gives away. Both attacks score training rows against holdout rows
the model never saw, so what the synthetic data teaches about the whole population (which a model
that generalises should teach) cancels, and only what it learned from the rows themselves remains.

Membership inference follows DOMIAS (van Breugel et al., 2023, "Membership Inference Attacks against
Synthetic Data through Overfitting Detection"): a row the generator overfitted sits where the
synthetic data is denser than the population, so the attacker scores a candidate by the density
ratio p_synthetic(x) / p_reference(x), the reference being real rows from the same population (one
half of the holdout, never scored). Densities are k-nearest-neighbour estimates in
:class:`~genai_pipeline.quality.privacy.RowSpace`: log p(x) ≈ ψ(j) − log N − log V_d − d·log r_j(x)
for the distance r_j to the j-th nearest of N points, averaged over j = 1…k. The constants are the
same for every candidate and the effective dimension d scales every score alike, so neither moves the
AUC and neither is estimated; the score is ``mean_j log r_j(x, reference) − mean_j log r_j(x,
synthetic)``. Averaging from j = 1 is what lets the attack see copies: r_5 alone barely moves when
the row itself is one of its five nearest synthetic rows, while log(r_1 + ε) falls to log ε ≈ −14
for an exact copy (ε = 1e-6 of a column's range; −2 to −9 for other rows), high but finite. The
synthetic side is the whole published sample (up to :data:`MAX_DENSITY_ROWS`), not one the
reference's size: members and non-members are scored by the same function, so a different ``log N``
on the two sides shifts every score alike, while a reference-sized sample drops most copied rows.
Calibration (tests/test_attacks.py; 3,000 training rows, 1,500 members and non-members scored
against 1,500 reference rows, 33 seeds): copying the training set scores AUC 1.00, fresh rows from
the population 0.48-0.52, 30% copies 0.63-0.68; a reference-sized synthetic sample scores the copies
only 0.74-0.76, and 0.55 with 27k training rows and 5k held out.

Attribute inference: the attacker knows every column of a real row but ``target`` and guesses it
from the k nearest synthetic rows on the known columns, weighted by 1/(distance + ε): a weighted
majority for categories, a weighted mean for numbers (right within 5% of the real range). Unweighted,
four neighbours outvote the row's own copy: a verbatim copy of the training set then gains 0.07
instead of 0.28 on the tests' label (0.11 instead of 0.57 on their income).
The guesses are scored on training and holdout rows: ``gain`` = training − holdout accuracy is what
the synthetic data reveals because it saw the row.

Cost: all-pairs distances between at most 2 × ``max_rows`` query rows and :data:`MAX_DENSITY_ROWS`
synthetic (and reference) rows, in float32 blocks of one reused buffer by
:func:`~genai_pipeline.quality.neighbours.nearest`, which computes the neighbours' distances again
exactly, so that an exact copy sits at distance 0 (the matrix product's rounding leaves ~1e-3).
On a 32k-row table (eight mixed columns, 27k training and 5k holdout rows, a 32k-row synthetic
sample) on 2 CPU cores, membership inference takes 1.1-2.0 s and attribute inference 0.8-1.8 s
(the range is other work on the machine), nearly all of it in the distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genai_pipeline.columns import dense, is_numeric, to_float
from genai_pipeline.quality.neighbours import nearest
from genai_pipeline.quality.privacy import RowSpace, nearest_distances

#: fewer holdout rows than this cannot be split into scored and reference rows worth an AUC
MIN_HOLDOUT_ROWS = 20
#: neighbours per density estimate
NEIGHBOURS = 5
#: synthetic and reference rows a density is estimated from at most (each side)
MAX_DENSITY_ROWS = 50_000
#: distance (in RowSpace units, where a column's range is 1) below which two rows are one point
EPSILON = 1e-6
#: a numeric guess is right when within this share of the target's real range
NUMERIC_TOLERANCE = 0.05
#: numeric targets with at most this many distinct values are guessed as categories (as utility.py)
MAX_CLASS_VALUES = 20


@dataclass(frozen=True)
class MembershipResult:
    """How well a DOMIAS attacker tells training rows from unseen ones: 0.5 no signal, 1 perfectly."""

    auc: float
    rows: int  # members scored (= non-members scored)


@dataclass(frozen=True)
class AttributeResult:
    """How often an attacker guesses a hidden column from the synthetic data, on seen and unseen rows."""

    train_accuracy: float
    holdout_accuracy: float
    gain: float  # train − holdout accuracy: what the synthetic data gives away because it saw the row
    rows: int  # rows scored on each side


def _check(holdout: pa.Table, columns: Sequence[str]) -> None:
    if holdout.num_rows < MIN_HOLDOUT_ROWS:
        raise ValueError(f"{holdout.num_rows} holdout rows: privacy attacks need at least {MIN_HOLDOUT_ROWS}")
    if not columns:
        raise ValueError("privacy attacks need at least one column to compare rows on")


def _sample(table: pa.Table, count: int, rng: np.random.Generator) -> pa.Table:
    if table.num_rows <= count:
        return table
    return table.take(np.sort(rng.choice(table.num_rows, count, replace=False)))


def _mean_log_distance(queries: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mean log distance to the :data:`NEIGHBOURS` nearest points: −log density / d, up to constants."""
    return np.log(nearest_distances(queries, points, NEIGHBOURS) + EPSILON).mean(axis=1)


def membership_auc(
    train: pa.Table,
    holdout: pa.Table,
    synthetic: pa.Table,
    *,
    seed: int,
    columns: Sequence[str] | None = None,
    max_rows: int = 2_000,
) -> MembershipResult:
    """AUC of the DOMIAS density-ratio score separating training rows from unseen holdout rows.

    The holdout is split in two: one half gives the non-members scored, the other the reference
    density; as many training rows are scored as non-members (at most ``max_rows``). ``columns``
    limits the comparison (leave out identifiers and personal data, which are generated fresh).
    Raises ValueError with fewer than :data:`MIN_HOLDOUT_ROWS` holdout rows.
    """
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    names = list(train.column_names if columns is None else columns)
    _check(holdout, names)
    rng = np.random.default_rng(seed)
    order = rng.permutation(holdout.num_rows)
    half = holdout.num_rows // 2
    rows = min(half, max_rows, train.num_rows)
    space = RowSpace.fit(train.select(names))
    queries = np.concatenate(
        [space.transform(_sample(train, rows, rng)), space.transform(holdout.take(np.sort(order[:rows])))]
    )
    reference = space.transform(_sample(holdout.take(np.sort(order[half:])), MAX_DENSITY_ROWS, rng))
    published = space.transform(_sample(synthetic, MAX_DENSITY_ROWS, rng))
    score = _mean_log_distance(queries, reference) - _mean_log_distance(queries, published)
    members = np.concatenate([np.ones(rows), np.zeros(rows)])
    with threadpool_limits(1):  # as utility.py: no BLAS/OpenMP pools spinning beside torch's threads
        auc = float(roc_auc_score(members, score))
    return MembershipResult(auc=auc, rows=rows)


def attribute_inference(
    train: pa.Table,
    holdout: pa.Table,
    synthetic: pa.Table,
    target: str,
    *,
    seed: int,
    columns: Sequence[str] | None = None,
    max_rows: int = 2_000,
    k: int = 5,
) -> AttributeResult:
    """Accuracy of guessing ``target`` from the ``k`` nearest synthetic rows on the other columns
    (``columns`` when given, less ``target``), on equal samples of training and holdout rows.

    Rows whose ``target`` is null are neither guessed nor used to guess: a null reveals nothing.
    A numeric target with more than :data:`MAX_CLASS_VALUES` distinct values is guessed as a number,
    right within :data:`NUMERIC_TOLERANCE` of its training range; any other target as a category,
    right when equal. Raises ValueError with fewer than :data:`MIN_HOLDOUT_ROWS` holdout rows holding
    a ``target`` value, no training or synthetic row holding one, or no column besides ``target``.
    """
    known = [name for name in (train.column_names if columns is None else columns) if name != target]
    train, holdout, synthetic = (
        table.filter(pc.is_valid(table.column(target))) for table in (train, holdout, synthetic)
    )
    _check(holdout, known)
    if min(train.num_rows, synthetic.num_rows) == 0:
        raise ValueError(f"no training or no synthetic row holds a value of {target!r}")
    rng = np.random.default_rng(seed)
    rows = min(train.num_rows, holdout.num_rows, max_rows)
    space = RowSpace.fit(train.select(known))
    published = _sample(synthetic, MAX_DENSITY_ROWS, rng)
    points = torch.from_numpy(space.transform(published))
    real = dense(train.column(target))
    numeric = is_numeric(real.type) and len(pc.unique(real)) > MAX_CLASS_VALUES

    def values(table: pa.Table) -> np.ndarray:
        column = dense(table.column(target))
        return to_float(column) if numeric else np.asarray(pc.cast(column, pa.string()).to_pylist(), object)

    answers = values(published)
    if numeric:
        tolerance = NUMERIC_TOLERANCE * float(np.ptp(to_float(real)))

        def right(weights: np.ndarray, indices: np.ndarray, truth: np.ndarray) -> np.ndarray:
            guesses = (weights * answers[indices]).sum(axis=1) / weights.sum(axis=1)
            return np.abs(guesses - truth) <= tolerance

    else:
        classes, codes = np.unique(answers, return_inverse=True)

        def right(weights: np.ndarray, indices: np.ndarray, truth: np.ndarray) -> np.ndarray:
            votes = np.zeros((len(truth), len(classes)))
            np.add.at(votes, (np.arange(len(truth))[:, None], codes[indices]), weights)
            return classes[votes.argmax(axis=1)] == truth

    def accuracy(table: pa.Table) -> float:
        sample = _sample(table, rows, rng)
        distances, indices = nearest(torch.from_numpy(space.transform(sample)), points, min(k, len(points)))
        return float(np.mean(right(1.0 / (distances.numpy() + EPSILON), indices.numpy(), values(sample))))

    train_accuracy, holdout_accuracy = accuracy(train), accuracy(holdout)
    return AttributeResult(
        train_accuracy=train_accuracy,
        holdout_accuracy=holdout_accuracy,
        gain=train_accuracy - holdout_accuracy,
        rows=rows,
    )
