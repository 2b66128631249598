"""Sweep progress on the terminal: a rich bar with done / failed / cached counts and an ETA.

The bar counts the tasks that have to be computed (cached ones are shown next to it, so the ETA
is not fooled by a burst of cache hits). It is silent when stderr is not a terminal (batch jobs,
CI, pipes); one-line notes such as the dask dashboard link are still printed there, because
they are what a user looks for in a SLURM log.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class SweepProgress:
    """Counts of a running sweep, drawn as a bar when interactive.

    ``enabled=None`` means "when stderr is a terminal". Call :meth:`start` once the number of
    tasks to compute is known, then :meth:`update` as results arrive.
    """

    def __init__(self, enabled: bool | None = None, console: Console | None = None,
                 label: str = "sweep") -> None:
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.label = label
        self.ok = self.failed = self.cached = self.retried = 0
        self.total = 0
        self._progress: Progress | None = None
        self._task = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, to_compute: int, cached: int = 0) -> None:
        self.total, self.cached = to_compute, cached
        if not self.enabled or self._progress is not None:
            return
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} done[/] [red]{task.fields[failed]} failed[/] "
                       "[cyan]{task.fields[cached]} cached[/]{task.fields[extra]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=to_compute, ok=0, failed=0,
                                             cached=cached, extra="")

    def stop(self) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None

    # ---------------------------------------------------------------- updates
    def update(self, ok: int = 0, failed: int = 0, retried: int = 0) -> None:
        self.ok += ok
        self.failed += failed
        self.retried += retried
        if self._progress is not None:
            self._progress.advance(self._task, ok + failed)
            self._refresh()

    def _refresh(self) -> None:
        if self._progress is None:
            return
        extra = f" [yellow]{self.retried} retried[/]" if self.retried else ""
        self._progress.update(self._task, ok=self.ok, failed=self.failed, cached=self.cached,
                              extra=extra)

    def status(self, text: str) -> None:
        """Change the label (e.g. 'waiting for SLURM workers')."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def note(self, text: str) -> None:
        """A one-line message, printed even when not interactive (e.g. the dashboard link)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(f"qdcavity: {text}", file=sys.stderr, flush=True)

    def summary(self) -> str:
        parts = [f"{self.ok} computed", f"{self.cached} cached", f"{self.failed} failed"]
        if self.retried:
            parts.append(f"{self.retried} retried")
        return ", ".join(parts)


class NullProgress(SweepProgress):
    """No output at all (the Python API's default unless asked)."""

    def __init__(self) -> None:
        super().__init__(enabled=False)

    def note(self, text: str) -> None:
        pass
