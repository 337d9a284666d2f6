"""``expect_rows_to_follow_constraint`` and ``expect_column_values_to_follow_constraint``: Great
Expectations expectations that every row follows one of the job's constraints
(``generate.constraints``).

GX has expectations for some rules (a column pair's order, a value set) but none for a gap between
dates, a formula, a combination of more than two columns or a user's rule; one expectation for all
of them keeps the suite uniform. Its ``constraint`` is what :meth:`Constraints.checks` gives (the
rule's spec and what checking it needs, nothing fewer than ``min_rows`` real rows hold), and the
rows are checked by the rule's own ``holds``, independent of the transform that enforced it.
Pandas only: the suite runs on a pandas frame of the validation sample.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pandas as pd
import pyarrow as pa
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation, MulticolumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    MulticolumnMapMetricProvider,
)
from great_expectations.expectations.metrics.map_metric_provider.column_condition_partial import (
    column_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.multicolumn_condition_partial import (
    multicolumn_condition_partial,
)

from genai_pipeline.constraints import rule_of


class MulticolumnValuesFollowConstraint(MulticolumnMapMetricProvider):
    """Per row, whether it follows the constraint."""

    condition_metric_name = "multicolumn_values.follow_constraint"
    condition_domain_keys = (
        "batch_id",
        "table",
        "column_list",
        "row_condition",
        "condition_parser",
        "ignore_row_if",
    )
    condition_value_keys = ("constraint",)

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list: pd.DataFrame, **kwargs: Any) -> pd.Series:
        rule = rule_of(kwargs["constraint"])
        table = pa.Table.from_pandas(column_list, preserve_index=False)
        return pd.Series(rule.holds(table), index=column_list.index)


class ColumnValuesFollowConstraint(ColumnMapMetricProvider):
    """Per value, whether it follows a constraint about its column alone."""

    condition_metric_name = "column_values.follow_constraint"
    condition_value_keys = ("constraint",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        rule = rule_of(kwargs["constraint"])
        table = pa.table({rule.columns[0]: pa.Array.from_pandas(column)})
        return pd.Series(rule.holds(table), index=column.index)


#: shown in GX's gallery and docs for both expectations
_METADATA: dict[str, Any] = {
    "maturity": "experimental",
    "tags": ["genai_pipeline", "constraints"],
    "contributors": ["genai_pipeline"],
    "requirements": [],
    "has_full_test_suite": False,
    "manually_reviewed_code": True,
}


class ExpectColumnValuesToFollowConstraint(ColumnMapExpectation):
    """Expect every value of a column to follow a constraint about it alone (``positive``,
    ``one_of``, ``unique`` within the sample, a range between constants).

    Args:
        column: the column.
        constraint: the rule as :meth:`genai_pipeline.constraints.Constraints.checks` gives it.
    """

    constraint: dict[str, Any]

    library_metadata: ClassVar[dict[str, Any]] = _METADATA
    _library_metadata = library_metadata

    map_metric = "column_values.follow_constraint"
    success_keys = ("mostly", "constraint")
    args_keys = ("column", "constraint")


class ExpectRowsToFollowConstraint(MulticolumnMapExpectation):
    """Expect every row to follow a constraint of the job (``generate.constraints``).

    Args:
        column_list: the columns the constraint is about.
        constraint: the rule as :meth:`genai_pipeline.constraints.Constraints.checks` gives it.
    """

    constraint: dict[str, Any]
    ignore_row_if: Literal["all_values_are_missing", "any_value_is_missing", "never"] = "never"

    library_metadata: ClassVar[dict[str, Any]] = _METADATA
    _library_metadata = library_metadata

    map_metric = "multicolumn_values.follow_constraint"
    success_keys = ("mostly", "constraint")
    args_keys = ("column_list", "constraint")


def constraint_expectations(checks: list[dict[str, Any]]) -> list[Any]:
    """One expectation per constraint, named in its notes."""
    out: list[Any] = []
    for check in checks:
        columns, note = check["columns"], check["label"]
        if len(columns) == 1:
            out.append(ExpectColumnValuesToFollowConstraint(column=columns[0], constraint=check, notes=note))
        else:
            out.append(ExpectRowsToFollowConstraint(column_list=columns, constraint=check, notes=note))
    return out
