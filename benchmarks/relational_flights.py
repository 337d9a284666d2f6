"""Whole databases on real data: NYC flights, planes → their flights ordered by time; ours against
SDV's HMASynthesizer and PARSynthesizer and MOSTLY AI's engine with a context foreign key.

    python benchmarks/relational_flights.py ours --out /tmp/rel/ours
    .venv-sdv/bin/python benchmarks/relational_flights.py sdv-hma --out /tmp/rel/hma
    .venv-sdv/bin/python benchmarks/relational_flights.py sdv-par --out /tmp/rel/par
    .venv-peers/bin/python benchmarks/relational_flights.py mostly --out /tmp/rel/mostly
    python benchmarks/relational_flights.py score /tmp/rel/*
    python benchmarks/relational_flights.py stream --epochs 10 --scale 100     # memory, streaming

The data (``benchmark_data.load_flights``): 1,000 planes drawn among those that flew in January 2013,
and their 8,608 flights of that month (1 to 66 per plane, 6 the median). Every runner writes
``planes.parquet``, ``flights.parquet`` (the real tables' schemas) and ``run.json`` (fit and sampling
seconds, peak RSS); ``score`` rates each folder alike: referential integrity, cardinality shape,
the parent–child pair trends through the join, the sequence metrics (in-order share, gaps, lag-1
autocorrelation of the delays within a plane) and each table's column shapes and pair trends
(the key columns left out), with ``genai_pipeline.quality``'s functions. The peers run in their own
virtualenvs and import nothing of the pipeline but this file's loader.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_data import PLANE_COLUMNS, load_flights  # noqa: E402

PLANE_CONTEXT = [column for column in PLANE_COLUMNS if column != "tailnum"]


def _finish(out: Path, tables: dict[str, pa.Table], real: dict[str, pa.Table], **facts: object) -> None:
    """Write the tables in the real schemas and the run's facts."""
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        pq.write_table(
            table.select(real[name].column_names).cast(real[name].schema, safe=False), out / f"{name}.parquet"
        )
    facts["rows"] = {name: table.num_rows for name, table in tables.items()}
    facts["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (out / "run.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts))


def _schema():  # noqa: ANN202 (the pipeline's types: imported only where the pipeline is installed)
    from genai_pipeline.relational import Relations, TableSpec

    return Relations.of(
        {
            "planes": TableSpec(uri="planes", primary_key="tailnum"),
            "flights": TableSpec.model_validate(
                {
                    "uri": "flights",
                    "foreign_keys": [{"column": "tailnum", "references": "planes"}],
                    "order_by": "time_hour",
                }
            ),
        }
    )


def _fit_ours(args: argparse.Namespace):  # noqa: ANN202 (the pipeline's types: imported here only)
    """``(real tables, our fitted RelationalModel, fit seconds)`` for ``ours`` and ``stream``."""
    import torch

    from genai_pipeline.config import TrainSpec
    from genai_pipeline.models.relational import RelationalModel
    from genai_pipeline.privacy.protection import Protection
    from genai_pipeline.relational import check_keys

    torch.set_num_threads(2)
    real = load_flights(args.planes)
    relations = _schema()
    checked, _ = check_keys(real, relations)
    started = time.perf_counter()
    model = RelationalModel.fit(
        checked,
        relations,
        family=args.family,
        params=json.loads(args.params),
        train=TrainSpec(epochs=args.epochs, batch_size=args.batch_size, device="cpu", seed=args.seed),
        protection=Protection(enabled=args.protection),
    )
    return real, model, time.perf_counter() - started


def ours(args: argparse.Namespace) -> None:
    real, model, fit = _fit_ours(args)
    started = time.perf_counter()
    synthetic = model.sample(seed=args.seed + 1)
    sample = time.perf_counter() - started
    name = f"genai_pipeline {args.family}" + ("" if args.protection else " (no value protection)")
    _finish(args.out, synthetic, real, synthesizer=name, fit_seconds=round(fit, 2),
            sample_seconds=round(sample, 2), params=args.params, epochs=args.epochs)  # fmt: skip


def stream(args: argparse.Namespace) -> None:
    """Memory while streaming ``--scale`` times the planes and their flights (batches counted and
    dropped, as a writer would): the peak RSS before and after, rows made, rows/s."""
    real, model, _ = _fit_ours(args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = dict.fromkeys(real, 0)
    started = time.perf_counter()
    for name, batch in model.stream(seed=args.seed + 1, scale=args.scale, batch_size=args.stream_batch):
        rows[name] += batch.num_rows
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"scale": args.scale, "rows": rows, "seconds": round(seconds, 1),
                      "rows_per_second": round(sum(rows.values()) / seconds),
                      "peak_rss_mb_before": round(before), "peak_rss_mb_after": round(after)}))  # fmt: skip


def _sdv_metadata(real: dict[str, pa.Table]):  # noqa: ANN202
    from sdv.metadata import Metadata

    frames = {name: table.to_pandas() for name, table in real.items()}
    metadata = Metadata.detect_from_dataframes(data=frames)
    metadata.update_column(table_name="planes", column_name="tailnum", sdtype="id")
    metadata.update_column(table_name="flights", column_name="tailnum", sdtype="id")
    metadata.set_primary_key(table_name="planes", column_name="tailnum")
    for relationship in list(metadata.relationships):
        metadata.remove_relationship(relationship["parent_table_name"], relationship["child_table_name"])
    metadata.add_relationship("planes", "flights", "tailnum", "tailnum")
    return metadata, frames


def sdv_hma(args: argparse.Namespace) -> None:
    from sdv.multi_table import HMASynthesizer

    real = load_flights(args.planes)
    metadata, frames = _sdv_metadata(real)
    synthesizer = HMASynthesizer(metadata)
    started = time.perf_counter()
    synthesizer.fit(frames)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    sampled = synthesizer.sample_scale(scale=1.0)  # SDV 2.0's name
    sample = time.perf_counter() - started
    tables = {name: pa.Table.from_pandas(frame, preserve_index=False) for name, frame in sampled.items()}
    _finish(args.out, tables, real, synthesizer="SDV HMASynthesizer", fit_seconds=round(fit, 2),
            sample_seconds=round(sample, 2))  # fmt: skip


def sdv_par(args: argparse.Namespace) -> None:
    """PAR learns one table: the flights with their plane's columns as context, then split back."""
    from sdv.metadata import Metadata
    from sdv.sequential import PARSynthesizer

    real = load_flights(args.planes)
    planes, flights = real["planes"].to_pandas(), real["flights"].to_pandas()
    joined = flights.merge(planes, on="tailnum")
    metadata = Metadata.detect_from_dataframes(data={"flights": joined}, infer_keys=None)
    metadata.update_column(column_name="tailnum", sdtype="id")
    metadata.set_sequence_key("tailnum")
    metadata.set_sequence_index("time_hour")
    synthesizer = PARSynthesizer(metadata, context_columns=PLANE_CONTEXT, epochs=args.epochs)
    started = time.perf_counter()
    synthesizer.fit({"flights": joined})  # SDV 2.0 takes a table name to frame mapping
    fit = time.perf_counter() - started
    started = time.perf_counter()
    sampled = synthesizer.sample_sequences(num_sequences=len(planes))  # SDV 2.0's name
    if isinstance(sampled, dict):  # SDV 2.0 answers with a table name to frame mapping
        (sampled,) = sampled.values()
    sample = time.perf_counter() - started
    tables = {
        "planes": pa.Table.from_pandas(
            sampled[real["planes"].column_names].drop_duplicates("tailnum"), preserve_index=False
        ),
        "flights": pa.Table.from_pandas(sampled[real["flights"].column_names], preserve_index=False),
    }
    _finish(args.out, tables, real, synthesizer="SDV PARSynthesizer", fit_seconds=round(fit, 2),
            sample_seconds=round(sample, 2), epochs=args.epochs)  # fmt: skip


def mostly(args: argparse.Namespace) -> None:
    """The engine's two-table set-up: a flat model of the planes, then the flights as sequences
    with the plane as context, sampled for the synthetic planes."""
    import torch
    from mostlyai.engine import TabularARGN

    torch.set_num_threads(2)
    real = load_flights(args.planes)
    planes, flights = real["planes"].to_pandas(), real["flights"].to_pandas()
    budget = {"max_training_time": args.max_minutes, "device": "cpu", "random_state": args.seed,
              "value_protection": args.protection}  # fmt: skip
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        started = time.perf_counter()
        plane_model = TabularARGN(tgt_primary_key="tailnum", workspace_dir=one, **budget).fit(planes)
        flight_model = TabularARGN(
            tgt_context_key="tailnum", ctx_data=planes, ctx_primary_key="tailnum", workspace_dir=two, **budget
        ).fit(flights)
        fit = time.perf_counter() - started
        started = time.perf_counter()
        synthetic_planes = plane_model.sample(n_samples=len(planes))
        synthetic_flights = flight_model.sample(ctx_data=synthetic_planes)
        sample = time.perf_counter() - started
    tables = {
        "planes": pa.Table.from_pandas(synthetic_planes, preserve_index=False),
        "flights": pa.Table.from_pandas(synthetic_flights, preserve_index=False),
    }
    name = "MOSTLY AI engine TabularARGN (context FK" + (")" if args.protection else ", no value protection)")
    _finish(args.out, tables, real, synthesizer=name,
            fit_seconds=round(fit, 2), sample_seconds=round(sample, 2))  # fmt: skip


def _repeats(table: pa.Table) -> dict[str, float]:
    """Per categorical flight column, the share of a plane's consecutive flights (in time order)
    that repeat the previous flight's value: the lag-1 agreement of categories (a plane keeps its
    airline, flies the same route again), which the numeric autocorrelation does not see."""
    import numpy as np

    from genai_pipeline.quality.relational import _events, _same_entity

    events = _events(table, "tailnum", "time_hour")
    same = _same_entity(events, "tailnum")
    shares = {}
    for name in ("carrier", "origin", "dest"):
        values = np.array(events.column(name).to_pylist(), dtype=object)
        shares[name] = float(np.mean((values[1:] == values[:-1])[same]))
    return shares


def score(args: argparse.Namespace) -> None:
    import numpy as np

    from genai_pipeline.quality.relational import relation_scores
    from genai_pipeline.quality.tabular import column_shapes, pair_trends_score

    real = load_flights(args.planes)
    relations = _schema()
    for folder in args.folders:
        run = json.loads((folder / "run.json").read_text())
        synthetic = {name: pq.read_table(folder / f"{name}.parquet") for name in real}
        (scores,) = relation_scores(real, synthetic, relations)
        tables = {}
        for name in real:
            keep = [c for c in real[name].column_names if c != "tailnum"]
            shapes = column_shapes(real[name].select(keep), synthetic[name].select(keep))
            tables[name] = {
                "shapes": round(float(np.mean(list(shapes.values()))), 4),
                "pairs": round(pair_trends_score(real[name].select(keep), synthetic[name].select(keep)), 4),
            }
        trends = [trend.score for trend in scores.pair_trends.values() if trend.related]
        real_repeats, synthetic_repeats = _repeats(real["flights"]), _repeats(synthetic["flights"])
        print(json.dumps({
            "folder": str(folder), "synthesizer": run["synthesizer"], "fit_seconds": run["fit_seconds"],
            "sample_seconds": run["sample_seconds"], "peak_rss_mb": run["peak_rss_mb"], "rows": run["rows"],
            "integrity": scores.integrity, "cardinality": scores.cardinality,
            "parent_child_trends": round(float(np.mean(trends)), 4) if trends else None,
            "order": scores.order, "gaps": scores.gaps,
            "autocorrelation": {k: round(v, 4) for k, v in scores.autocorrelation.items()},
            "repeats": {k: round(1 - abs(v - real_repeats[k]), 4) for k, v in synthetic_repeats.items()},
            "tables": tables,
        }), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("ours", "sdv-hma", "sdv-par", "mostly", "stream"):
        command = commands.add_parser(name)
        command.add_argument("--out", type=Path, required=name != "stream")
        command.add_argument("--scale", type=float, default=1.0, help="stream: times the real planes")
        command.add_argument("--stream-batch", type=int, default=65_536, help="stream: rows per batch")
        command.add_argument("--planes", type=int, default=1000)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--epochs", type=int, default=100)
        command.add_argument("--batch-size", type=int, default=256)
        command.add_argument("--max-minutes", type=float, default=10.0)
        command.add_argument("--params", default="{}", help="our family's config, as JSON")
        command.add_argument(
            "--no-protection",
            dest="protection",
            action="store_false",
            help="ours and mostly: value protection off (rare values replayed, as SDV does)",
        )
        command.add_argument(
            "--family", default="autoregressive", help="ours: autoregressive, vae or diffusion"
        )
    scoring = commands.add_parser("score")
    scoring.add_argument("folders", type=Path, nargs="+")
    scoring.add_argument("--planes", type=int, default=1000)
    args = parser.parse_args()
    run = {
        "ours": ours,
        "sdv-hma": sdv_hma,
        "sdv-par": sdv_par,
        "mostly": mostly,
        "stream": stream,
        "score": score,
    }
    run[args.command](args)


if __name__ == "__main__":
    main()
