"""A run in a few lines: the facts atop its report and the summary its Prefect artifact shows."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_job

from genai_pipeline.refs import DatasetRef, GeneratedRef
from genai_pipeline.runs import Run
from genai_pipeline.summary import browser_url, report_facts, summary_markdown

METRIC = {"scope": "table", "column": None, "threshold": 0.8, "bound": "min", "severity": "error"}


def _run(tmp_path: Path) -> Run:
    return Run(job=tiny_job("builtin://penguins", "vae", str(tmp_path)), run_date="2026-03-01", run_id="r1")


def test_a_published_run_lists_its_model_data_headline_metrics_and_report(tmp_path: Path) -> None:
    manifest = {
        "status": "published",
        "model": {
            "family": "vae",
            "modality": "tabular",
            "fit": {"steps": 40, "seconds": 1.25, "device": "cpu"},
        },
        "dataset": {
            "source": "builtin://penguins",
            "num_rows": 344,
            "holdout_rows": 68,
            "fingerprint": "ab12",
        },
        "generated": {"num_samples": 120},
        "quality": {
            "expectations_evaluated": 30,
            "expectations_failed": 1,
            "warnings": ["dcr_share=0.800 > 0.75"],
            "metrics": [
                {**METRIC, "metric": "column_shapes", "value": 0.91, "passed": True},
                {**METRIC, "scope": "column", "column": "island", "metric": "column_shape", "value": 0.5},
                {
                    **METRIC,
                    "metric": "dcr_share",
                    "value": 0.8,
                    "bound": "max",
                    "threshold": 0.75,
                    "passed": False,
                    "severity": "warning",
                },
            ],
        },
        "location": str(tmp_path / "data"),
        "report": str(tmp_path / "report.html"),
    }
    text = summary_markdown(_run(tmp_path), manifest)
    assert text.startswith("# tiny — 2026-03-01 — published")
    assert "- model: vae (tabular), 40 steps in 1.2 s on cpu" in text
    assert "- dataset: `builtin://penguins`, 344 rows (68 held out), fingerprint `ab12`" in text
    assert "- expectations: 29/30 passed" in text and "- **warning:** dcr_share=0.800 > 0.75" in text
    assert "| column_shapes |  | 0.910 | ≥ 0.8 | yes |" in text
    assert "| dcr_share |  | 0.800 | ≤ 0.75 | warning |" in text
    assert "island" not in text  # per-column rows are the report's, not the summary's
    assert f"({(tmp_path / 'report.html').as_uri()})" in text


def test_a_failed_run_says_why(tmp_path: Path) -> None:
    text = summary_markdown(_run(tmp_path), {"status": "failed", "error": "DatasetError: x.csv: not found"})
    assert text.splitlines()[0] == "# tiny — 2026-03-01 — failed"
    assert text.endswith("**Error:** DatasetError: x.csv: not found")


def test_report_facts_and_browser_urls(tmp_path: Path) -> None:
    dataset = DatasetRef(
        source="builtin://penguins",
        snapshot="s",
        modality="tabular",
        fingerprint="f",
        num_rows=344,
        schema={},
        label="species",
        suite="q",
        holdout_rows=68,
    )
    facts = report_facts(_run(tmp_path), dataset, GeneratedRef(data_file="d", num_samples=120, seconds=2.5))
    assert facts == {
        "run id": "r1",
        "model": "vae (tabular)",
        "dataset": "builtin://penguins: 344 rows, 68 held out",
        "generated": "120 samples in 2.5 s",
        "seed": "3",
        "privacy": "values fewer than 5 rows hold are protected",
    }
    assert browser_url("s3://bucket/report.html") == "s3://bucket/report.html"
    assert browser_url("out/report.html") == (Path.cwd() / "out/report.html").as_uri()
