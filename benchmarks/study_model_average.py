"""Are model-averaged transit errors honest? White noise on real nights' own vectors.

The pull study (study_transit_pulls.py) runs the whole workflow, ~3 min a night,
so its rms has a standard error of ~0.2 over 12 nights. This one isolates the
fit: it takes the chosen light curves of nights the pull study made (their
times, airmass, FWHM, sky and pointing, the colour-extinction trend of a
setting field), replaces the flux by the true transit times a baseline in
airmass plus white noise at the light curve's own errors, and fits it as the
workflow does (`ccdflow.lcfit.fit_target`: terms by BIC, averaged over every
subset). It prints the pulls' mean and rms of mid-time and depth for

* ``averaged``: the reported errors (variance of the averaged estimate from
  each term set's linear response to the same data, plus any spread between
  term sets beyond what that noise makes; ccdflow.transitfit notes),
* ``buckland``: sum_i w_i (sigma_i^2 + (theta_i - mean)^2), the usual formula,
  which counts the noise-made spread twice (its estimates share the data),
* ``chosen``: the chosen term set alone, errors x beta.

    python benchmarks/study_transit_pulls.py --seeds 1-12 --workdir /tmp/pulls   # makes the nights
    python benchmarks/study_model_average.py /tmp/pulls/undersampled+extinction+drifting+limb_darkened --draws 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_transit_pulls import chosen_night  # also puts tests/ on the path

from ccdflow.lcfit import fit_target
from ccdflow.transitfit import _Shape


def pulls(result, t_true, depth_true) -> dict:
    table = result.averaged
    weight = np.array([r["weight"] for r in table])
    (chosen,) = [r for r in table if r["terms"] == result.terms]
    out = {}
    for name, truth in (("t0", t_true), ("depth", depth_true)):
        value, sigma = (np.array([r[k] for r in table]) for k in (name, name + "_err"))
        mean = float(weight @ value)
        buckland = np.sqrt(weight @ (sigma**2 + (value - mean) ** 2))
        out[name] = {"averaged": (result.params[name] - truth) / result.errors[name],
                     "buckland": (mean - truth) / buckland, "chosen": (chosen[name] - truth) / chosen[name + "_err"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nights", type=Path, help="a study_transit_pulls.py sky folder (holding seed*/)")
    parser.add_argument("--draws", type=int, default=10, help="noise realisations per night")
    parser.add_argument("--airmass-slope", type=float, default=0.01, help="baseline: 1 + slope x standardised airmass")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rows = []
    for work in sorted(args.nights.glob("seed*"), key=lambda p: int(p.name[4:])):
        try:
            lc, spec, t_true, rp, detrend = chosen_night(work)
        except (FileNotFoundError, ValueError):
            continue
        t = lc["bjd_tdb"].to_numpy(float)
        shape = _Shape(spec, t, spec.t0_guess)
        x = shape.start()
        x[0], x[1] = (t_true - shape.tref) / shape.scale, rp
        airmass = lc["airmass"].to_numpy(float)
        truth = shape.flux(x) * (1 + args.airmass_slope * (airmass - airmass.mean()) / airmass.std())
        err = lc["rel_flux_err"].to_numpy(float)
        for _ in range(args.draws):
            fake = lc.copy()
            fake["rel_flux"] = truth + err * rng.standard_normal(t.size)
            rows.append(pulls(fit_target(fake, spec, detrend), t_true, rp**2))
        print(f"{work.name}: {len(rows)} fits", flush=True)
    print(f"\n{len(rows)} fits, white noise at the light curves' own errors")
    for name in ("t0", "depth"):
        for kind in ("averaged", "buckland", "chosen"):
            p = np.array([r[name][kind] for r in rows])
            print(f"{name:6s} {kind:9s} pulls: mean {p.mean():+.2f}, rms {p.std(ddof=1):.2f} "
                  f"(standard error {p.std(ddof=1) / np.sqrt(2 * (p.size - 1)):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
