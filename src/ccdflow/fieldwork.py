"""Per-field stages: align, reference catalogue, forced photometry, merged table, light curves.

The rule scripts call these; each takes file paths and config blocks and writes
its products atomically. Alignment moves catalogue positions: pixels are
resampled only for the stacked reference image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table

from . import bitmask
from .align import AlignLimits, Transform, align_field, stack_reference
from .atomic import atomic_dir, atomic_path, write_text
from .catalogue import (
    at_edge,
    blended,
    empty_catalogue,
    near_saturation,
    sky_positions,
    stack_detection_mask,
)
from .ccdio import Product
from .frameloop import OK, FrameExcluded, read_status, run_frames
from .hotpixels import find_hot_pixels
from .lcfit import aperture_score, fit_target, transit_spec, write_fit
from .photometry import ApertureSpec, forced_photometry
from .sources import detect_sources
from .tables import (
    CATALOGUE,
    FIELD_PHOTOMETRY,
    FRAMES,
    LIGHT_CURVE,
    PHOTOMETRY,
    TRANSPARENCY,
    write_table,
)
from .targets import FieldFrames, resolve_targets
from .timescale import barycentric_times
from .wcsutil import celestial_header

log = logging.getLogger(__name__)
CHECK_STARS = 8  # comparison stars whose own light curves score an aperture (lcfit.check_star_score)


def align(frame_paths: dict[str, str], transforms_path, stack_path, align_cfg: dict) -> Table:
    """Align every frame of a field; write the transforms table and the stacked reference."""
    limits = AlignLimits(**{k: align_cfg[k] for k in ("max_rotation_deg", "max_scale_dev", "max_shift_px",
                                                      "min_matches", "kind") if k in align_cfg})
    # frames that failed calibration have no file: they are listed in their batch's status
    frames = [{"frame_id": fid, "path": path} for fid, path in frame_paths.items() if Path(path).exists()]
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
    stack, weight, saturated = stack_reference(frames, table, ref.data.shape,
                                               max_frames=align_cfg.get("stack_frames", 20))
    header = fits.Header()
    header["REFFRAME"] = (table["frame_id"][reference], "reference frame of the field")
    header["NSTACK"] = (int(weight.max()), "frames stacked (at most)")
    # the stack lies on the reference frame's pixels: its WCS (distortion terms too) gives
    # the catalogue its sky coordinates
    header.update(celestial_header(ref.header))
    with atomic_path(stack_path) as temp:
        fits.HDUList([fits.PrimaryHDU(np.nan_to_num(stack).astype(np.float32), header),
                      fits.ImageHDU(weight.astype(np.int16), name="WEIGHT"),
                      fits.ImageHDU(saturated.astype(np.int16), name="SATURATED")]).writeto(temp)
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


def reference_catalogue(stack_path, transforms_path, reference_path, catalogue_path, cat_cfg: dict,
                        spec: ApertureSpec) -> Table:
    """Sources of the stacked reference, ranked by flux, with saturated/edge/blended flags."""
    with fits.open(stack_path) as hdul:
        stack, weight, header = hdul[0].data.astype(float), hdul["WEIGHT"].data, hdul[0].header
        saturated = hdul["SATURATED"].data > 0 if "SATURATED" in hdul else np.zeros(stack.shape, bool)
    if not header.get("REFFRAME"):  # the field could not be aligned
        catalogue = empty_catalogue()
        write_table(catalogue, catalogue_path, schema=CATALOGUE)
        return catalogue
    transforms = Table.read(transforms_path)
    ok = transforms[np.asarray(transforms["ok"], bool)]
    fwhm = float(np.nanmedian(ok["fwhm"])) if len(ok) else 3.0
    sources = detect_sources(stack, None, stack_detection_mask(weight, saturated), fwhm=fwhm,
                             threshold_sigma=cat_cfg.get("threshold_sigma", 5.0),
                             max_sources=cat_cfg.get("max_sources", 3000))
    sources.sort("flux", reverse=True)
    reference = Product.read(reference_path)
    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    flux = np.asarray(sources["flux"], float)
    # saturated in the reference frame or in any stacked frame: never a comparison star
    saturated = (near_saturation(x, y, ((reference.mask & bitmask.SATURATED) != 0) | saturated, fwhm)
                 | np.asarray(sources["saturated"], bool))
    catalogue = Table({"source_id": np.arange(1, len(sources) + 1), "x": x, "y": y, "flux": flux,
                       "flux_rank": np.arange(1, len(sources) + 1), "saturated": saturated,
                       "edge": at_edge(x, y, stack.shape, spec.annulus(fwhm)[1]), "blended": blended(x, y, flux, fwhm)})
    catalogue["ra"], catalogue["dec"] = sky_positions(header, x, y)
    catalogue.meta.update(fwhm=fwhm, reference=header.get("REFFRAME", ""), wcs=bool(np.isfinite(catalogue["ra"]).any()))
    write_table(catalogue, catalogue_path, schema=CATALOGUE)
    return catalogue


def hot_pixel_map(frame_paths: dict[str, str], transforms_path, catalogue_path, reference_path, map_path) -> int:
    """Hot pixels of a night without darks, from its own frames (:mod:`ccdflow.hotpixels`).

    Writes ``map_path`` (uint8 image, 1 = hot; header HOTSRCH says what was
    done) and returns the number of hot pixels. With a master dark subtracted
    its HOT pixels are already known and corrected: nothing is searched.
    """
    reference = Product.read(reference_path) if reference_path else None
    shape = reference.data.shape if reference is not None else (1, 1)
    hot, note = np.zeros(shape, bool), "no aligned frames"
    if reference is not None and "MDARK" in reference.header:
        note = "skipped: a master dark was subtracted"
    elif reference is not None:
        rows = [r for r in Table.read(transforms_path) if r["ok"] and Path(frame_paths.get(r["frame_id"], "")).is_file()]
        catalogue = Table.read(catalogue_path)
        ref_xy = np.column_stack([catalogue["x"], catalogue["y"]])
        products = (Product.read(frame_paths[r["frame_id"]]) for r in rows)
        try:
            hot = find_hot_pixels(((p.data, p.variance, p.mask) for p in products),
                                  (Transform.from_row(r).inverse_apply(ref_xy) for r in rows),
                                  float(catalogue.meta.get("fwhm", 3.0)))
            note = f"searched {len(rows)} frames"
        except ValueError as err:
            note = str(err)
    header = fits.Header()
    header["HOTSRCH"] = (note, "hot pixels from the science frames")
    header["NHOT"] = (int(hot.sum()), "hot pixels found")
    with atomic_path(map_path) as temp:
        fits.PrimaryHDU(hot.astype(np.uint8), header).writeto(temp)
    return int(hot.sum())


def photometry_frames(frames: list[dict], transforms_path, catalogue_path, outdir, spec: ApertureSpec,
                      hot_pixels_path=None) -> dict:
    """Forced photometry of the catalogue on each frame, at its transformed positions.

    Hot pixels found from the frames (``hot_pixels_path``, :func:`hot_pixel_map`)
    are flagged HOT; where no master dark took their charge out they are
    repaired or rejected like any masked pixel, else measured.
    """
    outdir = Path(outdir)
    transforms = {row["frame_id"]: row for row in Table.read(transforms_path)}
    catalogue = Table.read(catalogue_path)
    ref_xy = np.column_stack([catalogue["x"], catalogue["y"]])
    hot = fits.getdata(hot_pixels_path).astype(bool) if hot_pixels_path else None

    def process(frame_id, frame, folder):
        row = transforms.get(frame_id)
        if row is None or not row["ok"]:
            raise FrameExcluded("" if row is None else str(row["reason"]))
        product = Product.read(frame["path"])
        if hot is not None and hot.shape == product.mask.shape:
            bitmask.flag(product.mask, hot, bitmask.HOT)
        positions = Transform.from_row(row).inverse_apply(ref_xy)
        fwhm = float(row["fwhm"]) if np.isfinite(row["fwhm"]) else float(catalogue.meta.get("fwhm", 3.0))
        usable = bitmask.HOT if "MDARK" in product.header else 0   # no dark: a hot pixel's charge is still there
        table = forced_photometry(product.data, product.variance, product.mask, positions, fwhm, spec,
                                  usable_bits=usable, ids=np.asarray(catalogue["source_id"]))
        table["frame_id"] = frame_id
        table.meta = {}
        write_table(table, folder / f"{frame_id}.parquet", formats=("parquet",), schema=PHOTOMETRY)
        return {"fwhm": fwhm, "bkg": float(np.nanmedian(table["bkg"]))}

    return run_frames(((f["frame_id"], f) for f in frames), process, outdir)


def merge_field(photometry_dirs, frame_rows: list[dict], transforms_path, table_path, frames_path) -> pd.DataFrame:
    """One long table per field (Parquet + ECSV) with BJD_TDB, airmass, FWHM and sky per frame."""
    # the frames each chunk measured, from its status file (never a glob: it would
    # also match a temporary file left by a killed job)
    parts = [pd.read_parquet(Path(d) / f"{fid}.parquet") for d in photometry_dirs
             for fid, entry in sorted(read_status(d).items()) if entry["status"] == OK]
    wanted = {r["frame_id"] for r in frame_rows}
    long = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(long):
        long = long[long["frame_id"].isin(wanted)]
    frames = pd.DataFrame(frame_rows)
    times = barycentric_times(frames["mjd_mid"].to_numpy(float), frames["ra_deg"].to_numpy(float),
                              frames["dec_deg"].to_numpy(float), frames["site_lon"].to_numpy(float),
                              frames["site_lat"].to_numpy(float), frames["site_height"].to_numpy(float))
    frames = frames.assign(mjd_utc=times["mjd_utc"].to_numpy(), jd_utc=times["jd_utc"].to_numpy(),
                           bjd_tdb=times["bjd_tdb"].to_numpy(), airmass=times["airmass"].to_numpy(),
                           bjd_geocentric=times["geocentric"].to_numpy())
    if frames["bjd_geocentric"].any():
        log.warning("%d frame(s) with no known site: BJD_TDB from the geocentre (within 0.021 s), no airmass; "
                    "give the site in the instrument profile", int(frames["bjd_geocentric"].sum()))
    transforms = Table.read(transforms_path).to_pandas()[["frame_id", "ok", "method", "fwhm", "residual_rms",
                                                          "n_matches", "reason"]]
    transforms = transforms.rename(columns={"reason": "align_reason", "ok": "aligned", "method": "align_method"})
    frames = frames.drop(columns=[c for c in ("reason",) if c in frames]).merge(transforms, on="frame_id", how="left")
    if len(long):
        sky = long.groupby("frame_id")["bkg"].median().rename("bkg_median")
        frames = frames.merge(sky, left_on="frame_id", right_index=True, how="left")
        long = long.merge(frames[["frame_id", "bjd_tdb", "bjd_geocentric", "airmass"]], on="frame_id", how="left")
        long = long.merge(frames[["frame_id", "fwhm"]], on="frame_id")
    frames = frames.rename(columns={"filter": "filter_name"})  # DataFrame.filter is a method
    keep = ["frame_id", "filename", "mid_utc", "mjd_utc", "jd_utc", "bjd_tdb", "bjd_geocentric", "airmass", "exptime", "filter_name",
            "aligned", "align_method", "fwhm", "residual_rms", "n_matches", "align_reason"] + (["bkg_median"] if len(long) else [])
    write_table(frames[keep], frames_path, schema=FRAMES)
    # photometry.parquet + photometry.ecsv
    write_table(long, table_path, formats=("parquet", "ecsv"), schema=FIELD_PHOTOMETRY)
    return long


def light_curves(table_path, catalogue_path, transforms_path, stack_path, frames: dict[str, dict], outdir,
                 lc_cfg: dict, label: str) -> dict:
    """Differential light curves of the configured targets (and optionally every source),
    written into ``outdir``, which appears only complete (:func:`ccdflow.atomic.atomic_dir`).

    ``frames``: the field's frames in time order, ``frame_id -> {"filename", "amplifiers"}``
    (inventory fields), where pixel positions of targets are given.
    """
    with atomic_dir(outdir) as folder:
        return _light_curves(table_path, catalogue_path, transforms_path, stack_path, frames, folder, lc_cfg, label)


def _field_frames(transforms: Table, stack_path, frames: dict[str, dict], fwhm: float) -> FieldFrames:
    from astropy.wcs import WCS

    with fits.open(stack_path) as hdul:
        stack, celestial = hdul[0].data.astype(float), celestial_header(hdul[0].header)
    wcs = WCS(celestial) if len(celestial) else None  # celestial_header is empty without a usable one
    in_field = set(transforms["frame_id"])
    return FieldFrames(transforms, {k: v for k, v in frames.items() if k in in_field}, stack, wcs, fwhm)


def _fit_products(lc: pd.DataFrame, spec, detrend: dict, outdir: Path, name: str, title: str) -> dict:
    """Detrended (and, for a configured transit, fitted) light curve products; a failed
    fit is reported in the summary, never fatal to the light curve itself."""
    try:
        result = fit_target(lc, spec, detrend)
    except (ValueError, np.linalg.LinAlgError) as err:
        log.warning("%s: no %s fit: %s", name, "transit" if spec else "detrending", err)
        return {"error": str(err), "transit": spec is not None}
    summary = write_fit(result, lc, outdir, name, title)
    if spec is not None:
        p, e = result.params, result.errors
        log.info("%s: mid-transit %.5f +- %.5f BJD_TDB, depth %.5f +- %.5f (beta %.2f, terms %s)", name, p["t0"],
                 e["t0"], p["depth"], e["depth"], result.beta, ",".join(result.terms) or "none")
    return {k: summary[k] for k in ("params", "errors", "beta", "red_chi2", "terms", "n", "residual_rms")}


def _normalised_weights(weights: dict) -> dict[str, float]:
    total = float(sum(weights.values()))
    return {str(int(c)): (float(w) / total if total > 0 else float("nan")) for c, w in weights.items()}


def _light_curves(table_path, catalogue_path, transforms_path, stack_path, frames, outdir: Path, lc_cfg: dict,
                  label: str) -> dict:
    from .lightcurve import (
        MIN_TRANSPARENCY,
        PhotometryTable,
        differential_light_curve,
        field_transparency,
        plot_light_curve,
    )

    catalogue, transforms = Table.read(catalogue_path), Table.read(transforms_path)
    if len(catalogue) == 0:
        reasons = sorted(set(transforms["reason"]))
        write_text(outdir / "summary.json", json.dumps({"error": "no reference catalogue", "reasons": reasons}))
        log.error("no light curves: the field has no reference catalogue (%s)", "; ".join(reasons))
        return {}
    long = pd.read_parquet(table_path)
    FIELD_PHOTOMETRY.check(long, str(table_path))
    fwhm = float(catalogue.meta.get("fwhm", 3.0))
    placed = resolve_targets(lc_cfg.get("targets", []), catalogue, _field_frames(transforms, stack_path, frames, fwhm))
    for name, error in placed.errors.items():
        log.error("%s", error)
    for notes in placed.warnings.values():
        for note in notes:
            log.warning("%s", note)
    targets = dict(placed.found)
    usable = catalogue[~(np.asarray(catalogue["saturated"]) | np.asarray(catalogue["edge"]))]
    if lc_cfg.get("all_sources", False):
        limit = lc_cfg.get("max_sources", 0) or len(usable)
        for source in usable["source_id"][np.argsort(-np.asarray(usable["flux"], float), kind="stable")][:limit]:
            targets.setdefault(f"src{int(source):05d}", int(source))
    summary = {name: {"error": error} for name, error in placed.errors.items()}
    summary.update({name: {"elsewhere": True} for name in placed.elsewhere})
    # a neighbour's light in the aperture or annulus varies with the seeing: blended
    # stars (and saturated or edge ones) are never comparison stars, unless named
    not_comparisons = set(catalogue["source_id"][np.asarray(catalogue["blended"]) | np.asarray(catalogue["saturated"])
                                          | np.asarray(catalogue["edge"])].tolist())
    rng = np.random.default_rng(lc_cfg.get("seed", 1))
    phot = PhotometryTable(long)  # one pivot per aperture for all targets, not one per target
    named = {t["name"]: t for t in lc_cfg.get("targets", [])}
    detrend = lc_cfg.get("detrend") or {}
    exptime = float(np.nanmedian([float(f.get("exptime", np.nan)) for f in frames.values()] or [np.nan]))
    for name, source_id in targets.items():
        target = named.get(name, {})
        spec = transit_spec(target.get("transit"), long["bjd_tdb"].to_numpy(float), np.nan_to_num(exptime))
        try:
            # a named target: the aperture whose comparison stars, each against the others, show
            # the least noise on the transit's timescale (red noise seen), unless the config
            # fixes one. The target's own residuals are not used: they would pick an aperture
            # for a noise pattern its fit absorbed, or (without a model of the signal) the
            # shallowest transit. Every source of an all-sources run: point-to-point scatter
            score = (lambda lc, info, spec=spec: aperture_score(lc, info, spec, detrend)) if name in named else None
            lc, info = differential_light_curve(phot, source_id, target.get("aperture"),
                                                bootstrap=lc_cfg.get("bootstrap", 0), rng=rng,
                                                comparisons=placed.comparisons.get(name),
                                                exclude_ids=not_comparisons, score=score, checks=CHECK_STARS)
        except ValueError as err:
            summary[name] = {"source_id": source_id, "error": str(err)}
            log.warning("light curve of %s (source %d): %s", name, source_id, err)
            continue
        lc = lc.reset_index()
        write_table(lc, outdir / f"{name}.ecsv", schema=LIGHT_CURVE)
        if not name.startswith("src") or name in {t["name"] for t in lc_cfg.get("targets", [])}:
            plot_light_curve(lc, outdir / f"{name}.png", f"{label}: {name} (source {source_id}, {info['aperture']})")
        summary[name] = {"source_id": source_id, "aperture": info["aperture"], "scatter": info["scatter"],
                         "median_err": info["median_err"], "n_good": info["n_good"],
                         "comparisons": [int(c) for c in info["comparisons"]],
                         # Broeg weights of the comparison stars (source id -> weight, summing to 1)
                         "weights": _normalised_weights(info.get("weights", {})),
                         "comparisons_named": name in placed.comparisons,
                         "aperture_fixed": "aperture" in target,
                         "score_by_aperture": info.get("score_by_aperture", {}),
                         "warnings": placed.warnings.get(name, [])}
        if target:
            summary[name]["fit"] = _fit_products(lc, spec, detrend, outdir, name,
                                                 f"{label}: {name} ({info['aperture']})")
    conditions = field_transparency(phot)
    # the frames every light curve flags as cloudy, with the figure that flagged them
    write_table(conditions.reset_index(), outdir / "transparency.ecsv", schema=TRANSPARENCY)
    for frame_id, value in conditions.loc[conditions["cloudy"], "transparency"].items():
        log.warning("frame %s flagged in every light curve: transparency %.3f < %.2f of clear sky",
                    frame_id, value, MIN_TRANSPARENCY)
    write_text(outdir / "summary.json", json.dumps(summary, indent=1, default=float))
    return summary
