"""Great Expectations suites derived from the real data, run on the synthetic output.

For tables: the ordered column list; per column its type, its range (numeric and temporal), its
category set (up to ``MAX_SET`` distinct values) and its null fraction within the gate's tolerance,
all read from the protected view of the real rows, so that no value fewer than ``min_rows`` rows
hold is named in a published suite; columns made fresh (identifiers, personal data) by their
uniqueness and format;
a label fixed by ``generate.conditions`` must be exactly that value. For images, a per-image stats
frame (label, height, width, channels, pixel range and mean) is checked for shape, channels, label
set, blank images and overall brightness. The job spec can add any GX expectation by name.

GX is imported here only, so the other stages do not pay for its slow import.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from genai_pipeline.columns import dense, is_categorical, is_numeric, value_type
from genai_pipeline.config import ExpectationSpec, ValidateSpec
from genai_pipeline.datasets.base import ImageData, TabularData
from genai_pipeline.errors import ConfigError

MAX_SET = 10_000
#: integer columns with at most this many distinct values are categories (as the encoder treats them)
DISCRETE_NUMBERS = 20


@functools.cache
def _context() -> Any:
    """An ephemeral GX context (writes nothing, calls no network) with one pandas asset."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # GX sets INFO on import
    import genai_pipeline.quality.constraint_check  # noqa: F401  registers expect_rows_to_follow_constraint

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _batch_definition() -> Any:
    context = _context()
    try:
        return context.data_sources.get("frames").get_asset("frame").get_batch_definition("whole")
    except (KeyError, LookupError, ValueError):
        asset = context.data_sources.add_pandas("frames").add_dataframe_asset("frame")
        return asset.add_batch_definition_whole_dataframe("whole")


def _gx_type_name(type_: pa.DataType) -> str | None:
    """The Python type name GX observes for values of an Arrow-backed pandas column."""
    checks = (
        (pa.types.is_integer, "int"),
        (pa.types.is_floating, "float"),
        (pa.types.is_decimal, "Decimal"),
        (pa.types.is_boolean, "bool"),
        (pa.types.is_date, "date"),
        (pa.types.is_timestamp, "datetime"),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "str"),
    )
    return next((name for check, name in checks if check(type_)), None)


def table_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow-typed pandas frame (no int→float surprises from nulls); dictionaries decoded."""
    columns = [
        column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for column in table.columns
    ]
    return pa.table(columns, names=table.column_names).to_pandas(types_mapper=pd.ArrowDtype)


@dataclass(frozen=True)
class FreshCheck:
    """What the suite checks of a column made fresh (identifiers, personal data): its share of
    nulls, whether values must be unique, and a pattern they match (None: any text, or numbers)."""

    null_share: float
    unique: bool
    pattern: str | None


def _tabular_expectations(
    data: TabularData,
    spec: ValidateSpec,
    fresh: Mapping[str, FreshCheck],
    schema: pa.Schema | None,
    private: bool,
    token: str | None,
    computed: frozenset[str] = frozenset(),
) -> list[Any]:
    """Expectations of every column of ``schema`` (default: the table's): columns made fresh
    (identifiers, personal data) by their null share, type, uniqueness and format; the others by
    the values of ``data``, the protected view of the real rows; those a constraint computes from
    others (``computed``: a ship date as an order's date plus a gap) without their real range, which
    they may pass where the rule says they are valid. ``private``: the model trains
    with differential privacy, whose text columns may come out as the protection ``token`` (whether
    a value was protected is not released) and whose numbers are drawn from noisy bins that may
    pass the real range (no numeric range or value set is expected then)."""
    import great_expectations as gx

    expect = gx.expectations
    table = data.table
    schema = schema or table.schema
    out: list[Any] = [
        expect.ExpectTableColumnsToMatchOrderedList(column_list=schema.names),
        expect.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for field in schema:
        if field.name in fresh:
            out += _fresh_expectations(field, fresh[field.name], spec)
            continue
        column = dense(table.column(field.name))
        type_ = column.type
        present = 1 - column.null_count / max(len(column), 1)
        out.append(_null_share_expectation(field.name, present, spec))
        if column.null_count == len(column):
            continue
        if (type_name := _gx_type_name(type_)) is not None:
            out.append(expect.ExpectColumnValuesToBeOfType(column=field.name, type_=type_name))
        fixed = not private and field.name not in computed
        if is_numeric(type_) and fixed:
            bounds = pc.min_max(column)
            out.append(
                expect.ExpectColumnValuesToBeBetween(
                    column=field.name, min_value=bounds["min"].as_py(), max_value=bounds["max"].as_py()
                )
            )
        values = pc.unique(column).drop_null().to_pylist()
        few_numbers = pa.types.is_integer(type_) and len(values) <= DISCRETE_NUMBERS and fixed
        if private and token is not None and is_categorical(type_) and not pa.types.is_boolean(type_):
            values += [token] if token not in values else []
        if (is_categorical(type_) and len(values) <= MAX_SET) or few_numbers:
            out.append(expect.ExpectColumnValuesToBeInSet(column=field.name, value_set=values))
    return out


def _null_share_expectation(name: str, present: float, spec: ValidateSpec) -> Any:
    import great_expectations as gx

    return gx.expectations.ExpectColumnProportionOfNonNullValuesToBeBetween(
        column=name,
        min_value=max(0.0, present - spec.null_tolerance),
        max_value=min(1.0, present + spec.null_tolerance),
    )


def _fresh_expectations(field: pa.Field, fresh: FreshCheck, spec: ValidateSpec) -> list[Any]:
    """A column made fresh: as many nulls as the real one, its type, unique where the real values
    were, and in their format (a pattern that names no real value: literal characters every real
    value shares, character classes elsewhere)."""
    import great_expectations as gx

    expect = gx.expectations
    out = [_null_share_expectation(field.name, 1 - fresh.null_share, spec)]
    if (type_name := _gx_type_name(value_type(field.type))) is not None:
        out.append(expect.ExpectColumnValuesToBeOfType(column=field.name, type_=type_name))
    if fresh.unique:
        out.append(expect.ExpectColumnValuesToBeUnique(column=field.name))
    if fresh.pattern is not None:
        out.append(expect.ExpectColumnValuesToMatchRegex(column=field.name, regex=fresh.pattern))
    return out


def _condition_expectations(conditions: dict[str, Any], modality: str) -> list[Any]:
    """Columns (or the image label) fixed by ``generate.conditions`` hold exactly that value."""
    import great_expectations as gx

    return [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=key, value_set=[str(value) if modality == "image" else value]
        )
        for key, value in conditions.items()
    ]


def image_stats(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per image: what the image expectations look at."""
    flat = images.reshape(len(images), -1)
    return pd.DataFrame(
        {
            "label": pd.Series(labels.astype(str), dtype="str"),
            "height": np.full(len(images), images.shape[1]),
            "width": np.full(len(images), images.shape[2]),
            "channels": np.full(len(images), images.shape[3]),
            "pixel_min": flat.min(axis=1).astype(np.int64),
            "pixel_max": flat.max(axis=1).astype(np.int64),
            "pixel_mean": flat.mean(axis=1),
        }
    )


def _image_expectations(images: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...]) -> list[Any]:
    import great_expectations as gx

    expect = gx.expectations
    height, width, channels = images.shape[1:]
    stats = image_stats(images, labels)
    brightness = float(stats["pixel_mean"].mean())
    slack = max(25.5, 0.25 * brightness)  # a gross check: 10% of the range or a quarter of the mean
    varied = float((stats["pixel_max"] > stats["pixel_min"]).mean())
    blank = (
        # blank (constant) images mean a collapsed generator, unless the real ones are blank too
        [
            expect.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="pixel_max", column_B="pixel_min", or_equal=False, mostly=0.95
            )
        ]
        if varied >= 0.99
        else []
    )
    return blank + [
        expect.ExpectTableRowCountToBeBetween(min_value=1),
        expect.ExpectColumnValuesToBeBetween(column="height", min_value=height, max_value=height),
        expect.ExpectColumnValuesToBeBetween(column="width", min_value=width, max_value=width),
        expect.ExpectColumnValuesToBeBetween(column="channels", min_value=channels, max_value=channels),
        expect.ExpectColumnValuesToBeInSet(column="label", value_set=list(label_names)),
        expect.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        expect.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
        expect.ExpectColumnMeanToBeBetween(
            column="pixel_mean",
            min_value=max(0.0, brightness - slack),
            max_value=min(255.0, brightness + slack),
        ),
    ]


def _extra_expectation(extra: ExpectationSpec, index: int) -> Any:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    try:
        config = ExpectationConfiguration(type=extra.type, kwargs=extra.kwargs, severity=extra.severity)
        return config.to_domain_obj()
    except Exception as exc:  # GX raises several unrelated types for unknown names or bad kwargs
        raise ConfigError(f"validate.expectations.{index}: {extra.type}: {exc}") from None


def _target(expectation: Any) -> tuple[str, Any]:
    """What an expectation is about: its type and column (or column pair), for overriding."""
    kwargs = expectation.configuration.kwargs
    return expectation.expectation_type, kwargs.get(
        "column", (kwargs.get("column_A"), kwargs.get("column_B"))
    )


def data_suite(
    real: TabularData | ImageData,
    spec: ValidateSpec,
    name: str,
    *,
    fresh: Mapping[str, FreshCheck] | None = None,
    schema: pa.Schema | None = None,
    private: bool = False,
    token: str | None = None,
    computed: frozenset[str] = frozenset(),
) -> Any:
    """The part of a job's suite that is derived from its real data: saved with every run, and the
    file people review and edit (``validate.suite: saved``). A table's ``real`` is its protected
    view (``TableEncoder.public_view``), so the suite names no value fewer than ``min_rows`` rows
    hold; ``fresh`` are the columns made fresh (left out of the view) and ``schema`` the table's
    own, for the column list; ``private``: for a model trained with differential privacy, whose
    protected categories decode to ``token``; ``computed``: columns a constraint computes (see
    :func:`_tabular_expectations`)."""
    import great_expectations as gx

    _context()  # suites need an active context
    expectations = (
        _tabular_expectations(real, spec, fresh or {}, schema, private, token, computed)
        if isinstance(real, TabularData)
        else _image_expectations(real.images, real.labels, tuple(real.label_names))
    )
    return gx.ExpectationSuite(name=name, expectations=expectations)


def job_suite(
    base: Any,
    spec: ValidateSpec,
    conditions: dict[str, Any],
    modality: str,
    constraints: list[dict[str, Any]] | None = None,
    imputed: list[str] | None = None,
) -> Any:
    """The suite a run checks: the data's suite, the job's conditions and constraints (as
    :meth:`Constraints.checks` gives them), the columns ``generate.impute`` names without a null,
    then the job's own expectations, each replacing a data-derived one of the same type and column
    (an imputed column's share of values the real one's)."""
    import great_expectations as gx

    from genai_pipeline.quality.constraint_check import constraint_expectations

    _context()
    extras = [_extra_expectation(extra, i) for i, extra in enumerate(spec.expectations)]
    extras += _condition_expectations(conditions, modality)
    extras += constraint_expectations(constraints or [])
    extras += [
        gx.expectations.ExpectColumnProportionOfNonNullValuesToBeBetween(
            column=name, min_value=1.0, max_value=1.0
        )
        for name in imputed or []
    ]
    replaced = {_target(extra) for extra in extras}
    kept = [copy.deepcopy(item) for item in base.expectations if _target(item) not in replaced]
    suite = gx.ExpectationSuite(name=base.name)
    for expectation in kept + extras:
        expectation.id = None
        suite.add_expectation(expectation)
    return suite


def empty_suite(like: Any) -> Any:
    """A suite of ``like``'s name with no expectations (for checking the job's own alone)."""
    import great_expectations as gx

    _context()
    return gx.ExpectationSuite(name=like.name)


def derive_suite(
    real: TabularData | ImageData, spec: ValidateSpec, conditions: dict[str, Any], name: str
) -> Any:
    """The suite the synthetic data must pass, derived from the real data (as it is: for data that
    may be shown, or a protected view) plus the spec's extras."""
    return job_suite(data_suite(real, spec, name), spec, conditions, real.modality)


def suite_bytes(suite: Any) -> bytes:
    """A suite as the JSON people read and edit."""
    return json.dumps(suite.to_json_dict(), indent=1, default=str).encode()


def load_suite(blob: bytes, source: str) -> Any:
    """A suite back from its JSON; a broken file fails naming it."""
    import great_expectations as gx

    _context()
    try:
        return gx.ExpectationSuite(**json.loads(blob))
    except Exception as exc:  # bad JSON, unknown expectation types, bad kwargs: all a broken file
        raise ConfigError(f"{source}: not a valid expectation suite ({exc})") from None


def describe(result: Any, *, observed: bool = True) -> str:
    """``expect_column_values_to_be_in_set(species)``: a failed expectation, named for people
    (``observed=False``: with counts of unexpected values only, never a value: real data's)."""
    config = result.expectation_config
    kwargs = config.kwargs
    target = kwargs.get("column") or ",".join(
        str(kwargs[key]) for key in ("column_A", "column_B") if key in kwargs
    )
    target = target or ",".join(map(str, kwargs.get("column_list") or []))
    seen = result.result.get("observed_value") if observed else None
    if seen is None and "unexpected_count" in result.result:
        seen = f"{result.result['unexpected_count']} unexpected"
    error = (result.exception_info or {}).get("exception_message") if observed else None
    detail = f": {error}" if error else (f": observed {seen}" if seen is not None else "")
    return f"{config.type}({target}){detail}"


@dataclass(frozen=True)
class SuiteResult:
    """A suite's verdict on a frame: failed critical expectations, failed warning ones, JSON results."""

    failures: list[str]
    warnings: list[str]
    payload: dict[str, Any]

    @property
    def evaluated(self) -> int:
        return len(self.payload["results"]["expectations"])

    @property
    def failed(self) -> int:
        return sum(not item["success"] for item in self.payload["results"]["expectations"])


def run_suite(
    suite: Any, frame: pd.DataFrame, docs: Path | None = None, *, observed: bool = True
) -> SuiteResult:
    """Validate a frame against a suite; with ``docs``, also build GX Data Docs for it there
    (``observed``: whether failures name the values observed, see :func:`describe`)."""
    if docs is None:
        result = _batch_definition().get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    else:
        result = _validate_with_docs(suite, frame, docs)
    failed = [item for item in result.results if not item.success]
    payload = json.loads(
        json.dumps({"suite": suite.to_json_dict(), "results": result.describe_dict()}, default=str)
    )
    return SuiteResult(
        failures=[
            describe(item, observed=observed)
            for item in failed
            if item.expectation_config.severity != "warning"
        ],
        warnings=[
            describe(item, observed=observed)
            for item in failed
            if item.expectation_config.severity == "warning"
        ],
        payload=payload,
    )


def check_data(
    suite: Any, data: TabularData | ImageData, docs: Path | None = None, *, observed: bool = True
) -> SuiteResult:
    """Run a suite on a table, or on the per-image stats frame of images (see :func:`run_suite`)."""
    frame = (
        table_frame(data.table) if isinstance(data, TabularData) else image_stats(data.images, data.labels)
    )
    return run_suite(suite, frame, docs, observed=observed)


#: Data Docs' static assets worth copying: stylesheets (its images and fonts are 3 MB of decoration)
DOCS_ASSETS = ("*.html", "static/styles/*.css")


def _validate_with_docs(suite: Any, frame: pd.DataFrame, docs: Path) -> Any:
    """Validate through a GX checkpoint whose action renders Data Docs into ``docs`` (offline),
    then drop what was registered so a long-lived process does not accumulate suites and sites."""
    import great_expectations as gx

    context = _context()
    token = secrets.token_hex(4)
    site, scratch = f"site-{token}", Path(tempfile.mkdtemp(prefix="gx-docs-"))
    context.add_data_docs_site(
        site,
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(scratch)},
        },
    )
    if suite.name in {existing.name for existing in context.suites.all()}:
        context.suites.delete(
            suite.name
        )  # left by an earlier run in this process: the name shows in the docs
    suite = context.suites.add(
        gx.ExpectationSuite(
            name=suite.name, expectations=[copy.deepcopy(item) for item in suite.expectations]
        )
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"validation-{token}", data=_batch_definition(), suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"checkpoint-{token}",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[site])],
        )
    )
    try:
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        for pattern in DOCS_ASSETS:
            for path in scratch.rglob(pattern):
                target = docs / path.relative_to(scratch)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    finally:
        context.checkpoints.delete(checkpoint.name)
        context.validation_definitions.delete(definition.name)
        context.suites.delete(suite.name)
        context.delete_data_docs_site(site)
        shutil.rmtree(scratch, ignore_errors=True)
    return next(iter(outcome.run_results.values()))
