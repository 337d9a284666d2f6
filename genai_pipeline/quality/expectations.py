"""Great Expectations suites derived from the real data, run on the synthetic output.

For tables: the ordered column list; per column its type, its range (numeric and temporal), its
category set (up to ``MAX_SET`` distinct values) and its null fraction within the gate's tolerance;
a label fixed by ``generate.conditions`` must be exactly that value. For images, a per-image stats
frame (label, height, width, channels, pixel range and mean) is checked for shape, channels, label
set, blank images and overall brightness. The job spec can add any GX expectation by name.

GX is imported here only, so the other stages do not pay for its slow import.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from genai_pipeline.config import ExpectationSpec, ValidateSpec
from genai_pipeline.datasets.base import ImageData, TabularData
from genai_pipeline.encoders.tabular import dense, is_categorical, is_numeric
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


def _tabular_expectations(data: TabularData, spec: ValidateSpec, conditions: dict[str, Any]) -> list[Any]:
    import great_expectations as gx

    expect = gx.expectations
    table = data.table
    out: list[Any] = [
        expect.ExpectTableColumnsToMatchOrderedList(column_list=table.column_names),
        expect.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for field in table.schema:
        column = dense(table.column(field.name))
        type_ = column.type
        present = 1 - column.null_count / max(len(column), 1)
        out.append(
            expect.ExpectColumnProportionOfNonNullValuesToBeBetween(
                column=field.name,
                min_value=max(0.0, present - spec.null_tolerance),
                max_value=min(1.0, present + spec.null_tolerance),
            )
        )
        if column.null_count == len(column):
            continue
        if (type_name := _gx_type_name(type_)) is not None:
            out.append(expect.ExpectColumnValuesToBeOfType(column=field.name, type_=type_name))
        if is_numeric(type_):
            bounds = pc.min_max(column)
            out.append(
                expect.ExpectColumnValuesToBeBetween(
                    column=field.name, min_value=bounds["min"].as_py(), max_value=bounds["max"].as_py()
                )
            )
        values = pc.unique(column).drop_null()
        few_numbers = pa.types.is_integer(type_) and len(values) <= DISCRETE_NUMBERS
        if (is_categorical(type_) and len(values) <= MAX_SET) or few_numbers:
            out.append(expect.ExpectColumnValuesToBeInSet(column=field.name, value_set=values.to_pylist()))
    for key, value in conditions.items():
        out.append(expect.ExpectColumnValuesToBeInSet(column=key, value_set=[value]))
    return out


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


def _image_expectations(data: ImageData, conditions: dict[str, Any]) -> list[Any]:
    import great_expectations as gx

    expect = gx.expectations
    height, width, channels = data.shape
    stats = image_stats(data.images, data.labels)
    brightness = float(stats["pixel_mean"].mean())
    slack = max(25.5, 0.25 * brightness)  # a gross check: 10% of the range or a quarter of the mean
    labels = [str(conditions["label"])] if "label" in conditions else list(data.label_names)
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
        expect.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
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
        return ExpectationConfiguration(type=extra.type, kwargs=extra.kwargs).to_domain_obj()
    except Exception as exc:  # GX raises several unrelated types for unknown names or bad kwargs
        raise ConfigError(f"validate.expectations.{index}: {extra.type}: {exc}") from None


def derive_suite(
    real: TabularData | ImageData, spec: ValidateSpec, conditions: dict[str, Any], name: str
) -> Any:
    """The suite the synthetic data must pass, derived from the real data plus the spec's extras."""
    import great_expectations as gx

    _context()  # suites need an active context
    expectations = (
        _tabular_expectations(real, spec, conditions)
        if isinstance(real, TabularData)
        else _image_expectations(real, conditions)
    )
    expectations += [_extra_expectation(extra, i) for i, extra in enumerate(spec.expectations)]
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def describe(result: Any) -> str:
    """``expect_column_values_to_be_in_set(species)``: a failed expectation, named for people."""
    config = result.expectation_config
    kwargs = config.kwargs
    target = kwargs.get("column") or ",".join(
        str(kwargs[key]) for key in ("column_A", "column_B") if key in kwargs
    )
    observed = result.result.get("observed_value")
    if observed is None and "unexpected_count" in result.result:
        observed = f"{result.result['unexpected_count']} unexpected"
    error = (result.exception_info or {}).get("exception_message")
    detail = f": {error}" if error else (f": observed {observed}" if observed is not None else "")
    return f"{config.type}({target}){detail}"


def run_suite(suite: Any, frame: pd.DataFrame) -> tuple[bool, list[str], dict[str, Any]]:
    """Validate a frame: ``(success, failed expectations described, JSON-able results)``."""
    result = _batch_definition().get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    failures = [describe(item) for item in result.results if not item.success]
    payload = json.loads(
        json.dumps({"suite": suite.to_json_dict(), "results": result.describe_dict()}, default=str)
    )
    return bool(result.success), failures, payload
