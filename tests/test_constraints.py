"""Constraints (``generate.constraints``): every rule holds in every row whatever a model draws,
the real rows must follow them, conditions go through them, and the output is checked against them."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BASE_JOB as BASE
from conftest import run_stages, spec_error, tiny_job
from orders_data import RULES, orders, rules

from genai_pipeline import stages
from genai_pipeline.config import DatasetSpec, TrainSpec
from genai_pipeline.constraints import MAX_DRAWS, Constraints, CustomRule
from genai_pipeline.datasets import TabularData
from genai_pipeline.datasets.sources import read_dataset
from genai_pipeline.encoders.tabular import RowStream
from genai_pipeline.errors import ConfigError, DatasetError, QualityGateFailed
from genai_pipeline.models import model_class
from genai_pipeline.privacy.roles import ColumnRole
from genai_pipeline.quality.expectations import _context, empty_suite, job_suite, run_suite, table_frame
from genai_pipeline.runs import Run

CUSTOM = [
    {"kind": "custom", "rule": "orders_data:BusinessHours", "columns": ["ordered_at"]},
    {"kind": "custom", "rule": "orders_data:NoReturnsInParis", "columns": ["city", "status"]},
]


def replaced(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def fitted(table: pa.Table, items: list[dict] | None = None, min_rows: int = 5) -> Constraints:
    constraints = Constraints(rules(items))
    constraints.fit(table, {}, min_rows)
    return constraints


def hostile(model_table: pa.Table, seed: int = 0) -> pa.Table:
    """The model's table as the worst model would draw it: every column shuffled across rows and a
    tenth nulls; what a rule learns in place of a column (``__…``) spread far past its range and
    negated; categories replaced by the protection's token; the learned numbers anywhere in their
    real range (where every family draws them: the encoder decodes nothing outside it)."""
    rng = np.random.default_rng(seed)
    columns = []
    for name, column in zip(model_table.column_names, model_table.columns, strict=True):
        column = column.combine_chunks().take(pa.array(rng.permutation(len(column))))
        nulls = rng.random(len(column)) < 0.1
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            values = np.asarray(column.to_pylist(), dtype=float)
            if name.startswith("__"):
                values = values * rng.choice([-3.0, 0.5, 1.0, 4.0], len(values))
            else:
                values = rng.uniform(np.nanmin(values), np.nanmax(values), len(values))
            integral = pa.types.is_integer(column.type)
            values = np.rint(values).astype(column.type.to_pandas_dtype()) if integral else values
            column = pa.array(values, type=column.type, mask=nulls)
        elif pa.types.is_string(column.type):
            column = pc.if_else(pa.array(rng.random(len(column)) < 0.2), pa.scalar("_RARE_"), column)
        columns.append(column)
    return pa.table(columns, names=model_table.column_names)


def test_every_rule_holds_in_every_row_whatever_the_model_draws() -> None:
    real = orders()
    constraints = fitted(real, RULES + CUSTOM[:1])
    assert all(count == 0 for count in constraints.violations(real).values())
    model_table = constraints.forward(real)
    # what the model learns instead: distances, a share, one category of combinations, no total
    assert {"__gap__.shipped_on", "__gap__.delivered_on", "__share__.discount"} <= set(
        model_table.column_names
    )
    assert "__combination__.city.country" in model_table.column_names
    assert not {"total", "city", "country", "shipped_on"} & set(model_table.column_names)
    for seed in range(3):
        drawn = constraints.inverse(hostile(model_table, seed))
        assert drawn.schema.equals(real.schema)
        assert constraints.violations(drawn) == dict.fromkeys(constraints.violations(real), 0)
        # a model saved and loaded back enforces them alike
        again = Constraints.from_state(constraints.to_state()).inverse(hostile(model_table, seed))
        assert again.equals(drawn)
    # what the real rows are learned as comes back as they are (without protection: a rewritten
    # column is kept inside its protected range, as a learned one is)
    unprotected = fitted(real, RULES + CUSTOM[:1], min_rows=1)
    exact = unprotected.inverse(unprotected.forward(real))
    for name in ("ordered_at", "shipped_on", "delivered_on", "city", "country", "status", "quantity"):
        assert exact.column(name).equals(real.column(name)), name
    assert np.allclose(exact.column("total").to_numpy(), real.column("total").to_numpy(), atol=0.0051)


def test_a_rule_the_real_rows_break_fails_naming_it_and_counting_rows_never_showing_them() -> None:
    real = orders()
    early = pc.subtract(real.column("ordered_at"), pa.scalar(np.timedelta64(30 * 86_400 * 10**6, "us")))
    broken = replaced(
        real,
        "delivered_on",
        pc.if_else(pa.array(np.arange(600) < 3), early.cast(pa.date32()), real.column("delivered_on")),
    )
    with pytest.raises(
        DatasetError,
        match=r"^generate\.constraints\.1 \(inequality delivered_on >= shipped_on \+ 1 day\): "
        r"3 of the 600 real rows break it$",
    ):
        fitted(broken)
    wrong_total = replaced(real, "total", pc.add(real.column("total"), 0.02))
    with pytest.raises(
        DatasetError,
        match=r"generate\.constraints\.4 \(formula total = price \* quantity - discount\): 600 of",
    ):
        fitted(wrong_total)
    with pytest.raises(DatasetError, match="no combination of city, country is held by 1000 rows"):
        fitted(real, [RULES[3]], min_rows=1000)
    lost = replaced(
        real,
        "ordered_at",
        pc.if_else(
            pa.array(np.arange(600) < 2), pa.scalar(None, pa.timestamp("us")), real.column("ordered_at")
        ),
    )
    with pytest.raises(DatasetError, match="2 real row\\(s\\) have shipped_on but no ordered_at"):
        fitted(lost, [RULES[0]])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            [{"kind": "fixed_combinations", "columns": ["status", "city"]}, RULES[3]],
            "city is already learned another way by generate.constraints.0",
        ),
        (
            [
                {"kind": "formula", "column": "price", "expression": "total + discount"},
                {"kind": "formula", "column": "total", "expression": "price - discount"},
            ],
            "each wait for another's columns",
        ),
        ([{"kind": "positive", "columns": ["city"]}], "city is string, not a number, date or time"),
        (
            [{"kind": "inequality", "low": "price", "high": "shipped_on"}],
            "are not all numbers or all dates/times",
        ),
        (
            [{"kind": "inequality", "low": "price", "high": "total", "gap": "1 day"}],
            "give a number for a numeric column",
        ),
        (
            [{"kind": "inequality", "low": "shipped_on", "high": "delivered_on", "gap": 1}],
            "give a duration such as '1 day'",
        ),
        (
            [{"kind": "range", "column": "ordered_at", "low": "yesterday"}],
            "'yesterday' is neither a column nor a timestamp",
        ),
        ([{"kind": "formula", "column": "total", "expression": "price * qty"}], "no column 'qty'"),
        ([{"kind": "one_of", "column": "quantity", "values": ["many"]}], "values: not all int32 values"),
        ([{"kind": "unique", "column": "city"}], "repeat"),
        (
            [{"kind": "unique", "columns": ["order_id", "city"]}],
            "one of order_id, city must be an identifier",
        ),
        (
            [{"kind": "unique", "columns": ["city", "status"]}],
            r"\d+ real row\(s\) repeat a value of city, status",
        ),
        (
            [{"kind": "fixed_combinations", "columns": ["city", "ordered_at"]}],
            r"ordered_at is a number of \d+ values, learned as one; declare it a category",
        ),
        (
            [{"kind": "fixed_combinations", "columns": ["city", "price"]}],
            "price is double: combinations are of",
        ),
        (
            [{"kind": "custom", "rule": "subprocess:Popen", "columns": ["city"]}],
            "is not a genai_pipeline.constraints.CustomRule",
        ),
        (
            [{"kind": "custom", "rule": "no_such_module:Rule", "columns": ["city"]}],
            "cannot import no_such_module:Rule",
        ),
        (
            [
                {
                    "kind": "custom",
                    "rule": "orders_data:NoReturnsInParis",
                    "columns": ["city", "status"],
                    "options": {"town": "x"},
                }
            ],
            "refused them",
        ),
    ],
)
def test_rules_that_cannot_work_are_refused_naming_the_rule(items: list[dict], message: str) -> None:
    with pytest.raises((ConfigError, DatasetError), match=message):
        fitted(orders(), items)


def test_conditions_on_rewritten_columns_go_through_the_rules() -> None:
    constraints = fitted(orders())
    # a city brings its country; both become the one category the model learned
    assert constraints.model_conditions({"city": "Berlin"}) == {
        "__combination__.city.country": '["Berlin", "DE"]'
    }
    # a ship date alone is drawn from an order's date: it needs one, and becomes a distance
    with pytest.raises(ConfigError, match=r"generate\.conditions\.shipped_on: .* give ordered_at too"):
        constraints.model_conditions({"shipped_on": "2024-03-02"})
    asked = constraints.model_conditions({"ordered_at": "2024-03-01 10:00:00", "shipped_on": "2024-03-02"})
    assert asked["__gap__.shipped_on"] == 14 * 3600 * 10**6  # to midnight, in µs
    with pytest.raises(ConfigError, match="the values break generate.constraints.0"):
        constraints.model_conditions({"ordered_at": "2024-03-02 10:00:00", "shipped_on": "2024-03-02"})
    with pytest.raises(ConfigError, match=r"generate\.conditions\.country: 2 combinations .* give city too"):
        constraints.model_conditions({"country": "FR"})
    with pytest.raises(
        ConfigError, match="give price, discount, quantity too|give discount, price, quantity too"
    ):
        constraints.model_conditions({"total": 10.0})


def test_dates_meet_timestamps_at_midnight_and_gaps_are_whole_units() -> None:
    table = pa.table(
        {
            "at": pa.array(np.array(["2024-01-01T10:00", "2024-01-01T22:30"], dtype="datetime64[us]")),
            "on": pa.array(np.array(["2024-01-02"] * 2, dtype="datetime64[D]"), pa.date32()),
        }
    )
    assert fitted(table, [{"kind": "inequality", "low": "at", "high": "on", "strict": True}], 1)
    with pytest.raises(DatasetError, match="2 of the 2 real rows break it"):
        fitted(table, [{"kind": "inequality", "low": "at", "high": "on", "gap": "1 day"}], 1)
    constraints = fitted(table, [{"kind": "inequality", "low": "at", "high": "on", "gap": "1h"}], 1)
    model = constraints.forward(table)
    drawn = constraints.inverse(model.set_column(1, "__gap__.on", pa.array([-5, 0], pa.int64())))
    assert drawn.column("on").to_pylist() == [dt.date(2024, 1, 2)] * 2
    assert constraints.violations(drawn) == {"inequality on >= at + 1h": 0}


class RealOrderTimesOnly(CustomRule):
    """Valid on the real rows, rarely on a model's: an order time must be one of the real ones."""

    times: set = set()

    def is_valid(self, table: pa.Table) -> list[bool]:
        return [value in self.times for value in table.column("ordered_at").to_pylist()]


def _model(family: str, table: pa.Table, items: list[dict]) -> object:
    cls = model_class("tabular", family)
    model = cls(cls.Config(), device=torch.device("cpu"))
    model.fit(
        TabularData(table, constraints=rules(items)),
        TrainSpec(epochs=2, batch_size=64, device="cpu", seed=1),
        None,
    )
    return model


def test_a_rule_without_a_repair_has_refused_rows_drawn_again_counted_and_bounded() -> None:
    real = orders()
    model = _model("vae", real, RULES + CUSTOM)
    tally: dict[str, int] = {}
    drawn = pa.concat_tables(model.sample(900, conditions=None, seed=2, batch_size=300, tally=tally))
    assert drawn.num_rows == 900 == tally["kept"] and tally["drawn"] > 900
    assert all(count == 0 for count in model.constraints.violations(drawn).values())
    assert (
        "returned"
        not in pc.filter(drawn.column("status"), pc.equal(drawn.column("city"), "Paris")).to_pylist()
    )
    RealOrderTimesOnly.times = set(real.column("ordered_at").to_pylist())
    strict = _model(
        "vae",
        real,
        [{"kind": "custom", "rule": "test_constraints:RealOrderTimesOnly", "columns": ["ordered_at"]}],
    )
    with pytest.raises(DatasetError, match=rf"of \d+ rows drawn follow it, fewer than 1 in {MAX_DRAWS}"):
        list(strict.sample(200, conditions=None, seed=2, batch_size=200))


def test_a_private_model_takes_nothing_of_the_real_rows_into_its_rules() -> None:
    with pytest.raises(ConfigError, match="fixed_combinations is not for train.privacy"):
        Constraints(rules([RULES[3]])).fit(orders(), {}, 5, private=True)
    with pytest.raises(ConfigError, match="decimals: give them with train.privacy"):
        Constraints(rules([RULES[4]])).fit(orders(), {}, 5, private=True)


def test_each_rule_is_an_expectation_the_output_passes_and_a_broken_row_fails() -> None:
    real = orders()
    constraints = fitted(real, RULES + CUSTOM)
    _context()
    suite = job_suite(
        empty_suite(type("Named", (), {"name": "orders"})()),
        tiny_job("builtin://penguins", "vae", "out").validate_,
        {},
        "tabular",
        constraints=constraints.checks(),
    )
    assert len(suite.expectations) == len(RULES) + len(CUSTOM)
    assert not run_suite(suite, table_frame(real)).failures
    late = replaced(
        real,
        "shipped_on",
        pc.if_else(
            pa.array(np.arange(600) == 7),
            pa.scalar(dt.date(2023, 1, 1), pa.date32()),
            real.column("shipped_on"),
        ),
    )
    paris = replaced(
        real,
        "status",
        pc.if_else(pc.equal(real.column("city"), "Paris"), pa.scalar("returned"), real.column("status")),
    )
    (failure,) = run_suite(suite, table_frame(late)).failures
    assert (
        failure.startswith("expect_rows_to_follow_constraint(shipped_on,ordered_at)")
        and "1 unexpected" in failure
    )
    (failure,) = run_suite(suite, table_frame(paris)).failures
    assert failure.startswith("expect_rows_to_follow_constraint(city,status)")


class BrokenRepair(CustomRule):
    """A repair that breaks what it should fix: what the adherence gate is there for."""

    def is_valid(self, table: pa.Table) -> list[bool]:
        return [value is None or value >= 1 for value in table.column("quantity").to_pylist()]

    def reverse_transform(self, table: pa.Table) -> pa.Table:
        return table.set_column(0, "quantity", pc.multiply(table.column("quantity"), 0))


def test_adherence_over_every_row_is_gated_and_a_broken_rule_publishes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "orders.parquet"
    pq.write_table(orders(), source)
    broken = [{"kind": "custom", "rule": "test_constraints:BrokenRepair", "columns": ["quantity"]}]
    generate = {"num_samples": 400, "batch_size": 128, "shards": 2, "constraints": broken}
    job = tiny_job(
        str(source),
        "autoregressive",
        str(tmp_path / "out"),
        generate=generate,
        validate={"max_memorised_share": 1.0},
    )
    with pytest.raises(
        QualityGateFailed,
        match=r"constraint_adherence\(custom test_constraints:BrokenRepair\(quantity\)\)=0\.000 < 1\.0",
    ):
        run_stages(Run(job=job, run_date="2026-02-03"))
    assert not list((tmp_path / "out" / "tiny").glob("data/**/*.parquet"))


def test_a_rules_options_are_published_so_a_secret_is_refused_and_never_echoed() -> None:
    rule = {"kind": "custom", "rule": "orders_data:NoReturnsInParis", "columns": ["city", "status"]}
    message = spec_error(
        {**BASE, "generate": {"constraints": [{**rule, "options": {"api_token": "s3cr3t"}}]}}
    )
    assert "options: api_token: options are published with the suite" in message and "s3cr3t" not in message


def test_a_shard_found_staged_is_read_back_and_checked_again(tmp_path: Path) -> None:
    source = tmp_path / "orders.parquet"
    pq.write_table(orders(), source)
    generate = {"num_samples": 300, "batch_size": 100, "shards": 2, "constraints": RULES}
    run = Run(
        job=tiny_job(str(source), "vae", str(tmp_path / "out"), generate=generate), run_date="2026-02-03"
    )
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    first = stages.generate_shard(run, model=model, dataset=dataset, shard=1)
    again = stages.generate_shard(run, model=model, dataset=dataset, shard=1)  # a retried task
    assert again.seconds == 0.0 and again.num_samples == first.num_samples == 150
    assert again.violations == first.violations == dict.fromkeys(first.violations, 0) and len(
        first.violations
    ) == len(RULES)


def test_rules_hold_no_state_while_shards_share_them_in_threads() -> None:
    # shards running as threads share one model's rules: a check run beside a draw changed nothing
    # of the rule (a formula's check once unset its rounding for a moment: totals came out unrounded)
    from concurrent.futures import ThreadPoolExecutor

    real = orders(2000)
    constraints = fitted(real, RULES)
    model_table = constraints.forward(real)

    def draw(seed: int) -> bool:
        drawn = constraints.inverse(hostile(model_table, seed))
        cents = np.asarray(drawn.column("total").drop_null().to_pylist()) * 100
        return bool(np.all(np.abs(cents - np.rint(cents)) < 1e-6))

    def check(seed: int) -> int:
        return sum(constraints.violations(real).values())

    with ThreadPoolExecutor(4) as pool:
        draws = [pool.submit(draw, seed) for seed in range(40)]
        checks = [pool.submit(check, seed) for seed in range(200)]
        assert all(future.result() for future in draws) and not any(future.result() for future in checks)


def test_seed_rows_are_completed_under_the_rules_a_row_that_breaks_one_drawn_again() -> None:
    real = orders()
    model = _model("vae", real, RULES + CUSTOM)
    seeds = pa.table(
        {
            "ordered_at": pa.array(
                [real.column("ordered_at")[3].as_py(), None, None] * 20, pa.timestamp("us")
            ),
            "price": [12.5, None, 80.0] * 20,
            "quantity": pa.array([None, 2, 5] * 20, pa.int32()),
            "status": [None, "returned", "returned"] * 20,  # not in Paris: a custom rule's redraw
        }
    )
    done = model.fill_in(seeds, seed=4, rows=RowStream(4, 0, 60))
    assert done.num_rows == 60
    assert all(count == 0 for count in model.constraints.violations(done).values())
    for name in seeds.column_names:
        for wanted, got in zip(seeds.column(name).to_pylist(), done.column(name).to_pylist(), strict=True):
            assert wanted is None or wanted == got, name
    total = pc.subtract(pc.multiply(done.column("price"), done.column("quantity")), done.column("discount"))
    assert pc.all(pc.less(pc.abs(pc.subtract(total, done.column("total"))), 0.006)).as_py()


def _seeded_orders(tmp_path: Path, seeds: pa.Table, **generate: object) -> Run:
    pq.write_table(orders(), tmp_path / "orders.parquet")
    pq.write_table(seeds, tmp_path / "seeds.parquet")
    spec = {"complete": {"uri": str(tmp_path / "seeds.parquet"), "rows_per_seed": 4}, "constraints": RULES}
    job = tiny_job(
        str(tmp_path / "orders.parquet"),
        "autoregressive",
        str(tmp_path / "out"),
        generate={**spec, **generate},
        validate={"max_memorised_share": 1.0},
    )
    return Run(job=job, run_date="2026-02-03")


def test_a_seeded_job_with_rules_and_conditions_publishes_rows_that_follow_them(tmp_path: Path) -> None:
    seeds = pa.table({"price": [20.0, None, 55.5], "quantity": pa.array([None, 3, 1], pa.int32())})
    run_stages(_seeded_orders(tmp_path, seeds, conditions={"status": "shipped"}))
    done = pq.read_table(tmp_path / "out" / "tiny" / "data" / "run_date=2026-02-03")
    assert done.num_rows == 12 and set(done.column("status").to_pylist()) == {"shipped"}
    assert done.column("price").to_pylist()[::4] == [20.0, done.column("price")[4].as_py(), 55.5]
    assert fitted(orders()).violations(done) == dict.fromkeys(fitted(orders()).violations(done), 0)


@pytest.mark.parametrize(
    ("seeds", "generate", "message"),
    [
        (
            pa.table({"total": [10.0]}),
            {},
            "the seed rows' column total is drawn by generate.constraints.4 (formula total",
        ),
        (
            pa.table({"quantity": pa.array([2, 0, 0], pa.int32())}),
            {},
            "2 seed row(s) break generate.constraints.6 (positive quantity > 0)",
        ),
        (
            pa.table({"status": ["shipped", "new", None]}),
            {"conditions": {"status": "shipped"}},
            "1 seed row(s) give status other than generate.conditions.status",
        ),
    ],
)
def test_seed_rows_that_break_a_rule_or_a_condition_are_refused_at_ingest(
    tmp_path: Path, seeds: pa.Table, generate: dict, message: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        stages.ingest(_seeded_orders(tmp_path, seeds, **generate))


@pytest.mark.parametrize("family", ["vae", "gan", "diffusion", "autoregressive"])
def test_a_combination_with_the_label_keeps_the_label_the_models_condition(family: str) -> None:
    penguins = read_dataset(DatasetSpec(uri="builtin://penguins"))
    assert isinstance(penguins, TabularData)
    cls = model_class("tabular", family)
    model = cls(cls.Config(), device=torch.device("cpu"))
    items = [{"kind": "fixed_combinations", "columns": ["island", "species"]}]
    model.fit(
        replace(penguins, constraints=rules(items)),
        TrainSpec(epochs=2, batch_size=64, device="cpu", seed=1),
        None,
    )
    real = {(i, s) for i, s in zip(*(penguins.table.column(c).to_pylist() for c in ("island", "species")))}
    for conditions in (None, {"species": "Gentoo"}, {"island": "Dream"}):
        drawn = pa.concat_tables(model.sample(400, conditions=conditions, seed=5, batch_size=200))
        pairs = set(zip(*(drawn.column(c).to_pylist() for c in ("island", "species")), strict=True))
        assert pairs <= real, (conditions, pairs - real)
        for name, value in (conditions or {}).items():
            assert set(drawn.column(name).to_pylist()) == {value}
    assert {i for i, _ in pairs} == {"Dream"} and {s for _, s in pairs} <= {"Adelie", "Chinstrap"}


def test_columns_unique_together_hold_through_an_identifier_and_a_repeat_is_found() -> None:
    real = orders()
    ids = {"order_id": ColumnRole("id", declared=True)}
    rule = Constraints(rules([{"kind": "unique", "columns": ["order_id", "city"]}]))
    rule.fit(real, ids, 5)  # the identifier's real values do not repeat: every pair is unique
    pairs = pa.table({"order_id": ["a", "a", "b", None, None], "city": ["x", "x", "x", "x", "x"]})
    assert rule.rules[0].holds(pairs).tolist() == [False, False, True, True, True]  # a null repeats none
    assert rule.violations(pairs) == {"unique order_id, city": 2}
    assert rule.rules[0].holds(pairs.slice(0, 0)).tolist() == []
    repeated = pa.table({"order_id": ["O-1"] * 5, "city": list("abcde")})  # unique pairs, a repeating id
    with pytest.raises(DatasetError, match="one of order_id, city must be an identifier whose real values"):
        Constraints(rules([{"kind": "unique", "columns": ["order_id", "city"]}])).fit(repeated, ids, 5)
    for bad in ({"kind": "unique"}, {"kind": "unique", "column": "a", "columns": ["a", "b"]}):
        assert "give column (one) or columns (several)" in spec_error(
            {**BASE, "generate": {"constraints": [bad]}}
        )


def _streamed_fit(
    table: pa.Table, items: list[dict], sample_rows: int, *, streamed: bool = True
) -> Constraints:
    """The rules fitted on ``table``'s first ``sample_rows`` rows, as on a table streamed from row
    groups of 100 rows (``train.in_memory_rows``): with every row group tallied and checked
    (``streamed``), or on the sample alone."""
    constraints = Constraints(rules(items))
    groups = [table.slice(start, 100) for start in range(0, table.num_rows, 100)]
    every = (lambda: iter(groups)) if streamed else None
    constraints.fit(table.slice(0, sample_rows), {"id": ColumnRole("id")}, 5, every=every)
    return constraints


def test_a_streamed_tables_rules_learn_and_check_every_row_not_only_the_samples() -> None:
    """Issue 19: a table too large for memory is fitted on a sample, and what a sample misses is
    taken from a pass over every row group: each row outside the sample below would otherwise be
    a combination refused, a decimal lost, a repeat or a broken row unseen."""
    rows = 600
    city = ["Lyon", "Nice"] * (rows // 2)
    status = ["open", "closed"] * (rows // 2)
    city[500:520], status[500:520] = ["Paris"] * 20, ["open"] * 20  # held by 20 rows, none sampled
    price = np.round(np.linspace(1, 50, rows), 1)
    price[550] = 12.25  # the only price of two decimals
    table = pa.table(
        {
            "id": [f"o{i}" for i in range(rows)],
            "city": city,
            "status": status,
            "price": price,
            "total": price + 1,
            "low": np.zeros(rows),
        }
    )
    items = [
        {"kind": "fixed_combinations", "columns": ["city", "status"]},
        {"kind": "formula", "column": "total", "expression": "price + 1"},
        {"kind": "unique", "column": "id"},
        {"kind": "inequality", "low": "low", "high": "price"},
    ]
    sampled = _streamed_fit(table, items, 400, streamed=False)
    streamed = _streamed_fit(table, items, 400)
    assert ["Paris", "open"] not in sampled.rules[0].combinations  # type: ignore[attr-defined]
    assert ["Paris", "open"] in streamed.rules[0].combinations  # type: ignore[attr-defined]
    assert (sampled.rules[1].decimals, streamed.rules[1].decimals) == (1, 2)  # type: ignore[attr-defined]
    assert not streamed.rules[2].tallied  # type: ignore[attr-defined]  # a hash per row: dropped
    assert streamed.violations(table) == dict.fromkeys(streamed.violations(table), 0)

    repeated = replaced(table, "id", pa.array([*table.column("id").to_pylist()[:599], "o0"]))
    with pytest.raises(DatasetError, match=r"constraints\.2: 2 real row\(s\) repeat a value of id$"):
        _streamed_fit(repeated, items, 400)
    negative = replaced(table, "price", pa.array(np.where(np.arange(rows) == 590, -1.0, price)))
    negative = replaced(negative, "total", pa.array(np.where(np.arange(rows) == 590, 0.0, price + 1)))
    with pytest.raises(DatasetError, match=r"inequality.*: 1 of the 600 real rows break it$"):
        _streamed_fit(negative, items, 400)
    lost = replaced(table, "low", pa.array(np.where(np.arange(rows) == 580, np.nan, 0.0), from_pandas=True))
    with pytest.raises(DatasetError, match=r"1 real row\(s\) have price but no low"):
        _streamed_fit(lost, items, 400)
    # counting the rows that break a rule (seed rows are checked so) is not that check
    assert streamed.rules[3].broken(lost) == 0
