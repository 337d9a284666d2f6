"""Our fidelity scores against SDMetrics' QualityReport on the same synthetic tables.

    cd benchmarks && ../.venv-peers/bin/python sdmetrics_agreement.py --dataset adult --epochs 5

Runs in the peers' virtualenv (see ``peers.py``): SDV's GaussianCopula, TVAE and CTGAN make
synthetic tables of differing quality (``--epochs`` for the last two), and each is scored by
``genai_pipeline.quality.tabular`` and by SDMetrics. The two should agree within 0.02.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pyarrow as pa
from benchmark_data import load_adult

from genai_pipeline.datasets import BUILTINS
from genai_pipeline.quality.tabular import column_shapes, pair_trends_score

TABLES = {"penguins": lambda: BUILTINS["penguins"].load(), "adult": load_adult}


def main() -> None:
    from sdmetrics.reports.single_table import QualityReport
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer, TVAESynthesizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="penguins", choices=sorted(TABLES))
    parser.add_argument("--epochs", type=int, default=50, help="TVAE and CTGAN epochs")
    parser.add_argument("--rows", type=int, default=5000, help="synthetic rows scored")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    real = TABLES[args.dataset]()
    frame = real.to_pandas()
    metadata = Metadata.detect_from_dataframes({"table": frame})
    table_metadata = metadata.to_dict()["tables"]["table"]
    worst = 0.0
    for cls in (GaussianCopulaSynthesizer, TVAESynthesizer, CTGANSynthesizer):
        kwargs = {} if cls is GaussianCopulaSynthesizer else {"epochs": args.epochs, "enable_gpu": False}
        synthesizer = cls(metadata, **kwargs)
        synthesizer.fit({"table": frame})
        sampled = synthesizer.sample(args.rows)
        sampled = sampled["table"] if isinstance(sampled, dict) else sampled
        synthetic = pa.Table.from_pandas(sampled, preserve_index=False).cast(real.schema, safe=False)
        report = QualityReport()
        report.generate(frame, sampled, table_metadata, verbose=False)
        theirs = report.get_properties().set_index("Property")["Score"]
        shapes = float(np.mean(list(column_shapes(real, synthetic).values())))
        pairs = pair_trends_score(real, synthetic)
        worst = max(worst, abs(shapes - theirs["Column Shapes"]), abs(pairs - theirs["Column Pair Trends"]))
        print(
            f"{cls.__name__:26s} column shapes ours {shapes:.3f} SDMetrics {theirs['Column Shapes']:.3f} | "
            f"pair trends ours {pairs:.3f} SDMetrics {theirs['Column Pair Trends']:.3f}"
        )
    print(f"largest difference: {worst:.4f}")


if __name__ == "__main__":
    main()
