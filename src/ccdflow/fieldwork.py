"""Per-field stages: align, reference catalogue, forced photometry, merged table, light curves.

The rule scripts call these; each takes file paths and config blocks and writes
its products atomically. Alignment moves catalogue positions: pixels are
resampled only for the stacked reference image.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table

from . import bitmask
from .align import AlignLimits, Transform, align_field, detect_sources, stack_reference
from .atomic import atomic_path, write_text
from .ccdio import Product
from .photometry import ApertureSpec, forced_photometry
from .timescale import barycentric_times
from .wcsutil import celestial_header

log = logging.getLogger(__name__)


def write_table(table: Table | pd.DataFrame, path, formats=("ecsv",)) -> None:
    """Write a table atomically as ECSV and/or Parquet (the suffix of ``path`` is replaced)."""
    if not isinstance(table, Table):
        table = Table.from_pandas(table)
        # from_pandas masks NaN; a masked float is written as '' and then cannot be read
        # back with fill_values=[] (the way to keep empty strings): keep it NaN
        for name in table.colnames:
            if table[name].dtype.kind == "f" and getattr(table[name], "mask", None) is not None:
                table[name] = table[name].filled(np.nan)
    for fmt in formats:
        target = Path(path).with_suffix(f".{fmt}")
        with atomic_path(target) as temp:
            if fmt == "ecsv":
                table.write(temp, format="ascii.ecsv")
            else:
                table.to_pandas().to_parquet(temp, index=False)


def align(frame_paths: dict[str, str], transforms_path, stack_path, align_cfg: dict) -> Table:
    """Align every frame of a field; write the transforms table and the stacked reference."""
    limits = AlignLimits(**{k: align_cfg[k] for k in ("max_rotation_deg", "max_scale_dev", "max_shift_px",
                                                      "min_matches", "kind") if k in align_cfg})
    frames = [{"frame_id": fid, "path": path} for fid, path in frame_paths.items()]
    try:
        reference, table = align_field(frames, limits, threshold_sigma=align_cfg.get("threshold_sigma", 5.0),
                                       max_sources=align_cfg.get("max_sources", 300))
    except ValueError as err:
        # No usable reference at all (too few stars everywhere): every frame is
        # listed as not aligned, with the reason, and the field's products are empty.
        log.error("field not aligned: %s", err)
        return _unaligned_field(frames, str(err), transforms_path, stack_path)
    table["reference"] = [i == reference for i in range(len(table))]
    for row in table[~np.asarray(table["ok"], bool)]:
        log.warning("frame %s not aligned: %s", row["frame_id"], row["reason"])
    write_table(table, transforms_path)
    ref = Product.read(frames[reference]["path"])
    stack, weight = stack_reference(frames, table, ref.data.shape, max_frames=align_cfg.get("stack_frames", 20))
    header = fits.Header()
    header["REFFRAME"] = (table["frame_id"][reference], "reference frame of the field")
    header["NSTACK"] = (int(weight.max()), "frames stacked (at most)")
    # the stack lies on the reference frame's pixels: its WCS (distortion terms too) gives
    # the catalogue its sky coordinates
    header.update(celestial_header(ref.header))
    with atomic_path(stack_path) as temp:
        fits.HDUList([fits.PrimaryHDU(np.nan_to_num(stack).astype(np.float32), header),
                      fits.ImageHDU(weight.astype(np.int16), name="WEIGHT")]).writeto(temp)
    return table


def _unaligned_field(frames, reason, transforms_path, stack_path) -> Table:
    nan = np.full(len(frames), np.nan)
    table = Table({"frame_id": [f["frame_id"] for f in frames], "ok": np.zeros(len(frames), bool),
                   "method": ["none"] * len(frames), "n_sources": np.zeros(len(frames), int), "fwhm": nan,
                   "n_matches": np.zeros(len(frames), int), "residual_rms": nan, "rotation_deg": nan,
                   "scale": nan, "dx": nan, "dy": nan, **{k: nan for k in "abcdef"},
                   "reason": [f"field not aligned: {reason}"] * len(frames),
                   "reference": np.zeros(len(frames), bool)})
    write_table(table, transforms_path)
    header = fits.Header({"REFFRAME": ""})
    with atomic_path(stack_path) as temp:
        fits.HDUList([fits.PrimaryHDU(np.zeros((1, 1), np.float32), header),
                      fits.ImageHDU(np.zeros((1, 1), np.int16), name="WEIGHT")]).writeto(temp)
    return table


def _empty_catalogue() -> Table:
    columns = {"id": int, "x": float, "y": float, "flux": float, "rank": int, "saturated": bool, "edge": bool,
               "blended": bool, "ra": float, "dec": float}
    return Table({name: np.array([], dtype) for name, dtype in columns.items()})


def reference_catalogue(stack_path, transforms_path, reference_path, catalogue_path, cat_cfg: dict,
                        spec: ApertureSpec) -> Table:
    """Sources of the stacked reference, ranked by flux, with saturated/edge/blended flags."""
    with fits.open(stack_path) as hdul:
        stack, weight, header = hdul[0].data.astype(float), hdul["WEIGHT"].data, hdul[0].header
    if not header.get("REFFRAME"):  # the field could not be aligned
        catalogue = _empty_catalogue()
        write_table(catalogue, catalogue_path)
        return catalogue
    transforms = Table.read(transforms_path)
    ok = transforms[np.asarray(transforms["ok"], bool)]
    fwhm = float(np.nanmedian(ok["fwhm"])) if len(ok) else 3.0
    covered = weight >= max(1, int(0.5 * weight.max()))
    sources = detect_sources(stack, None, (~covered).astype(np.uint16), fwhm=fwhm,
                             threshold_sigma=cat_cfg.get("threshold_sigma", 5.0),
                             max_sources=cat_cfg.get("max_sources", 3000))
    sources.sort("flux", reverse=True)
    reference = Product.read(reference_path)
    ny, nx = stack.shape
    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    outer = spec.annulus(fwhm)[1]
    # Saturated: the reference frame itself has SATURATED pixels within 2 FWHM.
    sat_mask = (reference.mask & bitmask.SATURATED) != 0
    near = np.zeros(len(sources), bool)
    r = int(np.ceil(2 * fwhm))
    for i, (xi, yi) in enumerate(zip(x, y)):
        x0, y0 = int(round(xi)), int(round(yi))
        near[i] = sat_mask[max(0, y0 - r):y0 + r + 1, max(0, x0 - r):x0 + r + 1].any()
    edge = (x < outer) | (y < outer) | (x > nx - 1 - outer) | (y > ny - 1 - outer)
    blended = np.zeros(len(sources), bool)
    if len(sources) > 1:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([x, y]))
        flux = np.asarray(sources["flux"], float)
        for i, neighbours in enumerate(tree.query_ball_point(np.column_stack([x, y]), 3 * fwhm)):
            others = [j for j in neighbours if j != i]
            blended[i] = any(flux[j] > 0.05 * flux[i] for j in others)
    catalogue = Table({"id": np.arange(1, len(sources) + 1), "x": x, "y": y,
                       "flux": np.asarray(sources["flux"], float), "rank": np.arange(1, len(sources) + 1),
                       "saturated": near | np.asarray(sources["saturated"], bool), "edge": edge, "blended": blended})
    catalogue["ra"], catalogue["dec"] = np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from astropy.wcs import WCS

        wcs = WCS(header)
        if wcs.has_celestial and len(catalogue):
            # A plate solution whose numbers were lost on the way (e.g. written as strings)
            # comes back as a default WCS, 1 deg per pixel at (0, 0): sky coordinates from
            # it would be nonsense, so a pixel scale outside 0.036"-3' counts as no WCS.
            scale = wcs.celestial.proj_plane_pixel_scales()
            scale = np.array([getattr(v, "value", v) for v in scale], float)
            if np.all((scale > 1e-5) & (scale < 0.05)):
                sky = wcs.celestial.pixel_to_world(x, y)
                catalogue["ra"], catalogue["dec"] = sky.ra.deg, sky.dec.deg
            else:
                log.warning("the reference frame's WCS is ignored: %s deg per pixel is no plate solution",
                            np.round(scale, 6).tolist())
    catalogue.meta.update(fwhm=fwhm, reference=header.get("REFFRAME", ""), wcs=bool(np.isfinite(catalogue["ra"]).any()))
    write_table(catalogue, catalogue_path)
    return catalogue


def photometry_frames(frames: list[dict], transforms_path, catalogue_path, outdir, spec: ApertureSpec) -> dict:
    """Forced photometry of the catalogue on each frame, at its transformed positions."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    transforms = {row["frame_id"]: row for row in Table.read(transforms_path)}
    catalogue = Table.read(catalogue_path)
    ref_xy = np.column_stack([catalogue["x"], catalogue["y"]])
    status = {}
    for frame in frames:
        row = transforms.get(frame["frame_id"])
        if row is None or not row["ok"]:
            status[frame["frame_id"]] = {"status": "excluded", "reason": "" if row is None else str(row["reason"])}
            continue
        product = Product.read(frame["path"])
        positions = Transform.from_row(row).inverse_apply(ref_xy)
        fwhm = float(row["fwhm"]) if np.isfinite(row["fwhm"]) else float(catalogue.meta.get("fwhm", 3.0))
        table = forced_photometry(product.data, product.variance, product.mask, positions, fwhm, spec,
                                  ids=np.asarray(catalogue["id"]))
        table["frame_id"] = frame["frame_id"]
        table.meta = {}
        with atomic_path(outdir / f"{frame['frame_id']}.parquet") as temp:
            table.to_pandas().to_parquet(temp, index=False)
        status[frame["frame_id"]] = {"status": "ok", "fwhm": fwhm, "bkg": float(np.nanmedian(table["bkg"]))}
    write_text(outdir / "_status.json", json.dumps(status, indent=1, sort_keys=True))
    return status


def merge_field(photometry_dirs, frame_rows: list[dict], transforms_path, table_path, frames_path) -> pd.DataFrame:
    """One long table per field (Parquet + ECSV) with BJD_TDB, airmass, FWHM and sky per frame."""
    parts = [pd.read_parquet(p) for d in photometry_dirs for p in sorted(Path(d).glob("*.parquet"))]
    wanted = {r["frame_id"] for r in frame_rows}
    long = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(long):
        long = long[long["frame_id"].isin(wanted)]
    frames = pd.DataFrame(frame_rows)
    times = barycentric_times(frames["mjd_mid"].to_numpy(float), frames["ra_deg"].to_numpy(float),
                              frames["dec_deg"].to_numpy(float), frames["site_lon"].to_numpy(float),
                              frames["site_lat"].to_numpy(float), frames["site_height"].to_numpy(float))
    frames = frames.assign(mjd_utc=times["mjd_utc"].to_numpy(), jd_utc=times["jd_utc"].to_numpy(),
                           bjd_tdb=times["bjd_tdb"].to_numpy(), airmass=times["airmass"].to_numpy())
    transforms = Table.read(transforms_path).to_pandas()[["frame_id", "ok", "method", "fwhm", "residual_rms",
                                                          "n_matches", "reason"]]
    transforms = transforms.rename(columns={"reason": "align_reason", "ok": "aligned", "method": "align_method"})
    frames = frames.drop(columns=[c for c in ("reason",) if c in frames]).merge(transforms, on="frame_id", how="left")
    if len(long):
        sky = long.groupby("frame_id")["bkg"].median().rename("bkg_median")
        frames = frames.merge(sky, left_on="frame_id", right_index=True, how="left")
        long = long.merge(frames[["frame_id", "bjd_tdb", "airmass"]], on="frame_id", how="left")
        long = long.merge(frames[["frame_id", "fwhm"]].rename(columns={"fwhm": "frame_fwhm"}), on="frame_id")
    keep = ["frame_id", "filename", "mid_utc", "mjd_utc", "jd_utc", "bjd_tdb", "airmass", "exptime", "filter",
            "aligned", "align_method", "fwhm", "residual_rms", "n_matches", "align_reason"] + (["bkg_median"] if len(long) else [])
    write_table(frames[keep], frames_path)
    write_table(long, table_path, formats=("parquet", "ecsv"))  # photometry.parquet + photometry.ecsv
    return long


def _lightcurve_input(long: pd.DataFrame) -> pd.DataFrame:
    """The merged photometry in the shape ccdflow.lightcurve reads."""
    return long.rename(columns={"id": "source_id", "radius_name": "aperture", "frame_fwhm": "fwhm"})


def resolve_targets(targets: list[dict], catalogue: Table, transforms: Table) -> tuple[dict[str, int], dict[str, str]]:
    """Catalogue ids of the configured targets: by sky position (needs a WCS) or by
    pixel position in a named frame (default: the reference frame).

    Returns ``(found, errors)``: a target that cannot be placed is reported by
    name with the reason, and the others go on.
    """
    found, errors = {}, {}
    for target in targets:
        try:
            found[target["name"]] = _resolve(target, catalogue, transforms)
        except ValueError as err:
            errors[target["name"]] = str(err)
    return found, errors


def _resolve(target: dict, catalogue: Table, transforms: Table) -> int:
    x, y = np.asarray(catalogue["x"], float), np.asarray(catalogue["y"], float)
    name = target["name"]
    if "ra" in target:
        if not np.isfinite(catalogue["ra"]).any():
            raise ValueError(f"target {name}: sky coordinates given but the field has no WCS; give x, y")
        ra, dec = np.radians(catalogue["ra"]), np.radians(catalogue["dec"])
        ra0, dec0 = np.radians(target["ra"]), np.radians(target["dec"])
        sep = np.degrees(np.arccos(np.clip(np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0)
                                           * np.cos(ra - ra0), -1, 1))) * 3600
        best, limit, unit = int(np.nanargmin(sep)), target.get("match_arcsec", 3.0), "arcsec"
        distance = sep[best]
    else:
        px, py = float(target["x"]), float(target["y"])
        frame = target.get("frame")
        if frame:
            rows = [r for r in transforms if frame in (r["frame_id"], r["frame_id"].rsplit("-", 1)[0])]
            if not rows or not rows[0]["ok"]:
                raise ValueError(f"target {name}: frame {frame!r} is not an aligned frame of this field")
            (px, py), = Transform.from_row(rows[0]).apply([[px, py]])
        d = np.hypot(x - px, y - py)
        best, limit, unit = int(np.argmin(d)), target.get("match_px", 3.0), "px"
        distance = d[best]
    if distance > limit:
        raise ValueError(f"target {name}: no catalogue source within {limit} {unit} (nearest {distance:.1f})")
    return int(catalogue["id"][best])


def light_curves(table_path, catalogue_path, transforms_path, outdir, lc_cfg: dict, label: str) -> dict:
    """Differential light curves of the configured targets (and optionally every source)."""
    from .lightcurve import (MIN_TRANSPARENCY, differential_light_curve, field_transparency, plot_light_curve,
                             reuse_table)

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    catalogue, transforms = Table.read(catalogue_path), Table.read(transforms_path)
    if len(catalogue) == 0:
        reasons = sorted(set(transforms["reason"]))
        write_text(outdir / "summary.json", json.dumps({"error": "no reference catalogue", "reasons": reasons}))
        log.error("no light curves: the field has no reference catalogue (%s)", "; ".join(reasons))
        return {}
    long = _lightcurve_input(pd.read_parquet(table_path))
    targets, errors = resolve_targets(lc_cfg.get("targets", []), catalogue, transforms)
    for name, error in errors.items():
        log.error("%s", error)
    usable = catalogue[~(np.asarray(catalogue["saturated"]) | np.asarray(catalogue["edge"]))]
    if lc_cfg.get("all_sources", False):
        for source in usable["id"]:
            targets.setdefault(f"src{int(source):05d}", int(source))
    summary = {name: {"error": error} for name, error in errors.items()}
    # a neighbour's light in the aperture or annulus varies with the seeing: blended
    # stars (and saturated or edge ones) are never comparison stars
    not_comparisons = set(catalogue["id"][np.asarray(catalogue["blended"]) | np.asarray(catalogue["saturated"])
                                          | np.asarray(catalogue["edge"])].tolist())
    rng = np.random.default_rng(lc_cfg.get("seed", 1))
    with reuse_table(long):  # one pivot per aperture for all targets, not one per target
        for name, source_id in targets.items():
            try:
                lc, info = differential_light_curve(long, source_id, bootstrap=lc_cfg.get("bootstrap", 0), rng=rng,
                                                    exclude_ids=not_comparisons)
            except ValueError as err:
                summary[name] = {"source_id": source_id, "error": str(err)}
                log.warning("light curve of %s (source %d): %s", name, source_id, err)
                continue
            lc = lc.reset_index()
            write_table(Table.from_pandas(lc), outdir / f"{name}.ecsv")
            if not name.startswith("src") or name in {t["name"] for t in lc_cfg.get("targets", [])}:
                plot_light_curve(lc, outdir / f"{name}.png", f"{label}: {name} (source {source_id}, {info['aperture']})")
            summary[name] = {"source_id": source_id, "aperture": info["aperture"], "scatter": info["scatter"],
                             "median_err": info["median_err"], "n_good": info["n_good"],
                             "comparisons": [int(c) for c in info["comparisons"]]}
        conditions = field_transparency(long, long["aperture"].iloc[0])
    # the frames every light curve flags as cloudy, with the figure that flagged them
    write_table(Table.from_pandas(conditions.reset_index()), outdir / "transparency.ecsv")
    for frame_id, value in conditions.loc[conditions["cloudy"], "transparency"].items():
        log.warning("frame %s flagged in every light curve: transparency %.3f < %.2f of clear sky",
                    frame_id, value, MIN_TRANSPARENCY)
    write_text(outdir / "summary.json", json.dumps(summary, indent=1, default=float))
    return summary
