"""Turn pydantic validation errors into one clear :class:`ConfigError` naming each field."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def field_path(loc: tuple) -> str:
    """``("layers", 2, "thickness_nm")`` -> ``layers[2].thickness_nm``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {field_path(err['loc'])}: {msg}")
    return "\n".join(lines)


def validated(build: Callable[[], M], source: str) -> M:
    """Run ``build`` (a pydantic constructor); re-raise its errors as one ConfigError."""
    try:
        return build()
    except ValidationError as exc:
        raise ConfigError(describe(exc, source)) from None
