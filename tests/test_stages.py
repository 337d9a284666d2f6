"""The stage functions called directly, without Prefect (the library must work on its own)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from conftest import run_stages, tiny_job, workspace_for
from PIL import Image

from genai_pipeline import stages
from genai_pipeline.config import JobSpec
from genai_pipeline.datasets import sources
from genai_pipeline.datasets.base import TabularData, sampled
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.refs import GeneratedRef, QualityVerdict
from genai_pipeline.runs import Run

LABELS = ["cat / kitten", "ünïcode label", ".."]


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_warehouse_table_as_it_is_its_run_date_kept_as_data_and_a_column_left_out(tmp_path: Path) -> None:
    # a table with a run_date of its own: refused under the default key, which readers of
    # data/run_date=…/ would see in its place, and published as data when the job names another key
    source = tmp_path / "orders.parquet"
    days = [f"2025-01-{1 + i % 10:02d}" for i in range(200)]
    memo = [[f"call {i}"] for i in range(200)]  # a list: of a type no model learns, left out
    amounts = [round(10 + (i * 7919 % 1000) / 37, 2) for i in range(200)]
    pq.write_table(pa.table({"run_date": days, "amount": amounts, "memo": memo}), source)
    skip = {"columns": {"memo": {"skip": True}}}
    refused = tiny_job(str(source), "autoregressive", str(tmp_path / "out"), dataset=skip)
    with pytest.raises(DatasetError, match=r"orders.parquet: column 'run_date' .* set export.partition_key"):
        stages.ingest(Run(job=refused, run_date="2026-02-03"))
    job = tiny_job(
        str(source),
        "autoregressive",
        str(tmp_path / "out"),
        export={"partition_key": "day"},
        dataset=skip,
        validate={"max_memorised_share": 1.0},  # a table this small, two epochs: not what is tested
    )
    run_stages(Run(job=job, run_date="2026-02-03"))
    root = tmp_path / "out" / "tiny"
    assert [p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet")] == [
        "data/day=2026-02-03/part-00000.parquet"
    ]
    read = pq.read_table(root / "data", partitioning="hive")  # as a reader of the folder sees it
    assert read.column("day").unique().to_pylist() == ["2026-02-03"]
    assert set(read.column("run_date").to_pylist()) <= set(days)  # the table's own column, as data
    assert "memo" not in read.column_names  # left out: not learned, not published
    assert (root / "quality" / "day=2026-02-03").is_dir()
    with pytest.raises(ConfigError, match="names a partition below the date"):
        tiny_job(str(source), "autoregressive", str(tmp_path / "out"), export={"partition_key": "label"})
    for columns, message in (
        ({"memo": {"skip": True, "type": "text"}}, "skip: true takes no type"),
        ({"memo": {}}, "type: id, pii, text, category, numeric or datetime"),
        ({"amount": {"skip": True}}, "the label column is learned, it cannot be skipped"),
    ):
        with pytest.raises(ConfigError, match=message):
            tiny_job(str(source), "autoregressive", "out", dataset={"columns": columns, "label": "amount"})


def _warehouse_orders(path: Path) -> None:
    """Orders as a warehouse names them: spaces in names, and a run_date of their own."""
    price = [round(5 + (i * 7919 % 400) / 8, 2) for i in range(240)]
    quantity = [1 + i * 31 % 6 for i in range(240)]
    pq.write_table(
        pa.table(
            {
                "Unit Price": price,
                "Qty": quantity,
                "Order Total": [round(p * q, 2) for p, q in zip(price, quantity, strict=True)],
                "run_date": [f"2025-01-{1 + i % 10:02d}" for i in range(240)],
                "channel": ["web" if i % 3 else "shop" for i in range(240)],
            }
        ),
        path,
    )


RENAMED = {
    "Unit Price": {"rename": "unit_price", "type": "numeric"},
    "Qty": {"rename": "qty"},
    "Order Total": {"rename": "total"},
    "run_date": {"rename": "source_day"},
}


def test_columns_renamed_for_the_job_are_published_under_their_own_names(tmp_path: Path) -> None:
    # names a formula cannot spell: the job renames them, its rule names the new names, and the
    # output keeps the warehouse's schema; a retried shard's rows are checked by the job's names
    source = tmp_path / "orders.parquet"
    _warehouse_orders(source)
    sections = {
        "dataset": {"columns": RENAMED, "label": "channel"},
        "generate": {
            "num_samples": 200,
            "shards": 2,
            "constraints": [{"kind": "formula", "column": "total", "expression": "unit_price * qty"}],
        },
        "validate": {"max_memorised_share": 1.0},
    }
    job = tiny_job(str(source), "autoregressive", str(tmp_path / "out"), **sections)
    with pytest.raises(DatasetError, match=r"column 'run_date' .* set export.partition_key"):
        stages.ingest(Run(job=job, run_date="2026-02-03"))  # published as run_date, it would be shadowed
    job = tiny_job(
        str(source), "autoregressive", str(tmp_path / "out"), export={"column_names": "renamed"}, **sections
    )
    run_stages(Run(job=job, run_date="2026-02-03"))
    published = pq.read_table(tmp_path / "out" / "tiny" / "data" / "run_date=2026-02-03")
    assert published.column_names == ["unit_price", "qty", "total", "source_day", "channel"]

    job = tiny_job(
        str(source), "autoregressive", str(tmp_path / "out"), export={"partition_key": "day"}, **sections
    )
    run = Run(job=job, run_date="2026-02-04")
    dataset = stages.ingest(run)
    assert [c["name"] for c in dataset.schema["columns"]][:4] == ["unit_price", "qty", "total", "source_day"]
    model = stages.train(run, dataset=dataset)
    shards = [stages.generate_shard(run, model=model, dataset=dataset, shard=i) for i in range(2)]
    retried = stages.generate_shard(run, model=model, dataset=dataset, shard=0)
    assert retried.violations == shards[0].violations and list(retried.violations.values()) == [0]
    generated = stages.combine_shards(run, shards)
    verdict = stages.validate(run, dataset=dataset, generated=generated)
    assert verdict.passed, verdict.failures
    stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    published = pq.read_table(tmp_path / "out" / "tiny" / "data" / "day=2026-02-04")
    assert published.column_names == ["Unit Price", "Qty", "Order Total", "run_date", "channel"]
    rows = published.to_pylist()
    assert all(round(row["Unit Price"] * row["Qty"], 2) == row["Order Total"] for row in rows), (
        "the rule holds in the published rows, under their own names"
    )


@pytest.mark.parametrize(
    ("columns", "label", "message"),
    [
        (
            {"Qty": {"rename": "channel"}, "channel": {"type": "category"}},
            None,
            "Qty.rename: 'channel' names another column",
        ),
        (
            {"Qty": {"rename": "q"}, "Unit Price": {"rename": "q"}},
            None,
            "Unit Price.rename: 'q' names another column",
        ),
        ({"Qty": {"rename": "qty"}}, "Qty", "label: 'Qty' is renamed 'qty': name it so"),
        ({"Qty": {"rename": "two words"}}, None, "String should match pattern"),
        ({"Qty": {"rename": "__constant__"}}, None, "String should match pattern"),  # a model's own
        ({"Qty": {"rename": "qty", "skip": True}}, None, "skip: true takes no type, kind, locale or rename"),
    ],
)
def test_a_rename_that_would_make_one_column_twice_is_refused(
    tmp_path: Path, columns: dict[str, dict[str, object]], label: str | None, message: str
) -> None:
    dataset = {"columns": columns, **({"label": label} if label else {})}
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_job(str(tmp_path / "orders.parquet"), "autoregressive", "out", dataset=dataset)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"Quantity": {"rename": "qty"}}, "dataset.columns.Quantity: no such column to rename"),
        (
            {"Qty": {"rename": "channel"}},
            "dataset.columns.Qty.rename: the data has a column 'channel' already",
        ),
    ],
)
def test_a_rename_the_data_does_not_allow_fails_at_ingest(
    tmp_path: Path, columns: dict[str, dict[str, object]], message: str
) -> None:
    source = tmp_path / "orders.parquet"
    _warehouse_orders(source)
    job = tiny_job(
        str(source),
        "autoregressive",
        str(tmp_path / "out"),
        dataset={"columns": columns},
        export={"partition_key": "day"},
    )
    with pytest.raises(DatasetError, match=re.escape(message)):
        stages.ingest(Run(job=job, run_date="2026-02-03"))


def test_odd_labels_survive_in_the_manifest_and_cannot_escape_in_paths(tmp_path: Path) -> None:
    rows = [
        {"image": {"bytes": _png(40 * i + j), "path": None}, "label": LABELS[i]}
        for i in range(3)
        for j in range(30)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "images.parquet")
    job = tiny_job(
        str(tmp_path / "images.parquet"),
        "gan",
        str(tmp_path / "out"),
        dataset={"format": "image_parquet", "label": "label"},
        train={"epochs": 60, "batch_size": 32},
        generate={"num_samples": 30, "batch_size": 16},
        validate={"expectations": []},
    )
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    staged_manifest = pq.read_table(tmp_path / "out" / "tiny" / run.staged(run.data_file))
    assert set(staged_manifest.column("label").to_pylist()) <= set(LABELS)
    root = (tmp_path / "out" / "tiny").resolve()
    for path in staged_manifest.column("path").to_pylist():
        parts = path.split("/")
        assert (
            parts[:2] == ["images", "run_date=2026-02-03"]
            and parts[2].startswith("label=")
            and len(parts) == 4
        )
        assert (root / run.staging / path).resolve().is_relative_to(root / run.staging)
    report = stages.validate(run, dataset=dataset, generated=generated)
    assert report.passed, report.failures
    published = stages.export(run, dataset=dataset, model=model, generated=generated, verdict=report)
    assert json.loads((root / f"_runs/{run.run_id}.json").read_text())["status"] == "published"
    assert published.num_samples == 30
    pngs = [p.relative_to(root).as_posix() for p in root.rglob("*.png")]
    assert len(pngs) == 30 and all(p.startswith("images/run_date=2026-02-03/label=") for p in pngs)
    assert {p.split("/")[2] for p in pngs} <= {
        "label=cat%20%2F%20kitten",
        "label=%C3%BCn%C3%AFcode%20label",
        "label=%2E%2E",
    }


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"colour": "red"}, "generate.conditions.colour: no such column"),
        ({"island": "Atlantis"}, "generate.conditions.island: 'Atlantis' is not a known value"),
        ({"bill_length_mm": 500}, "generate.conditions.bill_length_mm: 500 is outside the range"),
        (
            {"island": "Dream", "model.reveal_rate": 0},
            "generate.conditions.island: the tabular VAE was trained",
        ),
        ({"species": "Dodo"}, "generate.conditions.species: 'Dodo' does not occur in the data"),
    ],
)
def test_impossible_conditions_fail_at_ingest(tmp_path: Path, conditions: dict, message: str) -> None:
    reveal = {"reveal_rate": conditions.pop("model.reveal_rate")} if "model.reveal_rate" in conditions else {}
    model = {"family": "vae", "hidden": [32], "latent_dim": 8, **reveal}
    job = tiny_job(
        "builtin://penguins", "vae", str(tmp_path), generate={"conditions": conditions}, model=model
    )
    run = Run(job=job, run_date="2026-02-03")
    with pytest.raises(ConfigError, match=message):
        stages.ingest(run)
    assert not (Path(workspace_for(str(tmp_path))) / "tiny" / "models").exists()  # nothing trained


def test_image_label_conditions_are_checked_at_ingest(tmp_path: Path) -> None:
    job = tiny_job("builtin://digits", "gan", str(tmp_path), generate={"conditions": {"label": 12}})
    with pytest.raises(ConfigError, match="generate.conditions.label: 12 does not occur in the data"):
        stages.ingest(Run(job=job, run_date="2026-02-03"))


def _generate(job) -> pa.Table:
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    table = pq.read_table(Path(job.export.output) / job.name / run.staged(run.data_file))
    assert table.num_rows == generated.num_samples
    return table


def test_conditions_on_other_columns_are_met_and_compared_with_matching_rows(tmp_path: Path) -> None:
    """Only Adelie penguins live on Torgersen: the label follows a fixed island, and the shapes of a
    conditioned run are judged against the real Torgersen penguins."""
    job = tiny_job(
        "builtin://penguins",
        "vae",
        str(tmp_path),
        generate={"conditions": {"island": "Torgersen", "sex": "female"}},
        validate={"min_column_shapes": 0.5},
    )
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    table = pq.read_table(tmp_path / "tiny" / run.staged(run.data_file))
    assert set(table.column("island").to_pylist()) == {"Torgersen"}
    assert set(table.column("sex").to_pylist()) == {"female"}
    assert table.column("species").to_pylist().count("Adelie") > 0.95 * table.num_rows
    report = stages.validate(run, dataset=dataset, generated=generated)
    assert report.passed, report.failures
    metrics = pq.read_table(tmp_path / "tiny" / run.staged(run.quality) / "metrics.parquet")
    rows = metrics.to_pylist()
    compared = {row["column"] for row in rows if row["metric"] == "column_shape"}
    assert compared == {
        "species",
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
        "year",
    }
    assert len([row for row in rows if row["metric"] == "pair_trend"]) == 6 * 5 // 2
    assert {row["metric"] for row in rows if row["column"] == "body_mass_g"} == {
        "column_shape",
        "range_coverage",
        "null_rate_similarity",
        "protected_values",
    }
    assert {row["metric"] for row in rows if row["column"] == "species"} >= {"category_coverage"}
    (overall,) = [row for row in rows if row["metric"] == "pair_trends"]
    assert 0 < overall["value"] <= 1 and overall["threshold"] is None and overall["passed"]


def _validated(job: JobSpec) -> QualityVerdict:
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    return stages.validate(run, dataset=dataset, generated=generated)


def test_a_pair_trend_threshold_gates_the_run(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), validate={"min_pair_trends": 0.999})
    report = _validated(job)
    assert not report.passed
    assert any(f.startswith("pair_trends=") and f.endswith("< 0.999") for f in report.failures)


def test_copies_of_real_rows_fail_the_new_row_gate(tmp_path: Path) -> None:
    """Two yes/no columns leave a model nothing but the real rows to produce."""
    pq.write_table(pa.table({"a": ["x", "y"] * 50, "b": ["u", "u", "v", "v"] * 25}), tmp_path / "t.parquet")
    job = tiny_job(str(tmp_path / "t.parquet"), "vae", str(tmp_path / "out"), validate={"min_new_rows": 0.5})
    report = _validated(job)
    assert not report.passed
    assert any(f.startswith("new_row_share=0.000") for f in report.failures)


def test_per_label_counts(tmp_path: Path) -> None:
    job = tiny_job("builtin://digits", "gan", str(tmp_path), generate={"per_label": {3: 5, "7": 2}})
    labels = _generate(job).column("label").to_pylist()
    assert sorted(labels) == ["3"] * 5 + ["7"] * 2
    job = tiny_job("builtin://penguins", "vae", str(tmp_path / "t"), generate={"per_label": 4})
    species = _generate(job).column("species").to_pylist()
    assert sorted(species) == ["Adelie"] * 4 + ["Chinstrap"] * 4 + ["Gentoo"] * 4


def test_per_label_names_known_labels(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"per_label": {"Dodo": 3}})
    with pytest.raises(ConfigError, match="generate.per_label.Dodo: 'Dodo' does not occur in the data"):
        stages.ingest(Run(job=job, run_date="2026-02-03"))


def test_reuse_latest_generates_from_the_last_published_model(tmp_path: Path) -> None:
    def run_once(**train) -> tuple[Run, object]:
        job = tiny_job("builtin://penguins", "vae", str(tmp_path), train=train)
        run = Run(job=job, run_date="2026-02-03")
        return run, run_stages(run)

    _, first = run_once(reuse="latest")  # nothing published yet: trains
    assert "reused_from" not in first.fit
    second_run, second = run_once(reuse="latest", epochs=5)  # a different spec, still reused
    assert second.uri == first.uri and second.fit["reused_from"]
    _, third = run_once(epochs=3)  # reuse: never trains again
    assert third.uri != first.uri and "reused_from" not in third.fit
    _, fourth = run_once(epochs=3, reuse="cached")  # the same data, config and code as the third
    assert fourth.uri == third.uri and fourth.fit["cached"] and fourth.fit["steps"] == third.fit["steps"]
    _, fifth = run_once(epochs=4, reuse="cached")  # a changed config trains
    assert fifth.uri != third.uri and "cached" not in fifth.fit


def test_a_run_stages_its_suite_data_docs_report_and_holdout_metrics(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), validate={"max_dcr_share": 0.0})
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    assert dataset.holdout_rows == int(344 * 0.2) and dataset.holdout is not None
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    report = stages.validate(run, dataset=dataset, generated=generated)
    # dcr_share warns by default: the run passes, flagged
    assert report.passed and report.warnings == [
        next(w for w in report.warnings if w.startswith("dcr_share="))
    ]
    quality = tmp_path / "tiny" / run.staged(run.quality)
    assert json.loads((quality / "suite.json").read_text())["name"] == "tiny"
    (page,) = (quality / "data_docs" / "validations").rglob("*.html")
    assert (quality / "data_docs" / "index.html").exists() and "island" in page.read_text()
    for html_page in quality.rglob("*.html"):  # the published pages forbid scripts (see test_report)
        assert "Content-Security-Policy" in html_page.read_text().split("</head>")[0], html_page
    assert (quality / "report.html").read_text().startswith("<!DOCTYPE html>")
    rows = {
        (row["metric"], row["column"]): row for row in pq.read_table(quality / "metrics.parquet").to_pylist()
    }
    assert rows[("tstr", "species")]["value"] > 0 and rows[("trtr", "species")]["value"] > 0.9
    assert {"utility_ratio", "memorised_share", "nndr", "holdout_nndr"} <= {metric for metric, _ in rows}
    assert rows[("dcr_share", None)]["severity"] == "warning" and not rows[("dcr_share", None)]["passed"]
    published = stages.export(run, dataset=dataset, model=model, generated=generated, verdict=report)
    assert published.manifest["warnings"] == report.warnings
    assert published.manifest["report"].endswith(f"quality/run_date=2026-02-03/run={run.run_id}/report.html")


def test_copied_training_rows_fail_the_memorisation_gate(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path))
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    root = tmp_path / "tiny"
    copies = pq.read_table(Path(workspace_for(str(tmp_path))) / "tiny" / dataset.snapshot)
    (root / run.staged(run.data_file)).parent.mkdir(parents=True)
    pq.write_table(copies, root / run.staged(run.data_file))
    generated = GeneratedRef(data_file=run.staged(run.data_file), num_samples=copies.num_rows, seconds=0.0)
    report = stages.validate(run, dataset=dataset, generated=generated)
    assert not report.passed and "memorised_share=1.000 > 0.1" in report.failures


def test_the_real_input_is_checked_against_the_jobs_expectations(tmp_path: Path) -> None:
    too_early = {"type": "expect_column_max_to_be_between", "kwargs": {"column": "year", "max_value": 2008}}
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), validate={"expectations": [too_early]})
    with pytest.raises(
        DatasetError, match=r"builtin://penguins fails 1 expectation\(s\).*max_to_be_between\(year\)"
    ) as failure:
        stages.ingest(Run(job=job, run_date="2026-02-03"))
    assert "2009" not in str(failure.value)  # the message reaches the failed run's manifest: no real value
    synthetic_only = {**too_early, "check_input": False}
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), validate={"expectations": [synthetic_only]})
    stages.ingest(Run(job=job, run_date="2026-02-03"))


def test_a_saved_suite_is_written_once_reviewed_and_guards_the_input(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), validate={"suite": "saved"})
    stages.ingest(Run(job=job, run_date="2026-02-03"))
    saved = (
        Path(workspace_for(str(tmp_path))) / "tiny" / "expectations" / "suite.json"
    )  # private: reviewed there
    suite = json.loads(saved.read_text())
    (islands,) = [
        e
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"]["column"] == "island"
    ]
    islands["kwargs"]["value_set"] = ["Biscoe", "Dream"]  # a reviewer's edit: Torgersen is gone
    saved.write_text(json.dumps(suite))
    with pytest.raises(DatasetError, match=r"expect_column_values_to_be_in_set\(island\)"):
        stages.ingest(Run(job=job, run_date="2026-02-04"))
    saved.write_text("{broken")
    with pytest.raises(ConfigError, match="expectations/suite.json: not a valid expectation suite"):
        stages.ingest(Run(job=job, run_date="2026-02-05"))


def test_image_runs_are_judged_by_a_cached_real_data_classifier(tmp_path: Path) -> None:
    job = tiny_job("builtin://digits", "vae", str(tmp_path), generate={"num_samples": 60})
    report = _validated(job)
    scores = {row["metric"]: row["value"] for row in report.metrics}
    assert {
        "classifier_accuracy",
        "label_consistency",
        "frechet_distance",
        "precision",
        "recall",
        "density",
        "coverage",
        "cas",
        "memorised_share",
        "duplicate_share",
    } <= set(scores)
    assert scores["classifier_accuracy"] > 0.5 and scores["memorised_share"] <= 0.1
    (cached,) = (Path(workspace_for(str(tmp_path))) / "tiny" / "models").glob(
        "classifier-*/weights.safetensors"
    )
    before = cached.stat().st_mtime_ns
    again = _validated(job)  # same data and recipe: the classifier is loaded, not trained again
    assert cached.stat().st_mtime_ns == before
    assert {row["metric"]: row["value"] for row in again.metrics}["classifier_accuracy"] == scores[
        "classifier_accuracy"
    ]


def test_copied_training_images_fail_the_memorisation_gate(tmp_path: Path) -> None:
    from genai_pipeline.datasets.base import read_snapshot
    from genai_pipeline.generation import write_images
    from genai_pipeline.models.base import ImageBatch

    job = tiny_job("builtin://digits", "vae", str(tmp_path))
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    real = read_snapshot(run.workspace(), dataset.snapshot, dataset.label)
    copies = ImageBatch(images=real.images[:200], labels=real.labels[:200])
    count = write_images([copies, copies], run.storage(), run, model_name="copies")
    shard = GeneratedRef(
        data_file=run.staged(run.shard_part(0)), num_samples=count, seconds=0.0, image_root=run.staging
    )
    generated = stages.combine_shards(run, [shard])
    report = stages.validate(run, dataset=dataset, generated=generated)
    assert "memorised_share=1.000 > 0.1" in report.failures
    assert "duplicate_share=0.500 > 0.1" in report.failures


def test_shards_split_the_work_reproducibly_and_a_staged_shard_is_not_redone(tmp_path: Path) -> None:
    job = tiny_job("builtin://digits", "vae", str(tmp_path), generate={"num_samples": 100, "shards": 3})
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    shards = [stages.generate_shard(run, model=model, dataset=dataset, shard=shard) for shard in range(3)]
    root = tmp_path / "tiny"
    parts = [pq.read_table(root / run.staged(run.shard_part(shard))) for shard in range(3)]
    assert [part.num_rows for part in parts] == [34, 33, 33]
    ids = [sample_id for part in parts for sample_id in part.column("sample_id").to_pylist()]
    assert len(set(ids)) == 100
    again = stages.generate_shard(run, model=model, dataset=dataset, shard=1)  # a retried task
    assert again.num_samples == 33 and again.seconds == 0.0
    other = Run(job=job, run_date="2026-02-04")  # the same shard of another run: the same images
    stages.generate_shard(other, model=model, dataset=dataset, shard=2)
    first = [(root / run.staged(p)).read_bytes() for p in parts[2].column("path").to_pylist()]
    second_parts = pq.read_table(root / other.staged(other.shard_part(2))).column("path").to_pylist()
    assert first == [(root / other.staged(p)).read_bytes() for p in second_parts]
    generated = stages.combine_shards(run, shards)
    assert (generated.num_samples, generated.shards) == (100, 3)
    assert stages.combine_shards(run, shards) == generated  # a retried task: the same one file
    combined = pq.read_table(root / run.staged(run.data_file))
    assert combined.column("sample_id").to_pylist() == ids
    assert not (root / run.staged("shards")).exists() or not any((root / run.staged("shards")).iterdir())
    report = stages.validate(run, dataset=dataset, generated=generated)
    published = stages.export(run, dataset=dataset, model=model, generated=generated, verdict=report)
    data = [rel for rel in published.files if rel.startswith("data/")]
    assert data == [run.data_file] and published.num_samples == 100


def test_an_unchanged_source_is_read_once_and_a_changed_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    source = tmp_path / "rows.csv"
    source.write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(60)))
    reads = []
    real_read = sources.read_dataset
    monkeypatch.setattr(sources, "read_dataset", lambda spec: reads.append(spec.uri) or real_read(spec))
    job = tiny_job(str(source), "vae", str(tmp_path / "out"))
    first = stages.ingest(Run(job=job, run_date="2026-02-03"))
    second = stages.ingest(Run(job=job, run_date="2026-02-04"))
    assert len(reads) == 1 and second.fingerprint == first.fingerprint
    time.sleep(0.01)
    source.write_text(source.read_text() + "60,0\n")  # the nightly export grew by a row
    third = stages.ingest(Run(job=job, run_date="2026-02-05"))
    assert len(reads) == 2 and third.num_rows == 61 and third.fingerprint != first.fingerprint
    cache = Path(workspace_for(str(tmp_path / "out"))) / "tiny" / "datasets"  # a copy of real rows: private
    assert (
        len(list(cache.glob("source-*.parquet"))) == 1
        and not (tmp_path / "out" / "tiny" / "datasets").exists()
    )
    uncached = tiny_job(str(source), "vae", str(tmp_path / "out"), dataset={"cache": False})
    stages.ingest(Run(job=uncached, run_date="2026-02-06"))
    assert len(reads) == 3


def test_a_changed_schema_fails_naming_the_change_unless_the_job_adapts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np

    source, rows, rng = tmp_path / "daily.parquet", 300, np.random.default_rng(0)
    daily = pa.table(
        {"a": rng.integers(0, 10**6, rows), "b": rng.choice(["x", "y"], rows), "c": rng.random(rows)}
    )
    pq.write_table(daily, source)
    run_stages(Run(job=tiny_job(str(source), "vae", str(tmp_path / "out")), run_date="2026-03-01"))
    same_schema = daily.set_column(1, "b", pa.array(["y", None] * (rows // 2)))
    pq.write_table(same_schema, source)  # new values and nulls, the same columns and types
    stages.ingest(Run(job=tiny_job(str(source), "vae", str(tmp_path / "out")), run_date="2026-03-02"))
    drifted = pa.table({"a": [float(i) for i in range(rows)], "b": ["x"] * rows, "d": ["new"] * rows})
    pq.write_table(drifted, source)
    with pytest.raises(DatasetError) as failure:
        stages.ingest(Run(job=tiny_job(str(source), "vae", str(tmp_path / "out")), run_date="2026-03-03"))
    latest = Path(workspace_for(str(tmp_path / "out"))) / "tiny" / "models" / "latest.json"
    published = json.loads(latest.read_text())["run_id"]
    assert str(failure.value) == (
        f"{source}: the schema changed since run {published} (run_date 2026-03-01): "
        "column 'd' (string) added; column 'c' (double) removed; column 'a' changed type int64 → double "
        "(set dataset.on_schema_change: adapt to accept it)"
    )
    adapting = tiny_job(str(source), "vae", str(tmp_path / "out"), dataset={"on_schema_change": "adapt"})
    dataset = stages.ingest(Run(job=adapting, run_date="2026-03-03"))
    assert [column["name"] for column in dataset.schema["columns"]] == ["a", "b", "d"]
    assert "the schema changed since run" in caplog.text and "adapting" in caplog.text


def test_image_schema_changes_name_size_channels_and_labels() -> None:
    from genai_pipeline.datasets.base import schema_diff

    before = {"height": 8, "width": 8, "channels": 1, "labels": ["0", "1", "2"]}
    after = {"height": 28, "width": 28, "channels": 1, "labels": ["0", "1", "3"]}
    assert schema_diff(before, after) == [
        "height 8 → 28",
        "width 8 → 28",
        "labels added: 3",
        "labels removed: 2",
    ]
    assert schema_diff(before, {**before, "labels": None}) == []  # too many labels to list: not compared
    assert schema_diff(before, {"columns": [], "label": None, "labels": []}) == ["images became a table"]


_KILLED_MID_TRAINING = """
import os, signal, sys
from genai_pipeline import stages
from genai_pipeline.config import JobSpec
from genai_pipeline.runs import Run
from genai_pipeline.training import CheckpointStore

saves, real_save = [], CheckpointStore.save

def save_then_die(self, state):
    real_save(self, state)
    saves.append(state["step"])
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no exception, no cleanup: the process is gone

CheckpointStore.save = save_then_die
run = Run(job=JobSpec.model_validate_json(sys.argv[1]), run_date="2026-03-01")
stages.train(run, dataset=stages.ingest(run))
"""


def test_a_process_killed_mid_training_is_resumed_by_the_next_run(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    train = {"epochs": 12, "checkpoint_every": 5}
    whole = Run(
        job=tiny_job("builtin://penguins", "vae", str(tmp_path / "whole"), train=train), run_date="2026-03-01"
    )
    steps = stages.train(whole, dataset=stages.ingest(whole)).fit["steps"]
    job = tiny_job("builtin://penguins", "vae", str(tmp_path / "killed"), train=train)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_TRAINING, job.model_dump_json()], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    rerun = Run(job=job, run_date="2026-03-01")  # a new run (new id), as a scheduler's rerun would be
    model = stages.train(rerun, dataset=stages.ingest(rerun))
    assert model.fit["resumed_from_step"] == 10 and model.fit["steps"] == steps
    assert not list((tmp_path / "killed" / "tiny" / model.uri / "checkpoints").glob("*"))


def test_shards_are_combined_only_when_every_part_is_staged(tmp_path: Path) -> None:
    from genai_pipeline.errors import StorageError

    run = Run(
        job=tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"shards": 2}),
        run_date="2026-03-01",
    )
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    shards = [stages.generate_shard(run, model=model, dataset=dataset, shard=shard) for shard in range(2)]
    (tmp_path / "tiny" / run.staged(run.shard_part(1))).unlink()
    with pytest.raises(StorageError, match=r"shards/part-00001\.parquet: a shard's data is missing"):
        stages.combine_shards(run, shards)
    assert not (tmp_path / "tiny" / run.staged(run.data_file)).exists()


def test_a_rebalanced_run_publishes_the_shares_asked_and_keeps_the_real_counts_private(
    tmp_path: Path,
) -> None:
    generate = {
        "num_samples": 800,
        "batch_size": 300,
        "shards": 2,
        "rebalance": {"island": {"Torgersen": 0.5}},
    }
    root = _penguins_run(tmp_path, "autoregressive", generate)
    islands = pq.read_table(root / "data" / "run_date=2026-02-03").column("island").to_pylist()
    assert islands.count("Torgersen") == 400  # exact: a part of the plan, not a draw
    # the rest as Biscoe : Dream in the training rows (168 : 124 in all the real ones)
    assert islands.count("Biscoe") + islands.count("Dream") == 400
    assert islands.count("Biscoe") / 400 == pytest.approx(168 / 292, abs=0.02)
    metrics = pq.read_table(next(root.glob("quality/**/metrics.parquet"))).to_pandas()
    shares = metrics[metrics["scope"] == "rebalance"].set_index("metric")["value"]
    assert shares["share"] == shares["share_asked"] == 0.5
    # the real counts the plan was made from stay in the run's private area (gone with it), never
    # in the output
    assert not [path for path in root.rglob("*") if "counts" in path.name]
    manifest = next(root.glob("_runs/*.json")).read_text()
    assert "counts" not in manifest and not re.search(r'"(Biscoe|Dream)",\s*\d', manifest)
    with pytest.raises(
        ConfigError, match="generate.rebalance.body_mass_g: the column is learned as a number"
    ):
        _penguins_ingest(tmp_path, {"rebalance": {"body_mass_g": {"3000": 0.5}}})


def test_seed_rows_are_completed_in_order_each_as_often_as_asked_keeping_what_they_give(
    tmp_path: Path,
) -> None:
    seeds = pa.table(
        {
            "island": ["Dream", None, "Biscoe", None, "Torgersen"],
            "body_mass_g": [None, 5000, None, None, 3500],
            "sex": ["female", "male", None, None, "female"],
        }
    )
    source = tmp_path / "seeds.csv"
    seeds.to_pandas().to_csv(source, index=False)
    generate = {"complete": {"uri": str(source), "rows_per_seed": 3}, "shards": 2, "batch_size": 4}
    root = _penguins_run(tmp_path, "vae", generate)
    done = pq.read_table(root / "data" / "run_date=2026-02-03")
    assert done.num_rows == 15
    for name in seeds.column_names:  # each seed row three times, in order, what it gives as it is
        for wanted, got in zip(
            np.repeat(seeds.column(name).to_pylist(), 3), done.column(name).to_pylist(), strict=True
        ):
            assert wanted is None or wanted == got, name
    metrics = pq.read_table(next(root.glob("quality/**/metrics.parquet"))).to_pandas()
    assert metrics.set_index("metric").loc["seed_rows_completed", "value"] == 5
    for bad, message in (
        (pa.table({"wingspan": [1.0]}), "the seed rows' column 'wingspan' is not the dataset's"),
        (
            pa.table({"island": ["Dream"], "body_mass_g": ["heavy"]}),
            "column 'body_mass_g' cannot be read as int64",
        ),
        (pa.table({"island": pa.array([], pa.string())}), "bad.parquet: the table has no rows"),
    ):
        pq.write_table(bad, tmp_path / "bad.parquet")
        complete = {"complete": {"uri": str(tmp_path / "bad.parquet")}}
        with pytest.raises(DatasetError, match=message):
            _penguins_ingest(tmp_path, complete)
    gan = tiny_job(
        "builtin://penguins", "gan", str(tmp_path / "o"), generate={"complete": {"uri": str(source)}}
    )
    with pytest.raises(ConfigError, match="the gan family cannot complete rows"):
        stages.ingest(Run(job=gan, run_date="2026-02-03"))
    with pytest.raises(ConfigError, match="complete: the seed rows say what is drawn; not with num_samples"):
        tiny_job(
            "builtin://penguins", "vae", "o", generate={"complete": {"uri": str(source)}, "num_samples": 5}
        )


def _penguins_ingest(tmp_path: Path, generate: dict) -> None:
    """Ingest of a tiny penguins VAE job with ``generate``: where a request the data refuses fails."""
    stages.ingest(
        Run(
            job=tiny_job("builtin://penguins", "vae", str(tmp_path / "o"), generate=generate),
            run_date="2026-02-03",
        )
    )


def _penguins_run(tmp_path: Path, family: str, generate: dict) -> Path:
    """A tiny penguins job with ``generate`` through the five stages; its output folder."""
    validate = {"max_memorised_share": 1.0}  # a table this small, two epochs: not what is tested
    job = tiny_job("builtin://penguins", family, str(tmp_path / "out"), generate=generate, validate=validate)
    run_stages(Run(job=job, run_date="2026-02-03"))
    return tmp_path / "out" / "tiny"


def test_a_fair_run_draws_the_target_alike_in_every_group_and_reports_the_gap_before_and_after(
    tmp_path: Path,
) -> None:
    generate = {
        "num_samples": 900,
        "batch_size": 300,
        "fairness": {"target": "species", "sensitive": ["island"]},
    }
    root = _penguins_run(tmp_path, "autoregressive", generate)
    out = pq.read_table(root / "data" / "run_date=2026-02-03").to_pandas()
    shares = out.groupby("island")["species"].value_counts(normalize=True).unstack(fill_value=0)
    assert (shares.max() - shares.min()).max() < 0.01  # Torgersen's penguins are not all Adelie here
    metrics = pq.read_table(next(root.glob("quality/**/metrics.parquet"))).to_pandas()
    gaps = metrics[metrics["scope"] == "fairness"].set_index("metric")["value"]
    assert (
        gaps["parity_gap_real"] > 0.7 and gaps["parity_gap"] < 0.01
    )  # real: Gentoo 74% on Biscoe, 0 elsewhere
    species = {"target": "species", "sensitive": ["body_mass_g"]}
    with pytest.raises(
        ConfigError, match="generate.fairness.sensitive.body_mass_g: the column is learned as a number"
    ):
        _penguins_ingest(tmp_path, {"fairness": species})


def test_dates_written_as_text_are_learned_and_published_as_dates_when_declared(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    days = [f"{1 + i % 28:02d}/{1 + i % 12:02d}/2025" for i in range(200)]
    amounts = [round(10 + (i * 7919 % 1000) / 37, 2) for i in range(200)]
    pa.csv.write_csv(pa.table({"ordered": days, "amount": amounts}), source)
    columns = {"ordered": {"type": "datetime", "format": "%d/%m/%Y"}}
    job = tiny_job(
        str(source),
        "autoregressive",
        str(tmp_path / "out"),
        dataset={"columns": columns},
        validate={"max_memorised_share": 1.0},
    )
    run_stages(Run(job=job, run_date="2026-02-03"))
    out = pq.read_table(tmp_path / "out" / "tiny" / "data" / "run_date=2026-02-03")
    assert out.schema.field("ordered").type == pa.date32()  # learned as dates, not as 200 strings
    assert all(day.year == 2025 for day in out.column("ordered").to_pylist())
    bad = tmp_path / "bad.csv"
    pa.csv.write_csv(pa.table({"ordered": [*days[:-1], "yesterday"], "amount": amounts}), bad)
    with pytest.raises(
        DatasetError, match=r"dataset.columns.ordered: 1 value\(s\) do not read as '%d/%m/%Y'"
    ):
        stages.ingest(
            Run(
                job=tiny_job(str(bad), "vae", str(tmp_path / "o"), dataset={"columns": columns}),
                run_date="2026-02-03",
            )
        )
    with pytest.raises(ConfigError, match="format is a strptime format"):
        tiny_job(
            str(source), "vae", "o", dataset={"columns": {"ordered": {"type": "category", "format": "%Y"}}}
        )


def test_imputed_columns_come_out_without_nulls_and_the_suite_expects_none(tmp_path: Path) -> None:
    root = _penguins_run(tmp_path, "diffusion", {"num_samples": 500, "impute": ["sex", "body_mass_g"]})
    out = pq.read_table(root / "data" / "run_date=2026-02-03")
    assert out.column("sex").null_count == out.column("body_mass_g").null_count == 0
    expectations = json.loads(next(root.glob("quality/**/expectations.json")).read_text())["results"][
        "expectations"
    ]
    non_null = [
        e
        for e in expectations
        if e["expectation_type"] == "expect_column_proportion_of_non_null_values_to_be_between"
        and e["kwargs"]["column"] == "sex"
    ]
    assert [e["kwargs"]["min_value"] for e in non_null] == [1.0] and all(e["success"] for e in non_null)
    for columns, message in ((["wingspan"], "no column 'wingspan'"),):
        with pytest.raises(ConfigError, match=message):
            _penguins_ingest(tmp_path, {"impute": columns})


def test_train_max_rows_trains_on_a_seeded_sample_and_the_manifest_says_so(tmp_path: Path) -> None:
    job = tiny_job(
        "builtin://penguins",
        "vae",
        str(tmp_path / "out"),
        train={"max_rows": 100},
        validate={"max_memorised_share": 1.0},
    )
    run = Run(job=job, run_date="2026-02-03")
    run_stages(run)
    (manifest,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "tiny" / "_runs").glob("*.json")]
    fit = manifest["model"]["fit"]
    assert fit["trained_rows"] == 100 and fit["training_rows"] == 276  # 344 rows, a fifth held out
    again = tiny_job("builtin://penguins", "vae", str(tmp_path / "out"), train={"max_rows": 200})
    dataset = stages.ingest(Run(job=again, run_date="2026-02-04"))
    assert stages.model_key(Run(job=again, run_date="2026-02-04"), dataset) != stages.model_key(run, dataset)


def test_sampled_rows_are_seeded_in_order_and_all_of_a_small_table() -> None:
    data = TabularData(pa.table({"n": list(range(1000))}), None)
    first, second = (sampled(data, 100, seed=7) for _ in range(2))
    values = first.table.column("n").to_pylist()
    assert values == second.table.column("n").to_pylist() and values == sorted(values) and len(values) == 100
    assert sampled(data, 100, seed=8).table.column("n").to_pylist() != values
    assert sampled(data, 5000, seed=7) is data and sampled(data, None, seed=7) is data
