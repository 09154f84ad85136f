"""Strict scalars for pydantic models: what lax coercion would silently accept is refused.

Shared by every settings model (the run config and its ``dp.*`` section), so a recipe value
means the same strictness whatever table it sits in.
"""

from __future__ import annotations

import math
import typing


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
