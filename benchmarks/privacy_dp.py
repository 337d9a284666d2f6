"""Privacy by construction and by budget on Adult: ours with and without DP, the DP peer, scored alike.

    python benchmarks/privacy_dp.py train --epsilon none --out /tmp/ours-nodp      # protection on
    python benchmarks/privacy_dp.py train --epsilon none --no-protection --out /tmp/ours-raw
    python benchmarks/privacy_dp.py train --epsilon 3 --epochs 20 --out /tmp/ours-eps3
    python benchmarks/privacy_dp.py score /tmp/ours-eps3 /tmp/mostly-eps3 ...       # one table
    python benchmarks/privacy_dp.py pii --out /tmp/pii                               # fresh columns

``train`` fits our autoregressive family on Adult's training rows (``adult.data``; the family, its
DP budget and epochs are options) and writes ``synthetic.parquet`` and ``run.json`` (fit seconds,
the ε spent), the layout ``peer_mostly.py`` writes for MOSTLY AI's engine, so ``score`` rates
every folder with the same functions: SDMetrics-style column shapes and pair trends (the validate
stage's, on up to 20,000 rows), TSTR macro-F1 and AUC on ``income`` (HistGradientBoosting trained
on the synthetic rows, tested on ``adult.test``) against TRTR, the validate stage's DOMIAS-style
membership-inference AUC and attribute-inference gain (members: training rows; non-members and
the attacker's reference: halves of ``adult.test``), and the share of rows holding a value fewer
than 5 training rows hold (or beyond the protected tails). ``pii`` makes a table with an e-mail, a
name, an identifier and a free-text column, runs it through the whole pipeline (stages) and counts
the real values in the published output.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_data import load_adult  # noqa: E402

from genai_pipeline.quality.attacks import attribute_inference, membership_auc  # noqa: E402
from genai_pipeline.quality.privacy import rare_real_values  # noqa: E402
from genai_pipeline.quality.tabular import column_shapes, pair_trends_score  # noqa: E402

SCORE_ROWS = 20_000


def train(args: argparse.Namespace) -> None:
    from genai_pipeline.config import TrainSpec
    from genai_pipeline.datasets import TabularData
    from genai_pipeline.models import model_class
    from genai_pipeline.privacy.protection import Protection

    torch.set_num_threads(2)
    real = load_adult("train")
    cls = model_class("tabular", args.family)
    model = cls(cls.Config.model_validate(json.loads(args.params)), device=torch.device("cpu"))
    privacy = None if args.epsilon == "none" else {"epsilon": float(args.epsilon)}
    if privacy is not None and args.statistics_share is not None:
        privacy["statistics_share"] = args.statistics_share
    spec = TrainSpec(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device="cpu",
        seed=args.seed,
        max_minutes=args.max_minutes,
        privacy=privacy,
    )
    protection = Protection(enabled=not args.no_protection)
    started = time.perf_counter()
    report = model.fit(TabularData(real, "income", protection=protection), spec, None)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    synthetic = pa.concat_tables(model.sample(args.rows, conditions=None, seed=args.seed, batch_size=50_000))
    sample_seconds = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(synthetic, out / "synthetic.parquet")
    run = {
        "synthesizer": f"genai_pipeline {args.family}",
        "epsilon_target": args.epsilon,
        "epsilon_spent": (report.privacy or {}).get("epsilon"),
        "privacy": report.privacy,
        "protection": not args.no_protection,
        "fit_seconds": fit_seconds,
        "sample_seconds": sample_seconds,
        "steps": report.steps,
        "epochs": report.epochs,
        "stopped": report.stopped,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "args": vars(args),
    }
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str))
    print(json.dumps({key: run[key] for key in ("synthesizer", "epsilon_spent", "fit_seconds", "stopped")}))


def _auc(train: pa.Table, test: pa.Table) -> tuple[float, float] | None:
    """TSTR macro-F1 and AUC on income."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score, roc_auc_score

    from genai_pipeline.quality.utility import _Features

    train = train.filter(pc.is_valid(train.column("income")))  # a DP model may leave a label null
    features = _Features(train, "income")
    labels = np.asarray(train.column("income").to_pylist(), dtype=object)
    if len(set(labels.tolist())) < 2:
        return None
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    frame = features.frame(train)
    usable = [name for name in frame.columns if frame[name].notna().any()]
    model.fit(frame[usable], labels)
    test_frame = features.frame(test)[usable]
    truth = np.asarray(test.column("income").to_pylist(), dtype=object)
    positive = list(model.classes_).index(">50K") if ">50K" in model.classes_ else None
    auc = (
        float(roc_auc_score(truth == ">50K", model.predict_proba(test_frame)[:, positive]))
        if positive is not None
        else 0.5
    )
    return float(f1_score(truth, model.predict(test_frame), average="macro")), auc


def score(args: argparse.Namespace) -> None:
    from genai_pipeline.privacy.protection import Protection

    real, test = load_adult("train"), load_adult("test")
    rows = []
    trtr = _auc(real, test)
    for folder in map(Path, args.folders):
        run = json.loads((folder / "run.json").read_text())
        synthetic = pq.read_table(folder / "synthetic.parquet").cast(real.schema)
        sample = synthetic.slice(0, SCORE_ROWS)
        shapes = float(np.mean(list(column_shapes(real, sample).values())))
        pairs = pair_trends_score(real, sample)
        tstr = _auc(synthetic, test)
        attack = membership_auc(real, test, synthetic, seed=0).auc
        gain = attribute_inference(real, test, synthetic, "income", seed=0).gain
        _, rare = rare_real_values(real, None, sample, protection=Protection(), roles={})
        rows.append(
            {
                "folder": str(folder),
                "synthesizer": run.get("synthesizer", folder.name),
                "epsilon_target": run.get("epsilon_target", run.get("arguments", {}).get("epsilon")),
                "epsilon_spent": run.get("epsilon_spent", run.get("epsilon_spent_kept_model")),
                "fit_seconds": run.get("fit_seconds"),
                "shapes": shapes,
                "pairs": pairs,
                "quality": (shapes + pairs) / 2,
                "tstr_f1": tstr[0] if tstr else None,
                "tstr_auc": tstr[1] if tstr else None,
                "trtr_f1": trtr[0] if trtr else None,
                "trtr_auc": trtr[1] if trtr else None,
                "membership_auc": attack,
                "attribute_gain": gain,
                "rare_real_value_share": rare,
            }
        )
        print(json.dumps(rows[-1]), flush=True)


def pii(args: argparse.Namespace) -> None:
    """A table with an e-mail, a name, an identifier and free text, through the whole pipeline."""
    from genai_pipeline import stages
    from genai_pipeline.jobs import build_job
    from genai_pipeline.runs import Run

    rng = np.random.default_rng(0)
    n = 5000
    first = rng.choice(["Anna", "Ben", "Chloe", "David", "Emma", "Finn", "Greta", "Hugo"], n)
    last = rng.choice(["Smith", "Meyer", "Garcia", "Rossi", "Dubois", "Novak", "Kowalski", "Berg"], n)
    table = pa.table(
        {
            "customer_id": [f"C{i:07d}" for i in rng.permutation(9_000_000)[:n]],
            "full_name": [f"{a} {b}" for a, b in zip(first, last)],
            "email": [
                f"{a.lower()}.{b.lower()}{i}@corp.example" for i, (a, b) in enumerate(zip(first, last))
            ],
            "complaint": [
                f"order {i} arrived {rng.integers(2, 30)} days late and the box was damaged" for i in range(n)
            ],
            "amount": np.round(rng.lognormal(4, 1, n), 2),
            "tier": rng.choice(["gold", "silver", "bronze"], n),
        }
    )
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, work / "customers.parquet")
    job = build_job(
        {
            "name": "pii",
            "dataset": {"uri": str(work / "customers.parquet")},
            "model": {"family": "autoregressive"},
            "train": {"epochs": 20, "device": "cpu"},
            "generate": {"num_samples": 20_000},
            "validate": {"min_column_shapes": 0.0},
            "export": {"output": str(work / "out"), "workspace": str(work / "workspace")},
        }
    )
    run = Run(job=job, run_date="2026-12-05")
    started = time.perf_counter()
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    verdict = stages.validate(run, dataset=dataset, generated=generated, model=model)
    stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    seconds = time.perf_counter() - started
    published = work / "out" / "pii"
    text = "\n".join(
        json.dumps(pq.read_table(path).to_pylist(), default=str)
        if path.suffix == ".parquet"
        else path.read_bytes().decode("latin-1")
        for path in published.rglob("*")
        if path.is_file()
    )
    found = {}
    for column in ("customer_id", "full_name", "email", "complaint"):
        values = set(table.column(column).to_pylist())
        unique = (
            {value for value in values if pc.sum(pc.equal(table.column(column), value)).as_py() < 5}
            if column == "full_name"
            else values
        )
        found[column] = sum(value in text for value in unique)
    data = pq.read_table(published / run.data_file)
    print(
        json.dumps(
            {
                "roles": dataset.roles,
                "seconds": seconds,
                "real_values_in_output": found,
                "rows": data.num_rows,
                "fresh_examples": data.slice(0, 3)
                .select(["customer_id", "full_name", "email", "complaint"])
                .to_pylist(),
                "unique_ids": len(set(data.column("customer_id").to_pylist())) == data.num_rows,
                "passed": verdict.passed,
            },
            indent=1,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train")
    trainer.add_argument("--family", default="autoregressive")
    trainer.add_argument("--params", default="{}", help="the family's hyper-parameters as JSON")
    trainer.add_argument("--epsilon", default="none")
    trainer.add_argument("--statistics-share", type=float, default=None)
    trainer.add_argument("--epochs", type=int, default=20)
    trainer.add_argument("--batch-size", type=int, default=1024)
    trainer.add_argument("--max-minutes", type=float, default=None)
    trainer.add_argument("--rows", type=int, default=100_000)
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--no-protection", action="store_true")
    trainer.add_argument("--out", required=True)
    scorer = commands.add_parser("score")
    scorer.add_argument("folders", nargs="+")
    maker = commands.add_parser("pii")
    maker.add_argument("--out", default=tempfile.mkdtemp(prefix="pii-"))
    args = parser.parse_args()
    {"train": train, "score": score, "pii": pii}[args.command](args)


if __name__ == "__main__":
    main()
