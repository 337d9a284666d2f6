"""A job of several related tables end to end through Prefect: to a local folder and to S3, read
back and joined as an analyst would, and what a failed gate, a schema change and a failed data
switch leave behind."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import S3_OPTIONS
from relational_data import TABLES, shop_job, shop_schema, shop_tables, write_tables

from genai_pipeline import stages
from genai_pipeline.constraints import CustomRule
from genai_pipeline.errors import ConfigError, DatasetError, QualityGateFailed, StorageError
from genai_pipeline.runs import RUN_ID_KEY, Run
from genai_pipeline.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
RUN_DATE = "2026-01-02"
KEYS = {"customers": "customer_id", "orders": "order_id", "items": "item_id"}


def _run(job: Any, run_date: str = RUN_DATE) -> dict[str, Any]:
    from flows.synthesize import synthesize

    return synthesize(job=job, run_date=run_date)


def _check_output(read: Any, real: dict[str, pa.Table], manifest: dict[str, Any], run_id: str) -> None:
    """What an analyst relies on: one file per table, named by the manifest and by its footer;
    fresh unique keys; every foreign key a row of the synthetic parent (the joins of the input
    work on the output); children in order within their parent."""
    files = {entry["path"] for entry in manifest["files"]}
    tables = {}
    for name in TABLES:
        path = f"data/{name}/run_date={RUN_DATE}/part-00000.parquet"
        assert path in files
        parquet = read(path)
        assert parquet.schema_arrow.metadata[RUN_ID_KEY].decode() == run_id
        tables[name] = parquet.read()
        assert tables[name].schema.equals(real[name].schema), name
        key = tables[name].column(KEYS[name])
        assert pc.count_distinct(key).as_py() == len(key) and key.null_count == 0
        assert not set(key.to_pylist()) & set(real[name].column(KEYS[name]).to_pylist()), "a real key"
    assert manifest["generated"]["tables"] == {name: tables[name].num_rows for name in TABLES}
    assert tables["items"].num_rows > tables["orders"].num_rows > tables["customers"].num_rows > 0
    for child, parent in (("orders", "customers"), ("items", "orders")):
        joined = tables[child].join(tables[parent], KEYS[parent], join_type="left anti")
        assert joined.num_rows == 0, f"{child} rows whose {KEYS[parent]} is no {parent} row"
    orders = tables["orders"].to_pandas()
    assert (
        orders.groupby("customer_id", sort=False)["order_ts"].apply(lambda s: s.is_monotonic_increasing).all()
    )
    metrics = {(m["scope"], m["column"], m["metric"]): m for m in manifest["quality"]["metrics"]}
    integrity = metrics[("relation", "orders.customer_id → customers", "referential_integrity")]
    assert integrity["value"] == 1.0 and integrity["threshold"] == 1.0
    assert metrics[("relation", "orders.customer_id → customers", "sequence_order")]["value"] == 1.0
    assert {m["table"] for m in manifest["quality"]["metrics"] if m["scope"] == "table"} == set(TABLES)
    for child in ("orders.customer_id → customers", "items.order_id → orders"):  # privacy on joined rows
        assert metrics[("relation", child, "memorised_share")]["threshold"] is not None
        assert ("relation", child, "dcr_share") in metrics


def test_three_tables_publish_to_a_local_folder_and_join_as_the_input_does(tmp_path: Path) -> None:
    uris = write_tables(shop_tables(), tmp_path / "input")
    real = {name: pq.read_table(uri) for name, uri in uris.items()}
    result = _run(shop_job(uris, str(tmp_path / "out")))
    root = tmp_path / "out" / "shop"
    manifest = json.loads((root / "_runs" / f"{result['run_id']}.json").read_text())
    assert manifest["status"] == "published" and result["data_url"] == str(root / "data")
    _check_output(lambda rel: pq.ParquetFile(root / rel), real, manifest, result["run_id"])
    report = Path(result["report_url"]).read_text()
    assert all(f"Table {name}" in report for name in TABLES) and "Relations between the tables" in report
    assert not [p for p in (root / "_staging").rglob("*") if p.is_file()]
    published = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    for name in TABLES:  # no real key reaches anything published: data, suites, report, manifest
        for value in real[name].column(KEYS[name]).to_pylist()[:50]:
            assert f'"{value}"'.encode() not in published or isinstance(value, int)


def test_three_tables_publish_to_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem(key=s3_env["key"], secret=s3_env["secret"], endpoint_url=s3_env["endpoint_url"])
    local = write_tables(shop_tables(seed=1), tmp_path / "input")
    real = {name: pq.read_table(path) for name, path in local.items()}
    uris = {}
    for name, path in local.items():
        uris[name] = f"s3://{s3_env['bucket']}/input/{name}.parquet"
        fs.put(path, uris[name])
    output = f"s3://{s3_env['bucket']}/nightly"
    job = shop_job(
        uris,
        output,
        dataset={"storage_options": S3_OPTIONS},
        export={
            "output": output,
            "workspace": f"s3://{s3_env['bucket']}/private",
            "storage_options": S3_OPTIONS,
        },
    )
    result = _run(job)
    root = f"{s3_env['bucket']}/nightly/shop"
    manifest = json.loads(fs.cat(f"{root}/_runs/{result['run_id']}.json"))
    assert manifest["status"] == "published"
    _check_output(lambda rel: pq.ParquetFile(fs.open(f"{root}/{rel}")), real, manifest, result["run_id"])
    assert s3_env["secret"] not in json.dumps(manifest)


def test_a_failed_gate_on_one_table_publishes_no_table(tmp_path: Path) -> None:
    real = shop_tables()
    job = shop_job(
        write_tables(real, tmp_path / "input"),
        str(tmp_path / "out"),
        validate={"expectations": []},
        train={"epochs": 1},
    )
    job = job.model_copy(update={"validate_": job.validate_.model_copy(update={"min_column_shapes": 0.999})})
    with pytest.raises(QualityGateFailed, match=r"items\.column_shapes"):
        _run(job)
    root = tmp_path / "out" / "shop"
    assert not (root / "data").exists()
    (manifest,) = [json.loads(p.read_text()) for p in (root / "_runs").glob("*.json")]
    assert manifest["status"] == "failed"


def test_tables_as_the_warehouse_has_them_a_column_left_out_and_one_named_like_the_partition(
    tmp_path: Path,
) -> None:
    real = shop_tables()
    real["customers"] = real["customers"].append_column("run_date", pa.array(["2025-01-01"] * 150))
    real["orders"] = real["orders"].append_column("memo", pa.array(["call first"] * real["orders"].num_rows))
    uris = write_tables(real, tmp_path / "input")
    tables = shop_schema(uris)
    tables["orders"]["columns"] = {"memo": {"skip": True}}
    with pytest.raises(
        DatasetError, match=r"dataset.tables.customers: column 'run_date' .*export.partition_key"
    ):
        stages.ingest(
            Run(job=shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables}), run_date=RUN_DATE)
        )
    job = shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables}, export={"partition_key": "day"})
    ref = stages.ingest(Run(job=job, run_date=RUN_DATE))
    columns = {
        name: [c["name"] for c in table.schema["columns"]] for name, table in (ref.tables or {}).items()
    }
    assert "run_date" in columns["customers"] and "memo" not in columns["orders"]
    tables["items"]["columns"] = {"gift_wrap": {"skip": True}}  # not a column of items
    job = shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables}, export={"partition_key": "day"})
    with pytest.raises(DatasetError, match=r"dataset.tables.items.columns.gift_wrap: no such column to skip"):
        stages.ingest(Run(job=job, run_date=RUN_DATE))


def test_a_table_column_renamed_for_the_job_is_published_under_its_own_name(tmp_path: Path) -> None:
    real = shop_tables()
    uris = write_tables(real, tmp_path / "input")
    tables = shop_schema(uris)
    tables["orders"]["columns"] = {"amount": {"rename": "amount_eur"}, "channel": {"rename": "sold_via"}}
    job = shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables}, train={"epochs": 2})
    run = Run(job=job, run_date=RUN_DATE)
    dataset = stages.ingest(run)
    assert {"amount_eur", "sold_via"} <= {
        c["name"] for c in (dataset.tables or {})["orders"].schema["columns"]
    }
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    verdict = stages.validate(run, dataset=dataset, generated=generated, model=model)
    assert not [f for f in verdict.failures if "amount" in f or "sold_via" in f], verdict.failures
    published = pq.read_table(tmp_path / "out" / "shop" / run.staged(run.table_file("orders")))
    assert published.column_names == real["orders"].column_names
    tables["orders"]["columns"] = {"order_ts": {"rename": "ts"}}
    with pytest.raises(ConfigError, match="columns.order_ts: order_by and entity are named as the data"):
        shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables})


class Placed(CustomRule):
    """Every order has a time: a rule without a repair."""

    def is_valid(self, table: pa.Table) -> np.ndarray:
        return table.column("order_ts").is_valid().to_numpy(zero_copy_only=False)


def _ruled_shop(folder: Path) -> tuple[dict[str, pa.Table], dict[str, str]]:
    """The shop with what its rules are about: orders shipped 1–5 days after they were placed,
    a discount below the amount."""
    real = shop_tables()
    orders = real["orders"]
    rng = np.random.default_rng(1)
    days = rng.integers(1, 6, orders.num_rows).astype("timedelta64[D]")
    shipped = orders.column("order_ts").to_numpy() + days
    discount = np.round(orders.column("amount").to_numpy() * rng.uniform(0, 0.3, orders.num_rows), 2)
    real["orders"] = orders.append_column("shipped_ts", pa.array(shipped)).append_column(
        "discount", pa.array(discount)
    )
    return real, write_tables(real, folder)


SHOP_RULES = {
    "orders": [
        {"kind": "inequality", "low": "order_ts", "high": "shipped_ts", "strict": True},
        {"kind": "range", "column": "discount", "low": 0, "high": "amount"},
        {"kind": "one_of", "column": "channel", "values": ["web", "store"]},
    ],
    "customers": [{"kind": "range", "column": "age", "low": 18, "high": 79}],
    "items": [{"kind": "positive", "columns": ["quantity"], "strict": True}],
}


def test_each_table_follows_its_own_rules_and_they_are_checked_and_gated(tmp_path: Path) -> None:
    real, uris = _ruled_shop(tmp_path / "input")
    tables = shop_schema(uris)
    for name, rules in SHOP_RULES.items():
        tables[name]["constraints"] = rules
    result = _run(shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables}, train={"epochs": 4}))
    root = tmp_path / "out" / "shop"
    orders = pq.read_table(root / "data" / "orders").to_pandas()
    assert (orders["shipped_ts"] > orders["order_ts"]).all()  # after the order, which is built in order
    assert ((orders["discount"] >= 0) & (orders["discount"] <= orders["amount"])).all()
    assert (
        set(orders["channel"]) <= {"web", "store"}
        and list(orders.columns)[:5] == real["orders"].column_names[:5]
    )
    customers = pq.read_table(root / "data" / "customers").to_pandas()
    assert customers["age"].between(18, 79).all()
    assert (pq.read_table(root / "data" / "items").to_pandas()["quantity"] > 0).all()
    quality = root / "quality" / f"run_date={RUN_DATE}" / f"run={result['run_id']}"
    metrics = pq.read_table(quality / "metrics.parquet").to_pandas()
    adherence = metrics[metrics["metric"] == "constraint_adherence"]
    assert sorted(adherence["table"]) == sorted(n for n, rules in SHOP_RULES.items() for _ in rules)
    assert (adherence["value"] == 1.0).all() and adherence["passed"].all()
    per_table = json.loads((quality / "expectations.json").read_text())
    for name, rules in SHOP_RULES.items():
        results = per_table[name]["results"]["expectations"]
        checked = [r for r in results if r["expectation_type"].endswith("_to_follow_constraint")]
        assert len(checked) == len(rules) and all(r["success"] for r in checked), name


def test_a_tables_rules_are_part_of_its_models_key(tmp_path: Path) -> None:
    # a cached model learned the tables as other rules rewrote them: it must not be reused
    _, uris = _ruled_shop(tmp_path / "input")
    keys = []
    for rules in ([], SHOP_RULES["orders"]):
        tables = shop_schema(uris)
        tables["orders"]["constraints"] = rules
        run = Run(job=shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables}), run_date=RUN_DATE)
        keys.append(stages.model_key(run, stages.ingest(run)))
    assert keys[0] != keys[1]


@pytest.mark.parametrize(
    ("table", "rule", "message"),
    [
        (
            "orders",
            {"kind": "one_of", "column": "customer_id", "values": ["C00001"]},
            "dataset.tables.orders.constraints.0: customer_id is a key",
        ),
        (
            "orders",
            {"kind": "inequality", "low": "shipped_ts", "high": "order_ts"},
            "order_ts is order_by, built in order: a rule may read it, not rewrite it",
        ),
        (
            "orders",
            {"kind": "custom", "rule": "test_flow_relational:Placed", "columns": ["order_ts"]},
            "a table of several has no row drawn again",
        ),
        ("customers", {"kind": "range", "column": "age", "low": 30}, "rows break it"),
    ],
)
def test_a_table_rule_that_cannot_work_fails_at_ingest_naming_it(
    tmp_path: Path, table: str, rule: dict[str, Any], message: str
) -> None:
    _, uris = _ruled_shop(tmp_path / "input")
    tables = shop_schema(uris)
    tables[table]["constraints"] = [rule]
    job = shop_job(uris, str(tmp_path / "out"), dataset={"tables": tables})
    with pytest.raises((ConfigError, DatasetError), match=re.escape(message)):
        stages.ingest(Run(job=job, run_date=RUN_DATE))


def test_a_changed_table_fails_the_next_run_naming_it(tmp_path: Path) -> None:
    real = shop_tables()
    uris = write_tables(real, tmp_path / "input")
    job = shop_job(uris, str(tmp_path / "out"))
    _run(job)
    pq.write_table(real["orders"].drop_columns(["channel"]), uris["orders"])
    with pytest.raises(DatasetError, match=r"orders: column 'channel' \(string\) removed"):
        _run(job, run_date="2026-01-03")


def test_a_data_switch_that_fails_midway_keeps_the_last_run_live_and_a_retry_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several tables cannot be swapped in one atomic step: the run's mark (the last table's file)
    goes last, alone, so while some tables are switched and it is not, the live run is still the
    one before (a reader who follows the manifest or the footers never mixes runs), and a retried
    export finishes the switch."""
    real = shop_tables()
    job = shop_job(write_tables(real, tmp_path / "input"), str(tmp_path / "out"))
    first = _run(job)
    run = Run(job=job, run_date=RUN_DATE)
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    verdict = stages.validate(run, dataset=dataset, generated=generated, model=model)
    moves: list[list[str]] = []
    original = Storage.move

    def failing_move(self: Storage, pairs: Any) -> None:
        pairs = list(pairs)
        moves.append([destination for _, destination in pairs])
        if any(destination == run.data_file for _, destination in pairs) and len(moves) < 10:
            raise StorageError("the endpoint went away")
        original(self, pairs)

    monkeypatch.setattr(Storage, "move", failing_move)
    with pytest.raises(StorageError):
        stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    assert [run.data_file] in moves and all(len(m) == 1 for m in moves if run.data_file in m)
    from genai_pipeline.publishing import live_run_id

    storage = run.storage()
    assert live_run_id(storage, run) == first["run_id"]
    moves.extend([[]] * 10)  # the endpoint is back
    published = stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    assert live_run_id(storage, run) == run.run_id == published.run_id
    for name in TABLES:
        footer = pq.ParquetFile(tmp_path / "out" / "shop" / run.table_file(name)).schema_arrow.metadata
        assert footer[RUN_ID_KEY].decode() == run.run_id
