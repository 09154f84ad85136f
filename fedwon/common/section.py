"""``Section``: one part of a run's settings (data, model, train, server, dp, ...).

A run config is composed of sections, each defined and validated by the package that owns it
(:class:`~fedwon.datasets.DataSpec`, :class:`~fedwon.models.ModelSpec`,
:class:`~fedwon.clients.TrainSpec`, :class:`~fedwon.strategies.ServerSpec`,
:class:`~fedwon.privacy.DPConfig`), and a section travels, unchanged, to whoever needs it:
clients receive the data, model, train and dp sections as they are. Every section shares one
strictness: unknown keys are refused, values are immutable, and what pydantic's lax mode would
silently coerce (``"1"`` for an integer, ``yes`` for a boolean, NaN) is refused with one line.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import core_schema


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key and the valid choices."""


def _type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", float: "a float", int: "an integer"}
    return names.get(type(value), f"a {type(value).__name__}")


def check_scalar(value: object, annotation: object) -> object:
    """Refuse what pydantic's lax mode would coerce: ``"1"``, ``true`` or ``5.0`` for an
    integer, ``"0.1"`` or ``true`` for a number, ``1`` or ``"yes"`` for a boolean, and NaN or
    infinite numbers. A recipe with ``num_rounds = "10"`` is a mistake worth naming, and NaN
    passes every range check (``nan <= 0`` is false) only to fail deep inside training.

    Any pydantic model can call this from a ``@field_validator("*", mode="before")``.
    Optional fields (``float | None``) are checked as their type when a value is given.
    """
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and type(None) in typing.get_args(annotation):
        if value is None:
            return value
        annotation = args[0]
    if typing.get_origin(annotation) is Annotated:  # a ranged type: check its base type
        annotation = typing.get_args(annotation)[0]
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)} {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"expected an integer, got {_type_name(value)} {value!r}")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
    return value


class Section(BaseModel):
    """A frozen, strictly typed group of settings; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return check_scalar(value, field.annotation) if field is not None else value

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """The section's settings as flat recipe keys (unset optional values left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class RangeError(ValueError):
    """A value outside its key's range, in the one line every section uses:
    ``must be >= 1, got 0``."""

    def __init__(self, what: str, value: object) -> None:
        super().__init__(f"must be {what}, got {value}")
        self.what, self.value = what, value


def _range(test: Callable[[float], bool], what: str) -> AfterValidator:
    """A range check (:class:`RangeError`); ``None`` (an optional key left unset) passes."""

    def check(value: Any) -> Any:
        if value is not None and not test(value):
            raise RangeError(what, value)
        return value

    return AfterValidator(check)


@dataclass(frozen=True)
class Hint:
    """What a ranged key's values mean, added to its range error: a field
    ``Annotated[NonNegativeInt, Hint("0 = the sampled cohort")]`` refuses -1 with ``must be
    >= 0 (0 = the sampled cohort), got -1``. The range stays the shared type's; the hint
    says what only this key means by it."""

    text: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._explain, handler(source))

    def _explain(self, value: Any, validate: ValidatorFunctionWrapHandler) -> Any:
        try:
            return validate(value)
        except ValidationError as err:
            cause = err.errors()[0].get("ctx", {}).get("error")
            if isinstance(cause, RangeError):
                raise RangeError(f"{cause.what} ({self.text})", cause.value) from None
            raise


# The ranges of the run config's numbers, written once for every section.
PositiveInt = Annotated[int, _range(lambda v: v >= 1, ">= 1")]
NonNegativeInt = Annotated[int, _range(lambda v: v >= 0, ">= 0")]
PositiveFloat = Annotated[float, _range(lambda v: v > 0, "> 0")]
NonNegativeFloat = Annotated[float, _range(lambda v: v >= 0, ">= 0")]
Fraction = Annotated[float, _range(lambda v: 0 < v <= 1, "in (0, 1]")]
UnitInterval = Annotated[float, _range(lambda v: 0 <= v < 1, "in [0, 1)")]
OpenUnitInterval = Annotated[float, _range(lambda v: 0 < v < 1, "in (0, 1)")]
