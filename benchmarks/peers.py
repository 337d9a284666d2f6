"""The peers on the same table: SDV's CTGAN and TVAE, fitted and sampled in their own environment.

    python -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 && \\
        .venv-peers/bin/pip install sdv==2.0.0 && .venv-peers/bin/pip install --no-deps -e .
    cd benchmarks && ../.venv-peers/bin/python peers.py --dataset adult --synthesizer ctgan --epochs 50

Peers stay out of the project's dependencies: this script runs in a separate virtualenv that also
has the project installed without its dependencies, so fidelity is scored by the same functions
(``genai_pipeline.quality.tabular``) as our models in ``tabular_models.py``; SDMetrics'
QualityReport is printed next to them as a cross-check.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from benchmark_data import load_adult

from genai_pipeline.datasets import BUILTINS
from genai_pipeline.quality.tabular import column_shapes, pair_trends, pair_trends_score

TABLES = {"penguins": lambda: BUILTINS["penguins"].load(), "adult": load_adult}


def fit_and_sample(
    frame: pd.DataFrame, synthesizer: str, epochs: int, rows: int
) -> tuple[Any, pd.DataFrame, float, float]:
    """Fit SDV's CTGAN or TVAE on CPU and sample: ``(metadata, sampled rows, fit s, sample s)``."""
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, TVAESynthesizer

    metadata = Metadata.detect_from_dataframes({"table": frame})
    cls = {"ctgan": CTGANSynthesizer, "tvae": TVAESynthesizer}[synthesizer]
    model = cls(metadata, epochs=epochs, enable_gpu=False)
    started = time.perf_counter()
    model.fit({"table": frame})
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sampled = model.sample(rows)
    sampled = sampled["table"] if isinstance(sampled, dict) else sampled
    return metadata, sampled, fit_seconds, time.perf_counter() - started


def main() -> None:
    from sdmetrics.reports.single_table import QualityReport

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="penguins", choices=sorted(TABLES))
    parser.add_argument("--synthesizer", choices=["ctgan", "tvae"], required=True)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--score-rows", type=int, default=20_000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    real = TABLES[args.dataset]()
    frame = real.to_pandas()
    metadata, sampled, fit_seconds, sample_seconds = fit_and_sample(
        frame, args.synthesizer, args.epochs, args.rows
    )
    print(
        f"SDV {args.synthesizer} on {args.dataset} ({real.num_rows} rows), {args.epochs} epochs: "
        f"fit {fit_seconds:.1f} s"
    )
    rate = len(sampled) / sample_seconds
    print(f"sampling: {len(sampled)} rows in {sample_seconds:.2f} s = {rate:,.0f} rows/s")
    scored = sampled.head(args.score_rows)
    synthetic = pa.Table.from_pandas(scored, preserve_index=False).cast(real.schema, safe=False)
    shapes = float(np.mean(list(column_shapes(real, synthetic).values())))
    pairs = pair_trends_score(real, synthetic)
    all_pairs = float(np.mean(list(pair_trends(real, synthetic).values())))
    print(
        f"column shapes {shapes:.3f}, pair trends {pairs:.3f} (all pairs {all_pairs:.3f}), "
        f"quality {(shapes + pairs) / 2:.3f}"
    )
    report = QualityReport()
    report.generate(frame, pd.DataFrame(scored), metadata.to_dict()["tables"]["table"], verbose=False)
    properties = report.get_properties().set_index("Property")["Score"]
    print(
        f"SDMetrics: shapes {properties['Column Shapes']:.3f}, pairs {properties['Column Pair Trends']:.3f}, "
        f"quality {report.get_score():.3f}"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
