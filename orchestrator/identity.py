"""Canonical identities of frozen models: the JSON that hashes and cache keys are taken of."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from pydantic import BaseModel


def canonical_dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """The canonical JSON text of a value: sorted keys, no spaces (what hashes are taken of);
    ``default`` as for :func:`json.dumps`."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


class CachedIdentity(BaseModel):
    """A frozen model with ``cached_property`` identities (canonical JSON, hash) that a
    ``model_copy(update=...)`` must not carry over to the changed copy."""

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False
                   ) -> Any:
        copied = super().model_copy(update=update, deep=deep)
        for klass in type(self).__mro__:
            for name, attr in vars(klass).items():
                if isinstance(attr, cached_property):
                    copied.__dict__.pop(name, None)
        return copied
