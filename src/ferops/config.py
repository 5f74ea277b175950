"""Typed, frozen configs for the sections of params.yaml, checked before any work starts.

Every stage builds its section's config with :func:`build`: unknown keys are refused (naming
the key and the keys that are known there), types and ranges are checked, and the result is an
immutable object. The schemas are pydantic models (``extra="forbid"``, ``frozen=True``) that
live next to the code that uses them, e.g. :class:`ferops.training.TrainConfig`; this module
holds only the shared machinery, so a change to one section's schema does not touch the others.

pydantic rather than hand-written checks: it already knows how to walk nested mappings, coerce
YAML scalars (``1e-4`` is a string to PyYAML, a number here), refuse extra keys and report the
exact location of every problem, which is what a user needs from a params error.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ferops.errors import ParamsError

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """Base class of every params schema: unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _nested_schema(annotation: Any) -> type[Section] | None:
    """The Section class a field holds directly, in an Optional, or as a mapping's values."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for argument in typing.get_args(annotation):
            if (found := _nested_schema(argument)) is not None:
                return found
    if origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        arguments = typing.get_args(annotation)
        if len(arguments) == 2:
            return _nested_schema(arguments[1])
    return None


def known_keys(schema: type[Section], location: Sequence[Any]) -> list[str]:
    """The keys a mapping at ``location`` inside ``schema`` may have (empty if not a schema)."""
    current: Any = schema
    for part in location:
        if not (isinstance(current, type) and issubclass(current, Section)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            # A free-form mapping key (e.g. a dataset name): the schema of its values applies.
            continue
        current = _nested_schema(field.annotation)
    if isinstance(current, type) and issubclass(current, Section):
        return sorted(current.model_fields)
    return []


def _describe(error: Mapping[str, Any], schema: type[Section], where: str) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join([where, *location])
    kind = error["type"]
    if kind == "extra_forbidden":
        known = known_keys(schema, error["loc"][:-1])
        return f"{key}: unknown key; known keys here: {', '.join(known) or '(none)'}"
    if kind == "missing":
        return f"{key}: missing (expected by the {where} section)"
    message = str(error["msg"])
    # Errors raised by a model validator arrive as "Value error, <our text>".
    message = message.removeprefix("Value error, ")
    if kind == "value_error" and not location:
        return f"{where}: {message}"
    return f"{key}: {message}; got {error.get('input')!r}"


def build(schema: type[S], values: Mapping[str, Any] | None, where: str) -> S:
    """Build and check the config of one params section.

    Args:
        schema: The section's :class:`Section` subclass.
        values: The section's mapping from params.yaml (None or missing: empty).
        where: The section's dotted name, used in messages (``train``, ``prepare.clean``).

    Returns:
        The frozen config.

    Raises:
        ParamsError: Unknown keys, missing keys, wrong types or out-of-range values; every
            problem is named with its dotted key and what was expected.
    """
    if values is not None and not isinstance(values, Mapping):
        raise ParamsError(f"{where}: expected a mapping of keys to values, got {values!r}")
    try:
        return schema.model_validate(dict(values or {}))
    except ValidationError as error:
        problems = [_describe(item, schema, where) for item in error.errors()]
        raise ParamsError("; ".join(problems)) from None


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``; else a ValueError pydantic reports in place."""
    if value not in choices:
        raise ValueError(f"{what} {value!r} is not one of: {', '.join(choices)}")
    return value


class BaseConfig(Section):
    """The ``base`` params section, shared by every stage.

    Attributes:
        seed: Random seed of every seeded step (oversampling, training, galleries).
        image_size: Side of the square grayscale images the model sees.
        classes: Class names in label order: index i in the arrays means ``classes[i]``.
    """

    seed: int = Field(ge=0)
    image_size: int = Field(gt=0)
    classes: tuple[str, ...] = Field(min_length=2)

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"class names must be unique; repeated: {', '.join(repeated)}")
        return value
