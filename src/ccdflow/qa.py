"""QA plots an observer opens first: observing conditions, noise against the CCD
equation, master thumbnails. Gathered by ``snakemake --report``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from astropy.visualization import ZScaleInterval
from matplotlib.figure import Figure

from .ccdio import science_hdu
from .lightcurve import ccd_equation_sigma, robust_std
from .recipes import RECIPES


def _save(fig: Figure, path) -> None:
    from .atomic import atomic_path

    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=90, format="png")


def _night_hours(mjd_utc: np.ndarray) -> tuple[np.ndarray, str]:
    """Hours UT from 0h of the first frame's UTC date (past 24 after midnight), and that date."""
    from astropy.time import Time

    finite = mjd_utc[np.isfinite(mjd_utc)]
    day = float(np.floor(finite.min())) if finite.size else 0.0
    date = Time(day, format="mjd", scale="utc").iso[:10] if finite.size else "?"
    return (mjd_utc - day) * 24.0, date


def _frame_times(frames: pd.DataFrame) -> tuple[np.ndarray, str, tuple | None]:
    """x of each frame (hours UT), the axis label, and (slope, intercept) of BJD_TDB against it."""
    bjd = frames["bjd_tdb"].to_numpy(float) if "bjd_tdb" in frames else np.full(len(frames), np.nan)
    if "mjd_utc" in frames and np.isfinite(frames["mjd_utc"].to_numpy(float)).any():
        hours, date = _night_hours(frames["mjd_utc"].to_numpy(float))
        both = np.isfinite(hours) & np.isfinite(bjd)
        fit = tuple(np.polyfit(hours[both], bjd[both], 1)) if both.sum() >= 2 and np.ptp(hours[both]) > 0 else None
        return hours, f"hours UT on {date} (24 and more: the next UT day)", fit
    offset = float(np.floor(np.nanmin(bjd))) if np.isfinite(bjd).any() else 0.0
    return bjd - offset, f"BJD_TDB - {offset:.0f} (days)", None


def conditions_plot(frames_path, path, title: str, transparency_path=None) -> None:
    """Airmass, FWHM, sky, transparency and alignment residual of every frame against
    time (hours UT, BJD_TDB on the top axis); frames not aligned, and frames through
    cloud, marked. ``transparency_path``: the light curves' transparency.ecsv (its panel
    says when there is none)."""
    # masked (unknown) numbers come back as NaN; a frame with no alignment row was not aligned
    frames = Table.read(frames_path).to_pandas()
    if transparency_path is not None and Path(transparency_path).exists() and len(frames):
        clouds = Table.read(transparency_path).to_pandas()[["frame_id", "transparency", "cloudy"]]
        frames = frames.merge(clouds, on="frame_id", how="left")
    x, xlabel, to_bjd = _frame_times(frames) if len(frames) else (np.zeros(0), "time", None)
    aligned = (frames["aligned"].astype("boolean").fillna(False).to_numpy(bool) if len(frames)
               else np.zeros(0, bool))
    cloudy = (frames["cloudy"].astype("boolean").fillna(False).to_numpy(bool) if "cloudy" in frames
              else np.zeros(len(frames), bool))
    panels = [("airmass", "airmass", "no airmass (no site in the instrument profile)"),
              ("fwhm", "FWHM (px)", "no FWHM"),
              ("bkg_median", "sky (e-/px)", "no sky measured (no photometry)"),
              ("transparency", "transparency", "no transparency (no light curves)"),
              ("residual_rms", "alignment rms (px)", "no alignment residuals")]
    fig = Figure(figsize=(8, 9.5), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (column, label, missing) in zip(axes, panels):
        values = frames[column].to_numpy(float) if column in frames else np.full(len(frames), np.nan)
        ax.set_ylabel(label)
        ax.grid(alpha=0.25)
        if not np.isfinite(values).any():
            ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center", color="0.4")
            continue
        clear = aligned & ~cloudy
        ax.plot(x[clear], values[clear], "o", ms=3, color="k", label="frames")
        if (aligned & cloudy).any():
            ax.plot(x[aligned & cloudy], values[aligned & cloudy], "x", ms=5, color="0.5",
                    label=f"{int((aligned & cloudy).sum())} through cloud (flagged)")
        if (~aligned).any():
            shown = np.isfinite(values) & ~aligned
            ax.plot(x[shown], values[shown], "x", color="red", label=f"{int((~aligned).sum())} not aligned (excluded)")
        if column == "transparency":
            from .lightcurve import MIN_TRANSPARENCY

            ax.axhline(MIN_TRANSPARENCY, color="0.5", ls="--", lw=1, label=f"cloud below {MIN_TRANSPARENCY:.2f}")
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(loc="best", fontsize=7)
    axes[-1].set_xlabel(xlabel)
    if to_bjd is not None:
        slope, intercept = to_bjd
        offset = float(np.floor(intercept + slope * np.nanmin(x)))
        top = axes[0].secondary_xaxis("top", functions=(lambda h: slope * h + intercept - offset,
                                                        lambda b: (b + offset - intercept) / slope))
        top.set_xlabel(f"BJD_TDB - {offset:.0f} (days)")
    fig.suptitle(title)
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
            data, header = science_hdu(hdul).data, hdul[0].header
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


# -- per field: a finder chart and where the targets' apertures lost pixels ------------------
def _named_targets(summary: dict) -> dict[str, dict]:
    """The named targets of a light-curve summary (not the ``src*`` field sources)."""
    return {name: info for name, info in summary.items()
            if isinstance(info, dict) and not name.startswith("src") and not info.get("elsewhere")}


def _read_summary(lightcurves) -> dict:
    import json

    path = Path(lightcurves) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _compass(ax, wcs, shape) -> None:
    """N and E arrows from the WCS, in the image's upper-left corner."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    ny, nx = shape
    x0, y0 = 0.12 * nx, 0.85 * ny
    length = 0.08 * max(nx, ny)
    ra, dec = wcs.wcs_pix2world([[x0, y0]], 0)[0]
    step = float(np.mean(proj_plane_pixel_scales(wcs))) * length  # degrees along the arrow
    for label, (dra, ddec) in (("N", (0.0, step)), ("E", (step / max(np.cos(np.radians(dec)), 1e-3), 0.0))):
        x1, y1 = wcs.wcs_world2pix([[ra + dra, dec + ddec]], 0)[0]
        vx, vy = x1 - x0, y1 - y0
        norm = np.hypot(vx, vy) or 1.0
        vx, vy = vx / norm * length, vy / norm * length
        ax.annotate("", xy=(x0 + vx, y0 + vy), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "C3", "lw": 1.8})
        ax.text(x0 + 1.3 * vx, y0 + 1.3 * vy, label, color="C3", ha="center", va="center", fontsize=11,
                fontweight="bold")


def _display_norm(pixels: np.ndarray):
    """From the z-scale's lower limit (the sky) to 20 z-scale ranges above it, asinh
    between: the sky's noise stays pale, the faint stars show and the bright ones keep a
    core, however many or few saturated stars the field holds."""
    from astropy.visualization import AsinhStretch, ImageNormalize

    if not pixels.size:
        return ImageNormalize(vmin=0.0, vmax=1.0)
    low, high = ZScaleInterval().get_limits(pixels)
    top = min(low + 20.0 * (high - low), float(pixels.max()))
    return ImageNormalize(vmin=low, vmax=top if top > low else low + 1.0, stretch=AsinhStretch(0.1), clip=True)


def finder_chart(stack_path, catalogue_path, lightcurves, path, title: str) -> dict:
    """The field's stacked reference image (black on white: z-scale sky, asinh stretch)
    with every named target circled and named, and its comparison stars marked with
    their ensemble weights (in per cent, one line per target they serve, in its colour);
    RA/Dec axes and an N/E compass when the stack has a plate solution.
    Returns ``{target: number of comparison stars marked}``."""
    from astropy.wcs import WCS
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    from .wcsutil import celestial_header

    with fits.open(stack_path) as hdul:
        stack, header = hdul[0].data.astype(float), hdul[0].header
        weight = hdul["WEIGHT"].data if "WEIGHT" in hdul else None
    celestial = celestial_header(header)
    wcs = WCS(celestial) if len(celestial) else None
    catalogue = Table.read(catalogue_path)
    targets = _named_targets(_read_summary(lightcurves))
    fig = Figure(figsize=(8.5, 8.8), layout="constrained")
    ax = fig.add_subplot(projection=wcs) if wcs is not None else fig.add_subplot()
    marked: dict[str, int] = {}
    if not header.get("REFFRAME") or stack.size <= 1:
        ax.text(0.5, 0.5, "the field could not be aligned: no stacked reference image",
                transform=ax.transAxes, ha="center", va="center")
        fig.suptitle(title)
        _save(fig, path)
        return marked
    covered = np.isfinite(stack)
    if weight is not None and weight.shape == stack.shape:
        covered &= weight > 0
    ax.imshow(np.where(covered, stack, np.nan), origin="lower", cmap="gray_r", norm=_display_norm(stack[covered]),
              interpolation="nearest")
    ny, nx = stack.shape
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    rows = {int(s): i for i, s in enumerate(catalogue["source_id"])}
    fwhm = float(catalogue.meta.get("fwhm", 3.0))
    radius = max(4.0 * fwhm, 0.015 * max(nx, ny))
    box = {"facecolor": "white", "alpha": 0.75, "pad": 1.2, "lw": 0}

    placed: list[tuple[float, float, float, float]] = []   # labels' boxes (x0, y0, x1, y1), pixels

    def label(x, y, gap, text, colour, size, lines=1):
        """Text beside (x, y) at ``gap`` px, on the first side where it overlaps no earlier
        label and stays on the image (else the first side)."""
        longest = max(len(t) for t in text.split("\n"))
        width, height = 0.00125 * size * longest * nx, 0.0022 * size * lines * ny
        sides = [(1, -1), (-1, -1), (1, 1), (-1, 1)]
        boxes = []
        for sx, sy in sides:
            x0 = x + sx * gap - (width if sx < 0 else 0)
            y0 = y + sy * gap - (height if sy < 0 else 0)
            boxes.append((sx, sy, (x0, y0, x0 + width, y0 + height)))
        def free(b):
            inside = b[0] >= 0 and b[1] >= 0 and b[2] <= nx and b[3] <= ny
            return inside and not any(b[0] < q[2] and q[0] < b[2] and b[1] < q[3] and q[1] < b[3] for q in placed)
        sx, sy, b = next((c for c in boxes if free(c[2])), boxes[0])
        placed.append(b)
        for line, (text_line, colour_line) in enumerate(zip(text.split("\n"), colour)):
            ax.text(b[0], b[3] - line * height / lines, text_line, color=colour_line, fontsize=size,
                    fontweight="bold", ha="left", va="top", bbox=box)

    legend, served = [], {}   # comparison source -> [(colour, weight)]
    for k, (name, info) in enumerate(targets.items()):
        source = info.get("source_id")
        if "error" in info or source is None or int(source) not in rows:
            continue
        colour = f"C{k % 10}" if k % 10 != 7 else "C9"   # C7 is grey: not on a grey image
        i = rows[int(source)]
        x, y = float(catalogue["x"][i]), float(catalogue["y"][i])
        ax.add_patch(Circle((x, y), radius, fill=False, color=colour, lw=2.2))
        label(x, y, 0.8 * radius, name, [colour], 11)
        placed.append((x - radius, y - radius, x + radius, y + radius))  # the comparisons' labels keep off it
        weights = info.get("weights") or {}
        comparisons = [int(c) for c in info.get("comparisons", []) if int(c) in rows]
        for c in comparisons:
            served.setdefault(c, []).append((colour, weights.get(str(c))))
        marked[name] = len(comparisons)
        legend.append((Line2D([], [], marker="o", ms=11, mfc="none", mec=colour, mew=2.2, ls="none"),
                       f"{name} (source {source}, {info.get('aperture', '?')})"))
        legend.append((Line2D([], [], marker="o", ms=8, mfc="none", mec=colour, mew=1.2, ls="none"),
                       f"its {len(comparisons)} comparison stars: weight in the ensemble"
                       + ("" if weights else " (not recorded)")))
    for c, uses in served.items():
        j = rows[c]
        cx, cy = float(catalogue["x"][j]), float(catalogue["y"][j])
        ring = uses[0][0] if len(uses) == 1 else "C9"
        ax.add_patch(Circle((cx, cy), 0.6 * radius, fill=False, color=ring, lw=1.3, ls="--"))
        texts = [f"{100 * w:.0f}%" if w is not None and np.isfinite(w) else "C" for _, w in uses]
        label(cx, cy, 0.5 * radius, "\n".join(texts), [colour for colour, _ in uses], 8, lines=len(uses))
    if legend:
        fig.legend([h for h, _ in legend], [t for _, t in legend], loc="outside lower center", ncol=2, fontsize=8,
                   frameon=False)
    missing = [f"{name}: {info['error']}" for name, info in targets.items() if "error" in info]
    if wcs is not None:
        ax.coords[0].set_axislabel("RA (ICRS)")
        ax.coords[1].set_axislabel("Dec (ICRS)")
        ax.coords.grid(color="0.3", alpha=0.3, ls=":")
        _compass(ax, wcs, stack.shape)
        where = "RA/Dec from the reference frame's plate solution"
    else:
        ax.set_xlabel("x (px, reference frame)")
        ax.set_ylabel("y (px, reference frame)")
        where = "no plate solution: pixel axes of the reference frame"
    note = f"stack of {header.get('NSTACK', '?')} frames; {where}"
    if len(served) > sum(1 for uses in served.values() if len(uses) == 1):
        note += "; cyan dashed: a comparison star of several targets"
    if missing:
        note += "\nnot placed: " + "; ".join(missing)
    ax.set_title(note, fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
    return marked


# What the aperture touched, and what became of it: (column test, label).
MASK_REASONS = [
    ("COSMIC_RAY", "cosmic ray"),
    ("SATURATED", "saturated"),
    ("HOT", "hot pixel"),
    ("BAD", "bad pixel (master)"),
    ("LOW_FLAT", "low flat response"),
    ("NO_DATA", "no data"),
]


def _mask_counts(rows: pd.DataFrame) -> list[tuple[str, str, float | None]]:
    """(what, label, frames) for the photometry rows of one source and aperture."""
    from . import bitmask

    n = len(rows)
    masked = rows["n_masked"].to_numpy() if "n_masked" in rows else np.zeros(n)
    repaired = rows["n_repaired"].to_numpy() if "n_repaired" in rows else np.zeros(n)
    counts = [("lost", "pixels masked (repaired or left out)", int(np.sum((masked + repaired) > 0))),
              ("repaired", "... repaired from the star's profile", int(np.sum(repaired > 0))),
              ("left_out", "... left out: frame rejected", int(np.sum(masked > 0)))]
    bits = rows["mask_bits"].to_numpy(int) if "mask_bits" in rows else None
    for key, label in MASK_REASONS:
        bit = getattr(bitmask, key)
        counts.append((key.lower(), f"touches {label}", int(np.sum((bits & bit) != 0)) if bits is not None else None))
    return counts


def aperture_mask_table(photometry_path, lightcurves) -> pd.DataFrame:
    """Per named target (in the aperture of its light curve): of the frames measured, how
    many had aperture pixels masked (``lost``), repaired from the star's profile
    (``repaired``) or left out so that the frame is rejected (``left_out``), and how many
    touched pixels flagged for each reason of :data:`MASK_REASONS` (the photometry's
    ``mask_bits``; NaN where the photometry predates that column); ``comparisons``: the
    same fraction over the target's comparison stars (frames x stars). One row per
    (target, what)."""
    columns = ["target", "source_id", "aperture", "what", "label", "frames", "of", "fraction", "comparisons"]
    targets = {name: info for name, info in _named_targets(_read_summary(lightcurves)).items() if "error" not in info}
    if not targets:
        return pd.DataFrame(columns=columns)
    wanted = ["frame_id", "source_id", "aperture", "n_masked", "n_repaired", "flag", "mask_bits"]
    long = pd.read_parquet(photometry_path)
    long = long[[c for c in wanted if c in long]]
    out = []
    for name, info in targets.items():
        in_aperture = long[long["aperture"] == info["aperture"]]
        rows = in_aperture[in_aperture["source_id"] == info["source_id"]]
        ensemble = in_aperture[in_aperture["source_id"].isin([int(c) for c in info.get("comparisons", [])])]
        theirs = {what: k for what, _, k in _mask_counts(ensemble)}
        n = len(rows)
        for what, label, k in _mask_counts(rows):
            share = theirs[what] / len(ensemble) if theirs[what] is not None and len(ensemble) else np.nan
            out.append({"target": name, "source_id": int(info["source_id"]), "aperture": info["aperture"],
                        "what": what, "label": label, "frames": np.nan if k is None else k, "of": n,
                        "fraction": np.nan if k is None or n == 0 else k / n, "comparisons": share})
    return pd.DataFrame(out, columns=columns)


def aperture_mask_plot(photometry_path, lightcurves, path, title: str) -> pd.DataFrame:
    """Bars per named target: the share of its frames whose aperture lost pixels to the
    mask, how they were handled, and why (:func:`aperture_mask_table`), with its
    comparison stars' share beside each for scale."""
    table = aperture_mask_table(photometry_path, lightcurves)
    names = list(dict.fromkeys(table["target"]))
    fig = Figure(figsize=(8, 1.2 + 3.0 * max(1, len(names))), layout="constrained")
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no named target with a light curve in this field", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    top = float(np.nanmax(np.r_[table["fraction"].to_numpy(float), table["comparisons"].to_numpy(float), 0.0]))
    limit = 100 * min(1.0, max(0.05, 1.2 * top))
    for k, name in enumerate(names, 1):
        rows = table[table["target"] == name]
        ax = fig.add_subplot(len(names), 1, k)
        fraction = 100 * rows["fraction"].to_numpy(float)
        y = np.arange(len(rows))[::-1].astype(float)
        colours = ["C3", "C2", "C3"] + ["C0"] * (len(rows) - 3)
        ax.barh(y + 0.17, np.nan_to_num(fraction), height=0.34, color=colours, alpha=0.85, label="target")
        ax.barh(y - 0.17, np.nan_to_num(100 * rows["comparisons"].to_numpy(float)), height=0.34, color="0.6",
                label="its comparison stars (all their frames)")
        for yi, f, k_, n in zip(y, fraction, rows["frames"], rows["of"]):
            text = ("no frame measured" if not n else "not recorded (photometry before mask_bits)"
                    if not np.isfinite(f) else f"{int(k_)} of {int(n)} frames")
            ax.text(np.nan_to_num(f) + 0.01 * limit, yi + 0.17, text, va="center", fontsize=7)
        ax.set_yticks(y, list(rows["label"]), fontsize=8)
        ax.set_xlim(0, limit * 1.18)
        ax.set_xlabel("per cent of the frames measured")
        first = rows.iloc[0]
        lost = int(np.nan_to_num(first["frames"]))
        ax.set_title(f"{name} (source {first['source_id']}, {first['aperture']}): {int(first['of'])} frames, "
                     + (f"pixels masked in {lost}" if lost else "no aperture pixel masked in any frame"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if k == 1:
            ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
    return table
