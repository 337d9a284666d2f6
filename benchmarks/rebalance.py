"""Rebalancing (``generate.rebalance``) and fairness (``generate.fairness``) on UCI Adult: what a
classifier trained on each synthetic set learns, and how far the income depends on sex and race.

    python benchmarks/rebalance.py --out /tmp/rebalance-ours.json                 # ~2 min on 2 cores
    .venv-peers/bin/python benchmarks/rebalance.py --system mostly --out /tmp/rebalance-mostly.json
    python benchmarks/rebalance.py --task fairness --out /tmp/fairness-ours.json
    .venv-peers/bin/python benchmarks/rebalance.py --task fairness --system mostly \
        --out /tmp/fairness-mostly.json

**Rebalancing** (``--task rebalance``): a class 1% of the training rows brought to 30% of the
synthetic rows.

UCI Adult (``benchmark_data.load_adult``): the training file with its ``>50K`` rows thinned
(seeded) to 1% of the rows, the model (``--family``, default autoregressive) fitted on that, and
``--rows`` rows sampled twice from it: as the model draws them (the class at ~1%) and rebalanced to
``--share`` (30%) of ``>50K`` (the plan ``generate.rebalance`` makes: that class's rows conditioned
on it, the other class the rest). Histogram gradient boosting (as the pipeline's utility score) is
trained on each, and on the thinned real rows themselves, and tested on Adult's real test file
(its natural 24% ``>50K``): the minority class's recall, precision, F1 and average precision, and
macro F1. Also the share of ``>50K`` each synthetic set holds, and fit and sampling seconds.

**Fairness** (``--task fairness``): the whole training file; the rows sampled as drawn and with the
income drawn independently of sex and race (the plan ``generate.fairness`` makes). Per set: the
parity gap of income over the sex × race groups (``genai_pipeline.quality.tabular.parity_gap``),
column shapes against the real rows, and the classifier's scores as above.

``--system mostly`` runs the peer instead, in its own virtualenv (``.venv-peers``: mostlyai-engine
and the project without its dependencies): MOSTLY AI's TabularARGN, fitted on the same rows, sampled
as drawn and with its own ``rebalancing`` to the same share.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from benchmark_data import load_adult

from genai_pipeline.quality.utility import _Features

TARGET, MINORITY = "income", ">50K"


def thinned(table: pa.Table, share: float, seed: int) -> pa.Table:
    """``table`` with its minority rows drawn (seeded) down to ``share`` of the rows."""
    minority = pc.equal(table.column(TARGET), MINORITY).to_numpy(zero_copy_only=False)
    keep = int(round(share * (~minority).sum() / (1 - share)))
    chosen = np.random.default_rng(seed).choice(np.flatnonzero(minority), keep, replace=False)
    return table.take(pa.array(np.sort(np.concatenate([np.flatnonzero(~minority), chosen]))))


def scores(train: pa.Table, test: pa.Table, seed: int) -> dict[str, float]:
    """The minority class's recall, precision, F1 and average precision, and macro F1, of a
    classifier trained on ``train`` and tested on ``test``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    features = _Features(test, TARGET)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed)
    y_train = np.asarray(train.column(TARGET).to_pylist(), dtype=object)
    y_test = np.asarray(test.column(TARGET).to_pylist(), dtype=object) == MINORITY
    model.fit(features.frame(train), y_train == MINORITY)
    predicted = model.predict(features.frame(test))
    probability = model.predict_proba(features.frame(test))[:, 1]
    return {
        "recall": float(recall_score(y_test, predicted, zero_division=0)),
        "precision": float(precision_score(y_test, predicted, zero_division=0)),
        "f1": float(f1_score(y_test, predicted, zero_division=0)),
        "average_precision": float(average_precision_score(y_test, probability)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro")),
    }


SENSITIVE = ["sex", "race"]
#: a fitted system: draws ``rows`` rows as drawn (None) or reshaped by ``--task``
Sampler = Callable[[int, str | None], pa.Table]


def ours(train: pa.Table, args: argparse.Namespace) -> Sampler:
    """The pipeline's model fitted on ``train``; it samples as the generate stage does."""
    import torch

    from genai_pipeline.config import TrainSpec
    from genai_pipeline.datasets import TabularData
    from genai_pipeline.generation import fair, joint_counts, rebalanced, value_counts
    from genai_pipeline.models import model_class
    from genai_pipeline.privacy.roles import column_roles

    torch.manual_seed(args.seed)
    cls = model_class("tabular", args.family)
    model = cls(cls.Config(), device=torch.device("cpu"))
    data = TabularData(train, TARGET, roles=column_roles(train, {}, TARGET))
    model.fit(data, TrainSpec(epochs=args.epochs, batch_size=500, device="cpu", seed=args.seed), None)
    counts = value_counts(train.column(TARGET), 5)
    groups = [(group, count) for group, count in joint_counts(train, SENSITIVE) if count >= 5]
    plans = {
        None: lambda rows: [({}, rows)],
        "rebalance": lambda rows: rebalanced({}, rows, TARGET, {MINORITY: args.share}, counts),
        "fairness": lambda rows: fair({}, rows, TARGET, SENSITIVE, groups, counts),
    }

    def sample(rows: int, task: str | None) -> pa.Table:
        plan = plans[task](rows)
        return pa.concat_tables(
            batch
            for number, (conditions, count) in enumerate(plan)
            for batch in model.sample(count, conditions=conditions, seed=args.seed + number, batch_size=5000)
        )

    return sample


def mostly(train: pa.Table, args: argparse.Namespace) -> Sampler:
    """MOSTLY AI's TabularARGN fitted on ``train`` (its defaults, ``--epochs`` at most, CPU)."""
    from mostlyai.engine import TabularARGN

    workspace = tempfile.mkdtemp(prefix="rebalance_mostly_")
    model = TabularARGN(max_epochs=args.epochs, device="cpu", workspace_dir=workspace, random_state=args.seed)
    model.fit(train.to_pandas())

    def sample(rows: int, task: str | None) -> pa.Table:
        asked = {
            None: {},
            "rebalance": {"rebalancing": {"column": TARGET, "probabilities": {MINORITY: args.share}}},
            "fairness": {"fairness": {"target_column": TARGET, "sensitive_columns": SENSITIVE}},
        }[task]
        frame = model.sample(n_samples=rows, device="cpu", **asked)
        return pa.Table.from_pandas(frame[train.schema.names], preserve_index=False).cast(
            train.schema, safe=False
        )

    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["rebalance", "fairness"], default="rebalance")
    parser.add_argument("--system", choices=["ours", "mostly"], default="ours")
    parser.add_argument("--family", default="autoregressive", help="ours: the model family")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument(
        "--minority", type=float, default=0.01, help="rebalance: the class's share of the rows"
    )
    parser.add_argument(
        "--share", type=float, default=0.3, help="rebalance: the class's share asked of the output"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from genai_pipeline.quality.tabular import column_shapes, parity_gap

    real = load_adult("train")
    train = thinned(real, args.minority, args.seed) if args.task == "rebalance" else real
    test = load_adult("test")
    print(f"training rows: {train.num_rows}; test rows: {test.num_rows}")
    started = time.monotonic()
    sample = {"ours": ours, "mostly": mostly}[args.system](train, args)
    fit = time.monotonic() - started

    def described(table: pa.Table, **facts: float) -> dict[str, float]:
        minority = pc.sum(pc.equal(table.column(TARGET), MINORITY)).as_py() / table.num_rows
        shapes = float(np.mean(list(column_shapes(real, table).values())))
        gap = parity_gap(table, TARGET, SENSITIVE)
        row = {"rows": table.num_rows, "minority_share": minority, "parity_gap": gap, "column_shapes": shapes}
        return row | facts | scores(table, test, args.seed)

    results = {"real rows" if args.task == "fairness" else "real (thinned) rows": described(train)}
    for name, task in (("synthetic, as drawn", None), (f"synthetic, {args.task}", args.task)):
        started = time.monotonic()
        table = sample(args.rows, task)
        results[name] = described(table, sample_seconds=time.monotonic() - started)
    system = args.family if args.system == "ours" else "MOSTLY AI TabularARGN"
    print(f"{system}: fit {fit:.1f} s ({args.epochs} epochs at most)")
    columns = ("rows", ">50K", "gap", "shapes", "recall", "F1", "AP", "macroF1")
    print(f"{'trained on':30} " + " ".join(f"{name:>7}" for name in columns))
    for name, row in results.items():
        print(
            f"{name:30} {row['rows']:7d} {row['minority_share']:7.1%} {row['parity_gap']:7.3f} "
            f"{row['column_shapes']:7.3f} {row['recall']:7.3f} {row['f1']:7.3f} "
            f"{row['average_precision']:7.3f} {row['macro_f1']:7.3f}"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"settings": vars(args), "fit_seconds": fit, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
