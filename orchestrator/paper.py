"""The main job: the paper's Fig. 2 quantities for BE, TE-IZOB, TE-IZOT and TE-DIZO.

Runs the shipped study ``geometries/studies/paper.toml`` (TMM backend), prints the computed
values next to the ones the paper reports, writes ``paper.nc`` and PNG figures. The built-in
stacks use documented stand-in materials and chosen thicknesses for the layers the paper does
not specify, so the numbers are reported beside the paper's, never tuned to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import xarray as xr
from rich.console import Console
from rich.table import Table

from .results import analysis_view, write_netcdf
from .runner import run_study
from .study import load_study

STACKS = ("BE", "TE-IZOB", "TE-IZOT", "TE-DIZO")
WAVELENGTH_NM = 630.0

# What the paper reports (Fig. 2g and text, seed paper); None where it gives no number.
PAPER = {
    "BE": {"gamma": 0.21, "modal_gain_cm": 145.0},
    "TE-IZOB": {},
    "TE-IZOT": {},
    "TE-DIZO": {"gamma": 0.54, "modal_gain_cm": 373.0, "alpha_cm": 320.0, "R_min_nm": 630.0},
}


def study_path() -> Path:
    return Path(str(resources.files("qdcavity.geometries") / "studies" / "paper.toml"))


@dataclass
class StackSummary:
    stack: str
    modes: dict[str, dict[str, float | str]]
    fractions: dict[str, float]
    purcell: float
    r_min_nm: float
    r_min: float


def _by_stack(view: xr.Dataset) -> xr.Dataset:
    return view.swap_dims(point="stack") if "point" in view.dims else view


def _lowest_photonic(modes: xr.Dataset, pol: str) -> dict[str, float | str]:
    sub = modes.sel(polarization=pol, wavelength_nm=WAVELENGTH_NM)
    labels = [str(v) for v in sub.label.values]
    target = f"{pol}0"
    if target not in labels:
        return {"label": "none"}
    m = sub.isel(mode=labels.index(target))
    gain_layer = modes.attrs.get("gain_layer") or "QD"
    neff = complex(m.neff.values)
    return {
        "label": target,
        "neff_real": neff.real,
        "neff_imag": neff.imag,
        "alpha_cm": float(m.alpha_cm),
        "gamma_E": float(m.gamma_E.sel(layer=gain_layer)),
        "gamma_P": float(m.gamma_P.sel(layer=gain_layer)),
        "modal_gain_cm": float(m.modal_gain_cm),
        "net_gain_cm": float(m.net_gain_cm),
        "branch": str(m.branch.values),
    }


def summarize(ds: xr.Dataset) -> list[StackSummary]:
    modes = _by_stack(analysis_view(ds, "modes"))
    dipole = _by_stack(analysis_view(ds, "dipole"))
    refl = _by_stack(analysis_view(ds, "reflectance"))
    out = []
    for name in STACKS:
        frac = dipole.fraction.sel(stack=name, orientation="isotropic",
                                   wavelength_nm=WAVELENGTH_NM)
        spectrum = refl.R.sel(stack=name, angle_deg=0).mean("polarization")
        i_min = int(spectrum.argmin("wavelength_nm"))
        out.append(StackSummary(
            stack=name,
            modes={pol: _lowest_photonic(modes.sel(stack=name), pol) for pol in ("TE", "TM")},
            fractions={str(c): float(frac.sel(channel=c)) for c in frac.channel.values},
            purcell=float(dipole.purcell.sel(stack=name, orientation="isotropic",
                                             wavelength_nm=WAVELENGTH_NM)),
            r_min_nm=float(spectrum.wavelength_nm[i_min]),
            r_min=float(spectrum[i_min]),
        ))
    return out


def _fmt(value: float | str | None, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else format(value, spec)


def print_tables(summaries: list[StackSummary], console: Console) -> None:
    table = Table(title=f"Guided modes at {WAVELENGTH_NM:g} nm, QD layer, G_mat = 690 cm^-1 "
                        "(computed | paper)")
    for col in ("stack", "mode", "neff", "alpha (cm^-1)", "gamma_E", "gamma_P",
                "modal gain (cm^-1)", "net gain (cm^-1)", "branch"):
        table.add_column(col, justify="right")
    for s in summaries:
        paper = PAPER[s.stack]
        for pol in ("TE", "TM"):
            m = s.modes[pol]
            if m["label"] == "none":
                table.add_row(s.stack, f"{pol}0", "not found", *["-"] * 6)
                continue
            is_te = pol == "TE"
            table.add_row(
                s.stack, str(m["label"]),
                f"{m['neff_real']:.4f}+{m['neff_imag']:.5f}i",
                f"{m['alpha_cm']:.0f} | {_fmt(paper.get('alpha_cm') if is_te else None, '.0f')}",
                f"{m['gamma_E']:.3f} | {_fmt(paper.get('gamma') if is_te else None, '.2f')}",
                f"{m['gamma_P']:.3f}",
                f"{m['modal_gain_cm']:.0f} | "
                f"{_fmt(paper.get('modal_gain_cm') if is_te else None, '.0f')}",
                f"{m['net_gain_cm']:+.0f}", str(m["branch"]),
            )
    console.print(table)
    power = Table(title=f"Isotropic dipole in the QD layer centre at {WAVELENGTH_NM:g} nm: "
                        "power split, Purcell factor, reflection valley")
    for col in ("stack", "air", "substrate", "waveguide", "spp", "absorbed", "Purcell",
                "R min at (nm) | paper", "R min"):
        power.add_column(col, justify="right")
    for s in summaries:
        f = s.fractions
        power.add_row(s.stack, *(f"{f[c]:.3f}" for c in ("air", "substrate", "waveguide", "spp",
                                                          "absorbed")),
                      f"{s.purcell:.3f}",
                      f"{s.r_min_nm:.1f} | {_fmt(PAPER[s.stack].get('R_min_nm'), '.0f')}",
                      f"{s.r_min:.3f}")
    console.print(power)


def claims(summaries: list[StackSummary]) -> list[tuple[str, bool]]:
    """The paper's qualitative statements, checked on the computed numbers."""
    by = {s.stack: s for s in summaries}
    te = {k: s.modes["TE"] for k, s in by.items()}
    dizo = "TE-DIZO"
    net_positive = [k for k, m in te.items() if m.get("net_gain_cm", -1) > 0]
    spp = {k: s.fractions["spp"] for k, s in by.items()}
    wg = {k: s.fractions["waveguide"] for k, s in by.items()}
    gamma = {k: m.get("gamma_E", 0.0) for k, m in te.items()}
    return [
        ("net TE0 gain positive only for TE-DIZO", net_positive == [dizo]),
        ("TE-DIZO has the highest QD confinement", max(gamma, key=gamma.get) == dizo),
        ("TE-DIZO has the lowest SPP share", min(spp, key=spp.get) == dizo),
        ("TE-DIZO has the highest waveguide share", max(wg, key=wg.get) == dizo),
        ("TE-DIZO reflection valley within 10 nm of 630 nm", abs(by[dizo].r_min_nm - 630) <= 10),
    ]


def run_paper(out_dir: Path, console: Console | None = None) -> int:
    """Compute, print, write ``paper.nc`` and the figures into ``out_dir``; exit status 0."""
    from .figures import paper_figures

    console = console or Console()
    study = load_study(study_path())
    ds = run_study(study, use_cache=False)  # seconds of work; never write into the package
    out_dir.mkdir(parents=True, exist_ok=True)
    write_netcdf(ds, out_dir / "paper.nc")
    summaries = summarize(ds)
    print_tables(summaries, console)
    console.print("Paper's qualitative claims, on the computed numbers:")
    for text, ok in claims(summaries):
        console.print(f"  [{'green' if ok else 'yellow'}]{'reproduced' if ok else 'NOT reproduced'}"
                      f"[/]: {text}")
    written = paper_figures(ds, out_dir)
    console.print(f"wrote {out_dir / 'paper.nc'} and {len(written)} figures in {out_dir}")
    failed = int(ds.attrs.get("n_failed", 0))
    if failed:
        console.print(f"[red]{failed} task(s) failed[/]: see the 'error' variables")
    return 1 if failed else 0


__all__ = ["PAPER", "claims", "run_paper", "summarize"]
