"""Errors that qdcavity reports to users.

Every error a user can cause derives from :class:`QdcavityError`; the CLI prints its message
on one line (no traceback unless ``--debug``) and exits with :attr:`QdcavityError.exit_code`.
"""

from __future__ import annotations


class QdcavityError(Exception):
    """Base class of every error qdcavity reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ConfigError(QdcavityError):
    """A stack, study or option is malformed (usage error, exit status 2)."""

    exit_code = 2


class MaterialError(ConfigError):
    """An unknown material or a malformed material definition."""


class WavelengthRangeError(QdcavityError):
    """A material was evaluated outside the wavelength range of its data."""

    exit_code = 2


class BackendError(QdcavityError):
    """A backend is unknown, unavailable, or cannot answer an analysis."""

    exit_code = 2


class SolverError(QdcavityError):
    """A backend failed while computing (recorded per task in sweeps)."""


class ContractError(QdcavityError):
    """A backend returned a dataset that violates an analysis' result contract."""
