"""The strict pydantic base of every job spec model and every family's hyper-parameters.

A nightly job fails at load time, naming the field, rather than run with what someone did not mean:
unknown keys are errors, values are re-checked on assignment, and a number is never read from
YAML's ``yes``/``no`` (pydantic alone reads ``true`` as 1, so ``epochs: yes`` would train one
epoch and ``hidden: [yes]`` a one-unit layer).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _plain_types(annotation: Any) -> set[Any]:
    """The types a field annotation admits at its top level (through ``X | None`` and ``Annotated``)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return {type(arg) for arg in args}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return set().union(*(_plain_types(arg) for arg in args))
    return {annotation}


def _item_types(annotation: Any) -> set[Any]:
    """The types the items of a list, tuple or set field (or a mapping's values) may have."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return set().union(*(_item_types(arg) for arg in args))
    if origin in (list, tuple, set, frozenset):
        return set().union(*(_plain_types(arg) for arg in args if arg is not Ellipsis))
    if origin is dict:
        return _plain_types(args[1])
    return set()


def _wants_numbers(admitted: set[Any]) -> bool:
    return bool not in admitted and bool(admitted & {int, float})


class StrictModel(BaseModel):
    """Base of every spec model and of every family's hyper-parameters: unknown keys are errors,
    values are re-checked on assignment, and a number is never read from true/false."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``epochs: yes`` is YAML for true, which pydantic would take as 1: a number field wants a
        number, and so do the items of a list of numbers (``hidden: [yes]``)."""
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _wants_numbers(_plain_types(annotation)):
            raise ValueError("expected a number, not true/false")
        items = list(value.values()) if isinstance(value, dict) else value
        some_boolean = isinstance(items, list | tuple) and any(isinstance(item, bool) for item in items)
        if some_boolean and _wants_numbers(_item_types(annotation)):
            raise ValueError("expected numbers, not true/false")
        return value
