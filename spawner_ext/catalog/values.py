"""Value types of the catalog schema (prices, durations, names, environment variable names)
and the base of every section. No I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    WrapSerializer,
)

from .durations import DURATION_PATTERN, format_duration, parse_duration
from .frozen import freeze, thaw

# --- value types -------------------------------------------------------------------------------


def _money(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"expected a price such as 2.50, got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"expected a price such as 2.50, got {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"a price must be a finite number, got {value!r}")
    if amount < 0:
        raise ValueError(f"a price cannot be negative, got {value!r}")
    return amount


def _hours(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of GPU-hours such as 500, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number of GPU-hours, got {value!r}")
    if value < 0:
        raise ValueError(f"GPU-hours cannot be negative, got {value!r}")
    return Decimal(str(value))


def _gib(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected GPU memory in GiB such as 80, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"GPU memory must be a positive number of GiB, got {value!r}")
    return float(value)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _env_name(value: str) -> str:
    if not re.fullmatch(ENV_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not the name of an environment variable (letters, digits and '_', "
            "not starting with a digit); put the secret itself in an environment variable of "
            "the gpuhub service, such as GPUHUB_SMTP_PASSWORD, and write that name here"
        )
    return value


def _decimal_json(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    PlainSerializer(_decimal_json),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}),
]
GPUHours = Annotated[
    Decimal,
    BeforeValidator(_hours),
    PlainSerializer(_decimal_json),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
GiB = Annotated[
    float,
    BeforeValidator(_gib),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
]
"""A memory size in GiB (2**30 bytes), positive."""
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN, "examples": ["30m", "12h"]},
                {"type": "integer", "exclusiveMinimum": 0, "description": "seconds"},
            ]
        }
    ),
]
Count = Annotated[StrictInt, Field(ge=0)]
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="lower-case letters, digits and '-' (a Kubernetes label value)",
    ),
]
Regex = Annotated[str, AfterValidator(_regex)]
EnvName = Annotated[
    StrictStr,
    AfterValidator(_env_name),
    WithJsonSchema({"type": "string", "pattern": ENV_NAME_PATTERN}),
]
"""The name of an environment variable of the gpuhub service (never a secret itself)."""
Override = Annotated[
    Mapping[str, Any],
    AfterValidator(freeze),
    PlainSerializer(thaw),
    WithJsonSchema({"type": "object"}),
]


def _frozen_map(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return freeze(value)  # type: ignore[no-any-return]


def _as_dict(value: Mapping[str, Any], handler: SerializerFunctionWrapHandler) -> Any:
    return handler(dict(value))


K = TypeVar("K")
V = TypeVar("V")
FrozenMap = Annotated[Mapping[K, V], AfterValidator(_frozen_map), WrapSerializer(_as_dict)]
"""A read-only mapping in the frozen catalog, a plain mapping in YAML and JSON."""


class Model(BaseModel):
    """Base of every catalog section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
