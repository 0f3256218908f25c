"""QA plots an observer opens first: observing conditions, noise against the CCD
equation, master thumbnails. Gathered by ``snakemake --report``."""

from __future__ import annotations

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from astropy.visualization import ZScaleInterval
from matplotlib.figure import Figure

from .lightcurve import ccd_equation_sigma, robust_std
from .recipes import RECIPES


def _save(fig: Figure, path) -> None:
    from .atomic import atomic_path

    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=90, format="png")


def conditions_plot(frames_path, path, title: str) -> None:
    """FWHM, sky and alignment residual of every frame against time; excluded frames marked."""
    # masked (unknown) numbers come back as NaN; a frame with no alignment row was not aligned
    frames = Table.read(frames_path).to_pandas()
    t = (frames["bjd_tdb"] - 2400000.0) if len(frames) else frames.get("bjd_tdb")
    aligned = frames["aligned"].astype("boolean").fillna(False).astype(bool) if len(frames) else []
    fig = Figure(figsize=(8, 7))
    panels = [("fwhm", "FWHM (px)"), ("bkg_median", "sky (e-/px)"), ("residual_rms", "alignment rms (px)")]
    for i, (column, label) in enumerate(panels, 1):
        ax = fig.add_subplot(3, 1, i)
        if column in frames and len(frames):
            ax.plot(t[aligned], frames.loc[aligned, column], "o", ms=3, color="k")
            if (~aligned).any():
                ax.plot(t[~aligned], np.nan_to_num(frames.loc[~aligned, column]), "x", color="red",
                        label=f"{int((~aligned).sum())} excluded")
                ax.legend(loc="best", fontsize=8)
        ax.set_ylabel(label)
    ax.set_xlabel("BJD_TDB - 2400000")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def noise_table(photometry_path, aperture: str, read_noise: float = np.nan) -> pd.DataFrame:
    """Per source: median flux, measured relative scatter and what the error bars predict.

    ``predicted`` is the median relative error bar (``flux_err / flux``): the
    pipeline's own noise model, which knows each amplifier's gain and read noise,
    the sky and the calibration, so it exists for any number of amplifiers.
    ``ccd_equation`` is the textbook curve for one ``read_noise`` (NaN when the
    detector has no single value to give), with the sky level's own error from
    the annulus pixels.
    """
    long = pd.read_parquet(photometry_path)
    columns = ["source_id", "flux", "scatter", "predicted", "ccd_equation", "n"]
    if not len(long):
        return pd.DataFrame(columns=columns)
    rows = long[(long["aperture"] == aperture) & (long["flag"] == 0)]
    # Divide out the frame-to-frame transparency with the median ratio of bright stars.
    wide = rows.pivot_table(index="frame_id", columns="source_id", values="flux")
    reference = wide.median()
    transparency = (wide / reference).median(axis=1)
    relative = wide.div(transparency, axis=0) / reference
    by_source = rows.assign(rel_err=rows["flux_err"] / rows["flux"]).groupby("source_id")
    table = pd.DataFrame({"flux": reference, "scatter": relative.apply(robust_std), "n": relative.count()})
    table["predicted"] = by_source["rel_err"].median().reindex(table.index)
    n_sky = by_source["n_sky"].median().reindex(table.index) if "n_sky" in rows else None
    table["ccd_equation"] = ccd_equation_sigma(table["flux"], by_source["bkg"].median().reindex(table.index),
                                               by_source["area"].median().reindex(table.index),
                                               read_noise if np.isfinite(read_noise) else np.nan, n_sky=n_sky)
    return table[table["n"] >= 3].reset_index()[columns]


def noise_plot(photometry_path, aperture: str, read_noise: float, path, title: str) -> pd.DataFrame:
    """Relative scatter of every star against magnitude, with the error bars' prediction over it."""
    table = noise_table(photometry_path, aperture, read_noise)
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot(1, 1, 1)
    if len(table):
        good = table["flux"] > 0
        mag = -2.5 * np.log10(table.loc[good, "flux"])
        order = np.argsort(mag.to_numpy())
        ax.semilogy(mag, table.loc[good, "scatter"], "o", ms=3, color="k", label="measured (robust rms)")
        ax.semilogy(mag.to_numpy()[order], table.loc[good, "predicted"].to_numpy()[order], "-", color="C1",
                    label="error bars (every amplifier's noise)")
        if np.isfinite(table["ccd_equation"]).any():
            ax.semilogy(mag.to_numpy()[order], table.loc[good, "ccd_equation"].to_numpy()[order], "--",
                        color="C0", lw=1, label="CCD equation")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(f"instrumental magnitude (-2.5 log10 e-, {aperture})")
    ax.set_ylabel("relative scatter")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return table


def masters_plot(master_paths, path, title: str) -> None:
    """Thumbnails of the night's masters (z-scaled), with their QC verdict."""
    paths = list(master_paths)
    columns = max(1, min(4, len(paths)))
    rows = max(1, -(-len(paths) // columns))
    fig = Figure(figsize=(3.2 * columns, 3.4 * rows))
    for i, master in enumerate(paths, 1):
        with fits.open(master) as hdul:
            data, header = hdul[0].data, hdul[0].header
        step = max(1, max(data.shape) // 256)
        thumb = data[::step, ::step]
        ax = fig.add_subplot(rows, columns, i)
        finite = thumb[np.isfinite(thumb)]
        vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0, 1)
        ax.imshow(thumb, origin="lower", cmap="gray", vmin=vmin, vmax=vmax)
        kind = header.get("OBSTYPE", "MASTER").replace("MASTER_", "").lower()
        recipe = RECIPES.get(kind)
        label = header.get("GROUP", "").rsplit("|", 1)[-1] if recipe is not None and recipe.titled_by_group else ""
        ax.set_title(f"{kind} {label} n={header.get('NCOMBINE')} {header.get('QCSTATUS')}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
