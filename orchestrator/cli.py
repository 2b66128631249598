"""Command-line interface: ``qdcavity --help`` lists every command.

Errors a user can cause print one line naming the problem and exit non-zero (2 for usage and
configuration errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import ConfigError, QdcavityError

console = Console()


def parse_assignment(text: str) -> tuple[str, Any]:
    """``IZO_top.thickness_nm=100`` -> (``"IZO_top.thickness_nm"``, 100) (TOML value syntax)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected FIELD=VALUE, got '{text}'", field="--set")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def cmd_geometries(args: argparse.Namespace) -> int:
    from .stack import builtin_stacks, load_stack

    table = Table(title="built-in stacks (bottom to top)")
    for col in ("name", "layers", "gain", "file"):
        table.add_column(col)
    for name, path in builtin_stacks().items():
        stack = load_stack(path)
        layers = " | ".join([str(stack.substrate.material),
                             *(f"{la.name} {la.thickness_nm:g}" for la in stack.layers),
                             str(stack.superstrate.material)])
        table.add_row(name, layers, stack.gain_layer or "", path.name)
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from .stack import load_stack

    stack = load_stack(args.stack, dict(args.set or []) or None)
    nk = stack.indices(args.wavelength)[0]
    mats = stack.materials()
    table = Table(title=f"{stack.name} at {args.wavelength:g} nm  (hash {stack.content_hash[:12]})")
    for col in ("medium", "material", "thickness (nm)", "n", "k", "role", "source"):
        table.add_column(col)
    roles = [(stack.gain_layer, "gain"), (stack.emitter_layer, "emitter")]
    thick = ["inf", *(f"{d:g}" for d in stack.thicknesses_nm), "inf"]
    for name, mat, t, n in zip(stack.media_names, mats, thick, nk, strict=True):
        role = ", ".join(r for layer, r in roles if layer == name)
        source = (mat.note or mat.reference).split(";")[0]
        table.add_row(name, mat.name, t, f"{n.real:.4f}", f"{n.imag:.4g}", role, source[:48])
    console.print(table)
    console.print(f"total thickness {np.sum(stack.thicknesses_nm):g} nm")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from .registry import default_registry

    reg = default_registry()
    table = Table(title="backends")
    for col in ("name", "version", "analyses", "status", "plugin"):
        table.add_column(col)
    for name, backend in sorted(reg.backends.items()):
        try:  # a plugin whose availability check raises is reported, never fatal
            status = backend.availability()
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            from .backend import Availability

            status = Availability(False, f"availability() raised {type(exc).__name__}: {exc}")
        if status.available:
            text = "available" + (f" ({status.reason})" if status.reason else "")
        else:
            text = f"unavailable: {status.reason}"
        if not status.available and status.install_hint:
            text += f" (install: {status.install_hint})"
        table.add_row(name, backend.version, ", ".join(sorted(backend.analyses)), text,
                      reg.origins[name])
    for failure in reg.failures:
        table.add_row(failure.plugin, "-", "-", f"failed to load: {failure.reason}",
                      failure.target)
    for skipped in reg.skipped:
        table.add_row(skipped, "-", "-", "not loaded (not in QDCAVITY_PLUGINS)", "")
    console.print(table)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .progress import SweepProgress
    from .results import write_netcdf
    from .runner import execute_study
    from .study import load_study

    study = load_study(args.study)
    if args.set:
        study = study.model_copy(update={"overrides": {**study.overrides, **dict(args.set)}})
    out = Path(args.output) if args.output else study.output_path() or Path(f"{study.name}.nc")
    with SweepProgress(label=study.name) as progress:
        ds, report = execute_study(
            study, backend=args.backend, executor=args.executor, cache_dir=args.cache_dir,
            use_cache=not args.no_cache, resume=args.resume, progress=progress,
            workers=args.workers, address=args.scheduler, retries=args.retries,
            batch_size=args.batch_size)
    write_netcdf(ds, out)
    if study.output.figures:
        from .figures import study_figures

        for path in study_figures(ds, out.parent):
            console.print(f"wrote {path}")
    failed = report.n_failed
    console.print(f"wrote {out}  ({report.n_computed} computed, {report.n_cached} cached, "
                  f"{failed} failed" + (", see 'status' and 'error'" if failed else "") +
                  f"; {report.wall_s:.1f} s on {report.executor})", soft_wrap=True)
    return 1 if failed else 0


def cmd_gain_check(args: argparse.Namespace) -> int:
    from .checks import gain_check
    from .stack import load_stack

    rows = gain_check(load_stack(args.stack, dict(args.set or []) or None), args.wavelength,
                      tuple(args.gain), tuple(args.mode), backend=args.backend)
    table = Table(title="modal gain: exact re-solve with gain vs gamma_P * g (cm^-1)")
    for col in ("mode", "g", "exact", "gamma_P * g", "difference", "relative"):
        table.add_column(col, justify="right")
    for r in rows:
        rel = r.difference_cm / r.exact_modal_gain_cm if r.exact_modal_gain_cm else float("nan")
        table.add_row(r.mode, f"{r.gain_cm:g}", f"{r.exact_modal_gain_cm:.6f}",
                      f"{r.predicted_cm:.6f}", f"{r.difference_cm:+.2e}", f"{rel:+.1e}")
    console.print(table)
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from .paper import run_paper

    return run_paper(Path(args.output_dir), console=console)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run one study on several backends; print, per quantity, the values side by side, the
    differences and the verdict against the declared tolerances; exit 1 if any exceeds."""
    from .compare import (
        compare_study,
        element_rows,
        fmt_diff,
        fmt_value,
        fmt_where,
        parse_backends,
        write_figure,
    )
    from .progress import SweepProgress
    from .results import write_netcdf
    from .study import load_study

    study = load_study(args.study)
    if args.set:
        study = study.model_copy(update={"overrides": {**study.overrides, **dict(args.set)}})
    backends = parse_backends(args.backends)
    out = Path(args.output) if args.output else Path(f"{study.name}.compare.nc")
    cmp = compare_study(
        study, backends, executor=args.executor,
        progress_factory=lambda b: SweepProgress(label=f"{study.name} [{b}]"),
        cache_dir=args.cache_dir, use_cache=not args.no_cache, workers=args.workers)
    ref, others = cmp.reference, cmp.backends[1:]
    for q in cmp.quantities:
        units = cmp.dataset[q.name].attrs.get("units", "")
        table = Table(title=f"{q.name}" + (f" [{units}]" if units and units != "1" else ""),
                      title_justify="left")
        table.add_column("where")
        for b in cmp.backends:
            table.add_column(b, justify="right")
        for b in others:
            table.add_column(f"{b} - {ref}", justify="right")
            table.add_column("tolerance", justify="right")
        table.add_column("status")
        rows = element_rows(cmp, q, args.rows)
        if not rows and q.worst:
            w = q.worst
            status = "ok" if q.ok else f"{q.n_exceeding} exceed, {q.n_missing} missing"
            rows = [{"where": None, "values": w["values"], "diff": w["diff"],
                     "tolerance": w["tolerance"], "status": status}]
        for r in rows:
            where = fmt_where(r["where"]) if r["where"] is not None else (
                f"worst of {q.n_elements}: {fmt_where(q.worst['where'])}")
            cells = [where, *(fmt_value(r["values"][b]) for b in cmp.backends)]
            for b in others:
                cells += [fmt_diff(r["diff"][b]), f"{r['tolerance'][b]:.2g}"]
            style = "green" if r["status"].startswith("ok") else "bold red"
            cells.append(f"[{style}]{r['status']}[/{style}]")
            table.add_row(*cells)
        console.print(table)
    for b, points in cmp.failed_points.items():
        for point in points[:10]:
            console.print(f"[red]{b} failed at {point}[/red]", soft_wrap=True)
        if len(points) > 10:
            console.print(f"[red]{b}: {len(points) - 10} more failed points[/red]")
    write_netcdf(cmp.dataset, out)
    written = [str(out)]
    if not args.no_figure:
        written.append(str(write_figure(cmp, Path(args.figure) if args.figure
                                        else out.with_suffix(".png"))))
    bad = [q.name for q in cmp.quantities if not q.ok]
    if cmp.ok:
        console.print(f"all {len(cmp.quantities)} quantities within the declared tolerances "
                      f"({', '.join(cmp.backends)}); wrote {', '.join(written)}", soft_wrap=True)
        return 0
    failed = sum(bool(p) for p in cmp.failed_points.values())
    console.print(f"[bold red]{len(bad)} of {len(cmp.quantities)} quantities outside the "
                  f"declared tolerances[/bold red]" + (f": {', '.join(bad)}" if bad else "")
                  + (f"; failed points on {failed} backend(s)" if failed else "")
                  + f"; wrote {', '.join(written)}", soft_wrap=True)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qdcavity",
        description="Optical cavity design for quantum-dot LEDs on pluggable solvers.",
    )
    parser.add_argument("--version", action="version", version=f"qdcavity {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("geometries", help="list the built-in stacks")
    p.set_defaults(func=cmd_geometries)

    p = sub.add_parser("show", help="show a stack's layers and materials at a wavelength")
    p.add_argument("stack", help="built-in stack name (e.g. TE-DIZO) or a stack .toml file")
    p.add_argument("-w", "--wavelength", type=float, default=630.0, help="nm (default 630)")
    p.add_argument("--set", type=parse_assignment, action="append", metavar="FIELD=VALUE",
                   help="override a stack field, e.g. IZO_top.thickness_nm=100 (repeatable)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("backends", help="list backends, their analyses and availability")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("run", help="run a study file and write its netCDF result")
    p.add_argument("study", help="study .toml file")
    p.add_argument("--backend", help="use this backend instead of the study's")
    p.add_argument("-o", "--output", help="output .nc file (default: the study's output.path)")
    p.add_argument("--set", type=parse_assignment, action="append", metavar="FIELD=VALUE",
                   help="override a stack field for the whole study (repeatable)")
    p.add_argument("--executor", choices=("inprocess", "local", "address", "slurm"),
                   help="where tasks run (default: the study's [executor], else a local "
                        "dask cluster on all cores)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the local cluster (default: all usable cores); "
                        "with --executor slurm, dask workers to start")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use the running dask scheduler at tcp://host:port (implies "
                        "--executor address)")
    p.add_argument("--retries", type=int, metavar="N",
                   help="resubmissions of a task lost with its worker (default 2; a task "
                        "that raises is never retried)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="tasks per dask task (default: automatic from the first timings)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="task cache (default: output.cache_dir, $QDCAVITY_CACHE_DIR, or "
                        ".qdcavity-cache next to the study)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: compute only the tasks missing from the "
                        "cache (what every run does; --resume says so and reports it)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the task cache (recompute everything)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("gain-check", help="check modal gain = gamma_P * g by re-solving with gain")
    p.add_argument("stack", help="built-in stack name or stack .toml file")
    p.add_argument("-w", "--wavelength", type=float, default=630.0, help="nm (default 630)")
    p.add_argument("--gain", type=float, nargs="+", default=[10.0, 100.0, 690.0],
                   help="material gains g in cm^-1 (default 10 100 690)")
    p.add_argument("--mode", nargs="+", default=["TE0", "TM0"], help="mode labels")
    p.add_argument("--backend", default="tmm", help="backend to check (default tmm)")
    p.add_argument("--set", type=parse_assignment, action="append", metavar="FIELD=VALUE",
                   help="override a stack field (repeatable)")
    p.set_defaults(func=cmd_gain_check)

    p = sub.add_parser("paper", help="the paper's Fig. 2g quantities for the four stacks (TMM)")
    p.add_argument("-o", "--output-dir", default="qdcavity-paper",
                   help="folder for paper.nc and the PNG figures (default ./qdcavity-paper)")
    p.set_defaults(func=cmd_paper)

    p = sub.add_parser("compare", help="run a study on several backends and compare every "
                       "quantity against the declared tolerances (exit 1 if one exceeds)")
    p.add_argument("study", help="study .toml file")
    p.add_argument("--backends", required=True, metavar="A,B[,...]",
                   help="comma-separated backends, the first is the reference "
                        "(e.g. tmm,fdmodes,meep)")
    p.add_argument("-o", "--output", help="comparison .nc file (default <study name>.compare.nc)")
    p.add_argument("--figure", help="figure file (default: the output with .png)")
    p.add_argument("--no-figure", action="store_true", help="do not draw the figure")
    p.add_argument("--rows", type=int, default=12, metavar="N",
                   help="print every element of a quantity with at most N elements, else its "
                        "worst one (default 12)")
    p.add_argument("--set", type=parse_assignment, action="append", metavar="FIELD=VALUE",
                   help="override a stack field for the whole study (repeatable)")
    p.add_argument("--executor", choices=("inprocess", "local", "address", "slurm"),
                   help="where tasks run (default: the study's [executor])")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (local cluster)")
    p.add_argument("--cache-dir", metavar="DIR", help="task cache (as for 'run')")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except QdcavityError as exc:
        if debug:
            raise
        print(f"qdcavity: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qdcavity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
