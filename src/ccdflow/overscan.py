"""Overscan subtraction and trimming, one amplifier at a time, into electrons.

Each amplifier has its own overscan strip, data section, gain and read noise.
Its bias level is estimated per readout line (a row, for the usual serial
overscan beside each row) as the median or mean of the overscan pixels of that
line, optionally smoothed by a low-order Legendre fit along the readout axis
with iterative outlier rejection. The estimate's own noise is carried into the
variance. The corrected data sections are multiplied by their gain (the only
place ccdflow applies a gain) and placed side by side into one image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .sections import Section, parse_section
from .stats import robust_std

# Standard error of the median of n Gaussian values is sqrt(pi/2) times that of the mean.
MEDIAN_EFFICIENCY = np.sqrt(np.pi / 2)


@dataclass(frozen=True)
class Amplifier:
    """One readout amplifier: raw-frame regions (0-based) and its electronics."""

    data: Section
    overscan: Section | None
    gain: float                       # e- per ADU
    read_noise: float                 # e- rms
    exclude_columns: tuple[int, ...] = ()   # raw 0-based columns never used in the overscan
    readout_axis: str = "rows"        # "rows": overscan columns beside each row
    output: Section | None = None     # where its data go in the joined image (None: packed)
    bias_level: float | None = None   # ADU, known without an overscan (profile, or estimated: ccdflow.biaslevel)

    def to_json(self) -> dict:
        return {
            "data": self.data.to_fits(),
            "overscan": self.overscan.to_fits() if self.overscan else "",
            "gain": self.gain, "read_noise": self.read_noise,
            "exclude_columns": [c + 1 for c in self.exclude_columns],
            "readout_axis": self.readout_axis,
            "output": self.output.to_fits() if self.output else "",
            **({"bias_level": self.bias_level} if self.bias_level is not None else {}),
        }

    @classmethod
    def from_json(cls, spec: dict) -> "Amplifier":
        return cls(
            data=parse_section(spec["data"]),
            overscan=parse_section(spec["overscan"]) if spec.get("overscan") else None,
            gain=float(spec["gain"]), read_noise=float(spec["read_noise"]),
            exclude_columns=tuple(c - 1 for c in spec.get("exclude_columns", [])),
            readout_axis=spec.get("readout_axis", "rows"),
            output=parse_section(spec["output"]) if spec.get("output") else None,
            bias_level=float(spec["bias_level"]) if spec.get("bias_level") is not None else None,
        )


def amplifiers_from_json(text: str) -> list[Amplifier]:
    return [Amplifier.from_json(spec) for spec in json.loads(text)]


def amplifiers_to_json(amps: list[Amplifier]) -> str:
    return json.dumps([amp.to_json() for amp in amps], separators=(",", ":"))


@dataclass
class OverscanOptions:
    """How the overscan level is estimated (``calibration.overscan`` in the config)."""

    statistic: str = "median"         # per-line "median" or "mean"
    fit_order: int | None = None      # Legendre order along the readout axis; None = per line
    sigma: float = 3.0                # rejection threshold of the fit
    maxiters: int = 5
    skip_columns: int = 0             # extra columns dropped at each end of the strip (settling)


@dataclass
class OverscanResult:
    level: np.ndarray                 # ADU per readout line
    variance: np.ndarray              # ADU^2 per readout line: noise of the estimate
    pixel_sigma: float                # ADU, robust rms of overscan pixels about their line level
    meta: dict = field(default_factory=dict)


def _strip(image: np.ndarray, amp: Amplifier, options: OverscanOptions) -> np.ndarray:
    """Overscan pixels as (lines, samples), excluded columns removed."""
    sec = amp.overscan
    strip = image[sec.slices].astype(np.float32, copy=False)
    columns = np.arange(sec.x0, sec.x1)
    keep = ~np.isin(columns, amp.exclude_columns)
    strip = strip[:, keep]
    if amp.readout_axis == "columns":
        strip = strip.T
    if options.skip_columns:
        strip = strip[:, options.skip_columns : strip.shape[1] - options.skip_columns]
    if strip.shape[1] == 0:
        raise ValueError(f"overscan {sec.to_fits()} has no usable columns after exclusions")
    return strip


def _legendre_fit(levels: np.ndarray, variance: np.ndarray, options: OverscanOptions):
    """Smooth per-line levels with an iteratively clipped Legendre fit."""
    x = np.linspace(-1.0, 1.0, len(levels))
    use = np.ones(len(levels), bool)
    for _ in range(options.maxiters):
        coeffs = np.polynomial.legendre.legfit(x[use], levels[use], options.fit_order)
        residual = levels - np.polynomial.legendre.legval(x, coeffs)
        scatter = robust_std(residual[use])
        if scatter == 0:  # quantised line levels (integer medians): use the std
            scatter = np.std(residual[use])
        if scatter == 0:
            break
        new_use = np.abs(residual) <= options.sigma * scatter
        # never reject so much that the fit is no longer constrained
        if np.array_equal(new_use, use) or new_use.sum() < 2 * (options.fit_order + 1):
            break
        use = new_use
    fitted = np.polynomial.legendre.legval(x, coeffs)
    # A least-squares fit with k+1 parameters through n lines: each fitted value
    # carries about (k+1)/n of the single-line variance.
    fit_variance = np.full(len(levels), np.mean(variance) * (options.fit_order + 1) / use.sum())
    return fitted, fit_variance, int((~use).sum())


def _pixel_sigma(strip: np.ndarray) -> float:
    """Per-pixel noise of the overscan, free of the line-to-line drift.

    Differences of neighbouring samples on the same line cancel the line's level
    exactly, so their robust rms / sqrt(2) is the pixel noise without the bias a
    residual about a 20-sample median would carry.
    """
    if strip.shape[1] < 2:
        return float(np.std(strip))
    diff = np.diff(strip, axis=1)
    sigma = robust_std(diff) / np.sqrt(2)
    if sigma == 0:  # integer ADU on a very quiet amplifier quantise the MAD to zero
        sigma = np.std(diff) / np.sqrt(2)
    return float(sigma)


def overscan_level(image: np.ndarray, amp: Amplifier, options: OverscanOptions = OverscanOptions()) -> OverscanResult:
    """Bias level (ADU) of each readout line of ``amp`` from its overscan."""
    strip = _strip(image, amp, options)
    if options.statistic == "median":
        levels = np.median(strip, axis=1)
        efficiency = MEDIAN_EFFICIENCY
    elif options.statistic == "mean":
        levels = strip.mean(axis=1)
        efficiency = 1.0
    else:
        raise ValueError(f"overscan statistic must be median or mean, not {options.statistic!r}")
    pixel_sigma = _pixel_sigma(strip)
    variance = np.full(len(levels), (efficiency * pixel_sigma) ** 2 / strip.shape[1])
    meta = {"statistic": options.statistic, "samples": strip.shape[1], "rejected_lines": 0}
    if options.fit_order is not None:
        levels, variance, rejected = _legendre_fit(levels.astype(np.float64), variance, options)
        meta.update(fit_order=options.fit_order, rejected_lines=rejected)
    return OverscanResult(levels.astype(np.float32), variance.astype(np.float32), pixel_sigma, meta)


def _output_sections(amps: list[Amplifier]) -> tuple[list[Section], tuple[int, int]]:
    """Where each amplifier's data go: explicit ``output`` or packed in raw order."""
    if all(a.output is not None for a in amps):
        sections = [a.output for a in amps]
    else:
        xs = sorted({a.data.x0 for a in amps})
        ys = sorted({a.data.y0 for a in amps})
        width = {x: next(a.data.shape[1] for a in amps if a.data.x0 == x) for x in xs}
        height = {y: next(a.data.shape[0] for a in amps if a.data.y0 == y) for y in ys}
        x_start = dict(zip(xs, np.cumsum([0] + [width[x] for x in xs[:-1]])))
        y_start = dict(zip(ys, np.cumsum([0] + [height[y] for y in ys[:-1]])))
        sections = [
            Section(int(y_start[a.data.y0]), int(y_start[a.data.y0] + a.data.shape[0]),
                    int(x_start[a.data.x0]), int(x_start[a.data.x0] + a.data.shape[1]))
            for a in amps
        ]
    shape = (max(s.y1 for s in sections), max(s.x1 for s in sections))
    for amp, sec in zip(amps, sections):
        if amp.data.shape != sec.shape:
            raise ValueError(f"amplifier data {amp.data.to_fits()} does not fit output {sec.to_fits()}")
    return sections, shape


def raw_to_output(amps: list[Amplifier], x: float, y: float) -> tuple[float, float]:
    """A 0-based raw pixel position in the trimmed (joined) image, 0-based.

    The position must lie in one amplifier's data section: a pixel of the
    overscan or prescan has no place in the calibrated frame.
    """
    for amp, out in zip(amps, _output_sections(amps)[0]):
        d = amp.data
        if d.x0 - 0.5 <= x < d.x1 - 0.5 and d.y0 - 0.5 <= y < d.y1 - 0.5:
            return x - d.x0 + out.x0, y - d.y0 + out.y0
    sections = ", ".join(a.data.to_fits() for a in amps)
    raise ValueError(f"raw pixel ({x + 1:.1f}, {y + 1:.1f}) (1-based) lies in no data section ({sections}): "
                     "outside the image area that is calibrated")


@dataclass
class Preprocessed:
    """A raw frame after overscan, trim and gain: electrons, with its variance so far."""

    data: np.ndarray        # float32, e-
    variance: np.ndarray    # float32, e^2: read noise and overscan-estimate noise
    saturated: np.ndarray   # bool: raw value at or above saturation
    meta: dict


def preprocess(raw: np.ndarray, amps: list[Amplifier], saturation: float | None = None,
               options: OverscanOptions = OverscanOptions(), subtract_overscan: bool = True) -> Preprocessed:
    """Overscan-correct and trim every amplifier, convert to electrons, join.

    With ``subtract_overscan=False`` (or an amplifier without overscan) the
    data are only trimmed and scaled; the bias then comes from a master bias.
    An amplifier without overscan but with a ``bias_level`` has that constant
    subtracted instead (a master bias, if any, then takes out the structure).
    """
    sections, shape = _output_sections(amps)
    data = np.empty(shape, np.float32)
    variance = np.empty(shape, np.float32)
    saturated = np.zeros(shape, bool)
    meta = {"amplifiers": len(amps), "overscan": []}
    for amp, out in zip(amps, sections):
        # Work straight from the raw pixels (uint16 as read) into the output
        # arrays: one pass to subtract, one to scale, no intermediate copies.
        block, target = raw[amp.data.slices], data[out.slices]
        if saturation is not None:
            np.greater_equal(block, saturation, out=saturated[out.slices])
        level = np.float32(0.0)
        line_var = np.zeros((1, 1), np.float32)
        if subtract_overscan and amp.overscan is not None:
            result = overscan_level(raw, amp, options)
            # Lines of the overscan strip that cross this amplifier's data rows
            # (or columns, for a parallel overscan).
            if amp.readout_axis == "rows":
                lines = slice(amp.data.y0 - amp.overscan.y0, amp.data.y1 - amp.overscan.y0)
                level, line_var = result.level[lines][:, None], result.variance[lines][:, None]
            else:
                lines = slice(amp.data.x0 - amp.overscan.x0, amp.data.x1 - amp.overscan.x0)
                level, line_var = result.level[lines][None, :], result.variance[lines][None, :]
            meta["overscan"].append({"median_level_adu": float(np.median(result.level)),
                                     "pixel_sigma_adu": result.pixel_sigma, **result.meta})
        elif subtract_overscan and amp.bias_level is not None:
            # no overscan: the level the profile gives or the night's frames measured, so
            # the bias is never counted as signal (its error is in the header, not here)
            level = np.float32(amp.bias_level)
        np.subtract(block, level, out=target, casting="unsafe")
        target *= np.float32(amp.gain)
        variance[out.slices] = (amp.read_noise**2 + line_var * amp.gain**2).astype(np.float32)
    return Preprocessed(data, variance, saturated, meta)
