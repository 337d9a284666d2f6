"""Rebalancing (``generate.rebalance``): a class 1% of the training rows brought to 30% of the
synthetic rows, and what a classifier trained on each learns about it.

    python benchmarks/rebalance.py --out /tmp/rebalance-ours.json                 # ~2 min on 2 cores
    .venv-peers/bin/python benchmarks/rebalance.py --system mostly --out /tmp/rebalance-mostly.json

UCI Adult (``benchmark_data.load_adult``): the training file with its ``>50K`` rows thinned
(seeded) to 1% of the rows, the model (``--family``, default autoregressive) fitted on that, and
``--rows`` rows sampled twice from it: as the model draws them (the class at ~1%) and rebalanced to
``--share`` (30%) of ``>50K`` (the plan ``generate.rebalance`` makes: that class's rows conditioned
on it, the other class the rest). Histogram gradient boosting (as the pipeline's utility score) is
trained on each, and on the thinned real rows themselves, and tested on Adult's real test file
(its natural 24% ``>50K``): the minority class's recall, precision, F1 and average precision, and
macro F1. Also the share of ``>50K`` each synthetic set holds, and fit and sampling seconds.

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


#: a fitted system: draws ``rows`` rows, rebalanced to ``share`` of the minority or (None) as drawn
Sampler = Callable[[int, float | None], pa.Table]


def ours(train: pa.Table, args: argparse.Namespace) -> Sampler:
    """The pipeline's model fitted on ``train``; it samples as the generate stage does."""
    import torch

    from genai_pipeline.config import TrainSpec
    from genai_pipeline.datasets import TabularData
    from genai_pipeline.generation import rebalanced, value_counts
    from genai_pipeline.models import model_class
    from genai_pipeline.privacy.roles import column_roles

    torch.manual_seed(args.seed)
    cls = model_class("tabular", args.family)
    model = cls(cls.Config(), device=torch.device("cpu"))
    data = TabularData(train, TARGET, roles=column_roles(train, {}, TARGET))
    model.fit(data, TrainSpec(epochs=args.epochs, batch_size=500, device="cpu", seed=args.seed), None)
    counts = value_counts(train.column(TARGET), 5)

    def sample(rows: int, share: float | None) -> pa.Table:
        plan = [({}, rows)] if share is None else rebalanced({}, rows, TARGET, {MINORITY: share}, counts)
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

    def sample(rows: int, share: float | None) -> pa.Table:
        asked = None if share is None else {"column": TARGET, "probabilities": {MINORITY: share}}
        frame = model.sample(n_samples=rows, rebalancing=asked, device="cpu")
        return pa.Table.from_pandas(frame[train.schema.names], preserve_index=False).cast(
            train.schema, safe=False
        )

    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["ours", "mostly"], default="ours")
    parser.add_argument("--family", default="autoregressive", help="ours: the model family")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--minority", type=float, default=0.01, help="the class's share of the training rows")
    parser.add_argument("--share", type=float, default=0.3, help="the class's share asked of the output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    train = thinned(load_adult("train"), args.minority, args.seed)
    test = load_adult("test")
    print(f"training rows: {train.num_rows} ({args.minority:.0%} {MINORITY}); test rows: {test.num_rows}")
    started = time.monotonic()
    sample = {"ours": ours, "mostly": mostly}[args.system](train, args)
    fit = time.monotonic() - started
    minority = pc.sum(pc.equal(train.column(TARGET), MINORITY)).as_py()
    results = {"real (thinned) rows": {"rows": train.num_rows, "minority_share": minority / train.num_rows}}
    results["real (thinned) rows"] |= scores(train, test, args.seed)
    for name, share in (
        ("synthetic, as drawn", None),
        (f"synthetic, rebalanced to {args.share:.0%}", args.share),
    ):
        started = time.monotonic()
        table = sample(args.rows, share)
        seconds = time.monotonic() - started
        drawn = pc.sum(pc.equal(table.column(TARGET), MINORITY)).as_py() / table.num_rows
        results[name] = {"rows": table.num_rows, "sample_seconds": seconds, "minority_share": drawn}
        results[name] |= scores(table, test, args.seed)
    system = args.family if args.system == "ours" else "MOSTLY AI TabularARGN"
    print(f"{system}: fit {fit:.1f} s ({args.epochs} epochs at most)")
    columns = ("rows", ">50K", "recall", "prec.", "F1", "AP", "macroF1")
    print(f"{'trained on':34} " + " ".join(f"{name:>7}" for name in columns))
    for name, row in results.items():
        print(
            f"{name:34} {row['rows']:7d} {row['minority_share']:7.1%} {row['recall']:7.3f} "
            f"{row['precision']:7.3f} {row['f1']:7.3f} {row['average_precision']:7.3f} {row['macro_f1']:7.3f}"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"settings": vars(args), "fit_seconds": fit, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
