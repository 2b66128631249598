"""Canonical identities of frozen models: the JSON that hashes and cache keys are taken of."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache, cached_property
from typing import Any

from pydantic import BaseModel


def canonical_dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """The canonical JSON text of a value: sorted keys, no spaces (what hashes are taken of);
    ``default`` as for :func:`json.dumps`."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


class CachedIdentity(BaseModel):
    """A frozen model with ``cached_property`` identities (canonical JSON, hash) that a
    ``model_copy(update=...)`` must not carry over to the changed copy, and that a pickle does
    not carry at all (they are rebuilt where they are needed): a sweep's batch of 300 TMM
    tasks pickles to 52 kB instead of 608 kB, the stacks' canonical JSON left out, which took
    dask's threads in the client process (where a local cluster's scheduler runs) from 23-26
    to 20-22 us per task."""

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False
                   ) -> Any:
        return _without_identities(super().model_copy(update=update, deep=deep))

    def _replaced(self, **fields: Any) -> Any:
        """``model_copy(update=fields)`` for values already valid (not validated again): the
        fields marked as set, the cached identities dropped; in 2 us rather than the 3.5 of
        ``model_construct`` or the 3.2 of pydantic's ``__copy__`` (a sweep makes one per
        point)."""
        cls = type(self)
        if not fields.keys() <= cls.model_fields.keys():
            unknown = sorted(fields.keys() - cls.model_fields.keys())
            raise ValueError(f"not fields of {cls.__name__}: {unknown}")
        copied = cls.__new__(cls)
        _set = object.__setattr__
        _set(copied, "__dict__", self.__dict__.copy())
        _without_identities(copied).__dict__.update(fields)
        _set(copied, "__pydantic_fields_set__", self.__pydantic_fields_set__ | fields.keys())
        _set(copied, "__pydantic_extra__", _copied(self.__pydantic_extra__))
        _set(copied, "__pydantic_private__", _copied(self.__pydantic_private__))
        return copied

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        fields = state["__dict__"]
        cached = _cached_names(type(self))
        if not cached.isdisjoint(fields):
            state = {**state, "__dict__": {k: v for k, v in fields.items() if k not in cached}}
        return state


def _copied(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """pydantic's extra or private values, copied as ``BaseModel.__copy__`` copies them."""
    return None if value is None else dict(value)


def _without_identities(copied: Any) -> Any:
    """A fresh copy with the cached identities it took over from its original dropped."""
    for name in _cached_names(type(copied)):
        copied.__dict__.pop(name, None)
    return copied


@cache
def _cached_names(cls: type) -> frozenset[str]:
    """The names of a class's ``cached_property`` attributes (its bases' included)."""
    return frozenset(name for klass in cls.__mro__ for name, attr in vars(klass).items()
                     if isinstance(attr, cached_property))
