"""The gate: metric rows with their thresholds, and the verdict drawn from them.

Every metric becomes one row of ``metrics.parquet`` so analysts can chart quality over nights. A row
whose metric is gated by ``validate`` carries the threshold, its direction (``min``: the value must
reach it; ``max``: must not exceed it) and the severity of a miss: ``error`` stops publication,
``warning`` (metrics listed in ``validate.warn_on``) publishes the run flagged.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from genai_pipeline.config import GATES, ValidateSpec
from genai_pipeline.quality.expectations import SuiteResult
from genai_pipeline.refs import QualityVerdict

METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("table", pa.string()),  # several tables: which one (null: the run's only table, or relations)
        ("scope", pa.string()),
        ("column", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("bound", pa.string()),
        ("passed", pa.bool_()),
        ("severity", pa.string()),
    ]
)


class MetricRows:
    """Collects a run's metric rows, applying the job's thresholds to the gated ones."""

    def __init__(self, run_id: str, spec: ValidateSpec, table: str | None = None):
        self.run_id = run_id
        self.spec = spec
        self.table_name = table
        self.rows: list[dict[str, Any]] = []

    def of_table(self, table: str) -> MetricRows:
        """The rows of one table of several: added to these, each naming ``table``."""
        rows = MetricRows(self.run_id, self.spec, table)
        rows.rows = self.rows
        return rows

    def add(self, scope: str, column: str | None, metric: str, value: float) -> None:
        gated = ("table", "images", "relation", "text", "constraint", "fairness")
        field = GATES.get(metric) if scope in gated else None
        threshold = getattr(self.spec, field) if field else None
        bound = None if threshold is None else field.split("_", 1)[0]  # type: ignore[union-attr]
        passed = threshold is None or (value >= threshold if bound == "min" else value <= threshold)
        self.rows.append(
            {
                "run_id": self.run_id,
                "table": self.table_name,
                "scope": scope,
                "column": column,
                "metric": metric,
                "value": float(value),
                "threshold": threshold,
                "bound": bound,
                "passed": passed,
                "severity": None
                if threshold is None
                else ("warning" if metric in self.spec.warn_on else "error"),
            }
        )

    def misses(self, severity: str) -> list[str]:
        """``column_shapes=0.512 < 0.75``: the rows that missed their threshold, named for people."""
        return [
            f"{row['table'] + '.' if row.get('table') else ''}{row['metric']}"
            f"{'(' + row['column'] + ')' if row['column'] else ''}={row['value']:.3f} "
            f"{'<' if row['bound'] == 'min' else '>'} {row['threshold']}"
            for row in self.rows
            if not row["passed"] and row["severity"] == severity
        ]

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA)


def judge(rows: MetricRows, suite: SuiteResult, report_file: str) -> QualityVerdict:
    """The run's verdict: failed by any failed critical expectation or metric past an ``error``
    threshold, flagged by the ``warning`` ones."""
    return QualityVerdict(
        passed=not (suite.failures or rows.misses("error")),
        failures=suite.failures + rows.misses("error"),
        warnings=suite.warnings + rows.misses("warning"),
        metrics=rows.rows,
        expectations_evaluated=suite.evaluated,
        expectations_failed=suite.failed,
        report_file=report_file,
    )
