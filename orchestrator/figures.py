"""Figures of the main job (PNG, matplotlib's non-interactive Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from .results import analysis_view  # noqa: E402
from .stack import load_stack  # noqa: E402

LAYER_COLOURS = {"Ag": "#b0b0b0", "IZO": "#cfe3f5", "PEDOT:PSS": "#f5e6c8", "TFB": "#e3d5f0",
                 "QD": "#f7b7a3", "ZnMgO": "#d6f0d0"}


def _by_stack(view: xr.Dataset) -> xr.Dataset:
    return view.swap_dims(point="stack") if "point" in view.dims else view


def shade_layers(ax: plt.Axes, stack_name: str) -> None:
    stack = load_stack(stack_name)
    z = stack.interfaces_nm
    for layer, z0, z1 in zip(stack.layers, z[:-1], z[1:], strict=True):
        colour = LAYER_COLOURS.get(str(layer.material), "#eeeeee")
        ax.axvspan(z0, z1, color=colour, alpha=0.6, lw=0)
        ax.text((z0 + z1) / 2, 1.02, layer.name, rotation=90, ha="center", va="bottom",
                fontsize=6, transform=ax.get_xaxis_transform())


def field_profiles(ds: xr.Dataset, path: Path) -> Path:
    modes = _by_stack(analysis_view(ds, "modes"))
    stacks = [str(s) for s in modes["stack"].values]
    fig, axes = plt.subplots(len(stacks), 1, figsize=(7, 2.4 * len(stacks)), sharex=False)
    for ax, name in zip(np.atleast_1d(axes), stacks, strict=True):
        sub = modes.sel(stack=name).isel(wavelength_nm=0)
        for pol, field, style in (("TE", "field_Ey", "-"), ("TM", "field_Hy", "--")):
            labels = [str(v) for v in sub.sel(polarization=pol).label.values]
            if f"{pol}0" not in labels:
                continue
            m = sub.sel(polarization=pol).isel(mode=labels.index(f"{pol}0"))
            values = np.abs(m[field].values) ** 2
            keep = np.isfinite(values)
            ax.plot(sub.z_nm.values[keep], values[keep] / values[keep].max(), style,
                    label=f"{pol}0 |{field[6:]}|$^2$")
        shade_layers(ax, name)
        ax.set_ylabel("normalized")
        ax.set_title(name, loc="left", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel("z (nm), substrate top at 0")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def k_maps(ds: xr.Dataset, path: Path) -> Path:
    dip = _by_stack(analysis_view(ds, "dipole"))
    stacks = [str(s) for s in dip["stack"].values]
    fig, axes = plt.subplots(1, len(stacks), figsize=(3.2 * len(stacks), 3.2), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), stacks, strict=True):
        k = dip.K.sel(stack=name, orientation="isotropic").transpose("wavelength_nm", "u")
        data = np.log10(np.clip(k.values, 1e-4, None))
        mesh = ax.pcolormesh(dip.u.values, dip.wavelength_nm.values, data, shading="auto",
                             cmap="inferno", vmin=-3, vmax=max(1.5, float(np.nanmax(data))))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("u = kx / (k0 n_QD)")
    np.atleast_1d(axes)[0].set_ylabel("wavelength (nm)")
    fig.colorbar(mesh, ax=axes, label="log10 K(u), isotropic dipole")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def reflectance_spectra(ds: xr.Dataset, path: Path) -> Path:
    refl = _by_stack(analysis_view(ds, "reflectance"))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in refl["stack"].values:
        spectrum = refl.R.sel(stack=name, angle_deg=0).mean("polarization")
        side = str(refl["reflectance.incidence"].sel(stack=name).values) \
            if "reflectance.incidence" in refl.coords else ""
        ax.plot(refl.wavelength_nm, spectrum, label=f"{name} ({side} side)" if side else name)
    ax.axvline(630, color="k", lw=0.6, ls=":")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("R (normal incidence)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def fig2g_bars(ds: xr.Dataset, path: Path) -> Path:
    from .paper import WAVELENGTH_NM, summarize

    summaries = summarize(ds)
    names = [s.stack for s in summaries]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    bottom = np.zeros(len(names))
    for channel in ("spp", "waveguide", "substrate", "air", "absorbed"):
        values = np.array([s.fractions[channel] for s in summaries])
        ax1.bar(names, values, bottom=bottom, label=channel)
        bottom += values
    ax1.set_ylabel("fraction of dipole power")
    ax1.set_title(f"power dissipation at {WAVELENGTH_NM:g} nm", fontsize=9)
    ax1.legend(fontsize=7)
    x = np.arange(len(names))
    te = [s.modes["TE"] for s in summaries]
    for offset, key, label in ((-0.27, "modal_gain_cm", "modal gain (gamma_P G_mat)"),
                               (0.0, "alpha_cm", "loss alpha"),
                               (0.27, "net_gain_cm", "net gain")):
        ax2.bar(x + offset, [m.get(key, np.nan) for m in te], width=0.27, label=label)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xticks(x, names)
    ax2.set_ylabel("TE0 (cm$^{-1}$)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def paper_figures(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    return [
        field_profiles(ds, out_dir / "te0_field_profiles.png"),
        k_maps(ds, out_dir / "dipole_K_maps.png"),
        reflectance_spectra(ds, out_dir / "reflectance.png"),
        fig2g_bars(ds, out_dir / "fig2g.png"),
    ]


def outcoupling_figures(ds: xr.Dataset, out_dir: Path, name: str = "outcoupling") -> list[Path]:
    """Escape fraction, angular pattern in air and vertical VSL output versus stripe length."""
    view = _by_stack(analysis_view(ds, name))
    entries = [str(s) for s in view["stack"].values] if "stack" in view.dims else [None]
    wl = float(view.wavelength_nm[0])

    def pick(var: str, entry: str | None) -> xr.DataArray:
        data = view[var].sel(wavelength_nm=wl)
        return data.sel(stack=entry) if entry is not None else data

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = [e or "stack" for e in entries]
    ax1.bar(labels, [float(pick("escape_fraction", e)) for e in entries])
    ax1.set_ylabel("escape fraction to air per scattering event")
    for entry, label in zip(entries, labels, strict=True):
        ax2.plot(view.angle_deg, pick("angular_pattern", entry), label=label)
        nominal = float(pick("material_gain_nominal_cm", entry))
        vertical = pick("vertical_output", entry).sel(material_gain_cm=nominal, method="nearest")
        ax3.semilogy(view.stripe_length_um, vertical.where(vertical > 0), label=label)  # L > 0
    ax2.set_xlabel("angle in air (deg)")
    # 3D: power per solid angle; 2D (y-invariant cells): power per radian in the x-z plane
    per = "dtheta" if view.attrs.get("geometry") == "2d" else "dOmega"
    ax2.set_ylabel(f"dP/{per} (normalized)")
    ax3.set_xlabel("stripe length (um)")
    ax3.set_ylabel("vertical output (a.u.)")
    ax3.set_title(f"G_mat = {nominal:g} cm$^{{-1}}$", fontsize=9)
    for ax in (ax2, ax3):
        ax.legend(fontsize=7)
    fig.suptitle(f"{view.attrs.get('mode', '')} scattering outcoupling at {wl:g} nm", fontsize=10)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return [path]


def study_figures(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """Figures for the analyses of a study result that have one (currently: outcoupling)."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = json.loads(ds.attrs.get("analysis_kinds", "{}"))
    return [p for name, kind in kinds.items() if kind == "outcoupling"
            for p in outcoupling_figures(ds, out_dir, name)]
