"""Row hashes (``columns.row_hashes``: what exact copies and ``unique`` are found by) on one row
group's worth of a table: seconds, the process's peak RSS and the distinct hashes.

    python benchmarks/row_hashes.py /tmp/genai_scale/adult_1M.parquet [--rows 128000]

The table is what ``training_scale.py`` stages (UCI Adult bootstrapped). The best of three runs.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pyarrow.parquet as pq

from genai_pipeline.columns import row_hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table")
    parser.add_argument("--rows", type=int, default=128_000, help="a row group's worth")
    args = parser.parse_args()
    table = pq.read_table(args.table).slice(0, args.rows)
    names = table.column_names
    row_hashes(table.slice(0, 1000), names)  # imports and first calls, untimed
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        hashes = row_hashes(table, names)
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{table.num_rows} rows x {len(names)} columns: {min(seconds):.3f} s, "
        f"peak RSS {peak:.0f} MB, {len(np.unique(hashes))} distinct"
    )


if __name__ == "__main__":
    main()
