"""Utility of a synthetic table: can a model trained on it predict the real target?

Train-synthetic-test-real (TSTR) fits a standard scikit-learn model on the synthetic rows and scores
it on real holdout rows; train-real-test-real (TRTR) fits the same model on the real training rows.
Their ratio says how much of the real data's predictive signal the synthetic data kept, on a scale
that does not depend on how hard the task is. The model is histogram gradient boosting: it takes
nulls and categories natively, needs no tuning to be reasonable and fits 10k rows in about a second.
Scores follow SDMetrics' ML efficacy: macro F1 for categories, R² (floored at 0) for numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from genai_pipeline.columns import dense, is_numeric, to_float
from genai_pipeline.quality.tabular import top_categories

#: rows a model is fitted on at most: enough for a stable score, cheap on two cores
MAX_ROWS = 10_000
#: categories of a feature kept (HistGradientBoosting's limit is 255 bins with one for missing)
MAX_CATEGORIES = 250


@dataclass(frozen=True)
class UtilityScores:
    """TSTR and TRTR scores of one target column and what they were measured with."""

    target: str
    task: str  # "classification" (macro F1) or "regression" (R², floored at 0)
    tstr: float
    trtr: float

    @property
    def ratio(self) -> float:
        """TSTR / TRTR: 1 when the synthetic data is as useful as the real data."""
        return self.tstr / self.trtr if self.trtr > 0 else 0.0


class _Features:
    """Turns tables into the frames the model reads, with categories fixed by the real data."""

    def __init__(self, real: pa.Table, target: str):
        self.numeric: list[str] = []
        self.categories: dict[str, list[str]] = {}
        for name in real.column_names:
            if name == target:
                continue
            column = dense(real.column(name))
            if is_numeric(column.type):
                self.numeric.append(name)
            else:
                self.categories[name] = top_categories(column, MAX_CATEGORIES)

    def frame(self, table: pa.Table) -> pd.DataFrame:
        columns: dict[str, pd.Series] = {
            name: pd.Series(to_float(dense(table.column(name)))) for name in self.numeric
        }
        for name, categories in self.categories.items():
            values = pc.cast(dense(table.column(name)), pa.string())
            known = pc.if_else(pc.is_in(values, pa.array(categories, pa.string())), values, None)
            columns[name] = pd.Series(
                pd.Categorical(known.to_pylist(), categories=categories)
            )  # unknown: NaN
        return pd.DataFrame(columns)


def _sample(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    if table.num_rows <= MAX_ROWS:
        return table
    return table.take(np.sort(rng.choice(table.num_rows, MAX_ROWS, replace=False)))


def utility_scores(
    train: pa.Table, holdout: pa.Table, synthetic: pa.Table, target: str, *, seed: int = 0
) -> UtilityScores | None:
    """TSTR and TRTR for ``target``; None when the holdout or a training side cannot be scored
    (no labelled rows, or a single class)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import f1_score, r2_score
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    column = dense(train.column(target))
    regression = is_numeric(column.type) and len(pc.unique(column.drop_null())) > 20
    features = _Features(train, target)

    def labelled(table: pa.Table) -> tuple[pd.DataFrame, np.ndarray]:
        table = _sample(table.filter(pc.is_valid(table.column(target))), rng)
        values = dense(table.column(target))
        y = to_float(values) if regression else np.asarray(pc.cast(values, pa.string()).to_pylist(), object)
        return features.frame(table), y

    test_x, test_y = labelled(holdout)
    sides = {"trtr": labelled(train), "tstr": labelled(synthetic)}
    if len(test_y) == 0 or any(len(np.unique(y)) < 2 for _, y in sides.values()):
        return None
    scores = {}
    for side, (x, y) in sides.items():
        model = (
            HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=seed)
            if regression
            else HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed)
        )
        usable = [name for name in x.columns if x[name].notna().any()]  # an all-null column breaks HGB
        with threadpool_limits(1):  # OpenMP threads beside torch's spin for minutes on a busy machine
            predicted = model.fit(x[usable], y).predict(test_x[usable])
        scores[side] = (
            max(float(r2_score(test_y, predicted)), 0.0)
            if regression
            else float(f1_score(test_y, predicted, average="macro"))
        )
    return UtilityScores(
        target=target,
        task="regression" if regression else "classification",
        tstr=scores["tstr"],
        trtr=scores["trtr"],
    )
