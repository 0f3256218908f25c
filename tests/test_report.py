"""The QA report an observer reads (issue 13): a page per night, a finder chart per field,
light curves that show their flagged frames, conditions against time, the masked pixels
in the targets' apertures, and entries named by night, field and target.

The unit tests draw each figure from small synthetic products. The end-to-end tests reduce
the demo night (the demo config on the simulator's ``tiny`` preset, its damaged files
included, the transiting star and the variable named as targets) in the background from
collection on, build ``snakemake --report``, read the entries it embeds and open it in
headless Chromium, which must show the night page and the figures (skipped, saying so,
where Chromium is not installed). ``CCDFLOW_SCREENSHOTS=folder`` keeps the screenshots.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from workflow_run import ROOT, background_run, copy_workflow, run_snakemake

from ccdflow import bitmask
from ccdflow.lightcurve import (
    FLAG_ENSEMBLE,
    FLAG_EXCESS,
    FLAG_TARGET,
    FLAG_TRANSPARENCY,
    plot_light_curve,
)
from ccdflow.nightpage import night_rows
from ccdflow.photometry import MASKED, forced_photometry
from ccdflow.qa import (
    aperture_mask_plot,
    aperture_mask_table,
    conditions_plot,
    finder_chart,
)

PNG = b"\x89PNG\r\n\x1a\n"
FIRST_FRAME = "sci_R_0001"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ------------------------------------------------------------------------------ photometry
def test_mask_bits_say_why_an_aperture_lost_pixels():
    """``mask_bits``: the bitmask bits of the pixels an aperture overlaps, OR-ed. A cosmic
    ray in the aperture is named; a dark-subtracted hot pixel is named but measured."""
    yy, xx = np.mgrid[:64, :64]
    data = 100 + 5000 * np.exp(-((xx - 20.3) ** 2 + (yy - 30.6) ** 2) / 4.5) + 3000 * np.exp(
        -((xx - 45) ** 2 + (yy - 12) ** 2) / 4.5)
    mask = np.zeros(data.shape, np.uint16)
    mask[31, 21] |= bitmask.COSMIC_RAY
    mask[12, 47] |= bitmask.HOT
    table = forced_photometry(data, data + 9, mask, np.array([[20.3, 30.6], [45, 12], [5, 50]]), 3.5,
                              ids=np.array([1, 2, 3]))
    by_source = {s: table[table["source_id"] == s] for s in (1, 2, 3)}
    assert np.all(by_source[1]["mask_bits"] == bitmask.COSMIC_RAY)
    assert np.all((by_source[1]["n_masked"] + by_source[1]["n_repaired"]) > 0)
    hot = by_source[2]
    assert np.all(hot["mask_bits"] & bitmask.HOT) and np.all(hot["flag"] & MASKED == 0)  # measured
    assert np.all(by_source[3]["mask_bits"] == 0)


# ------------------------------------------------------------------------------ figures
def _png(path) -> bytes:
    data = Path(path).read_bytes()
    assert data[:8] == PNG and len(data) > 10_000, path
    return data


def _stack(folder: Path, wcs: bool, n: int = 200, seed: int = 2) -> tuple[Path, Path]:
    """A stacked reference with 30 stars (with or without a TAN plate solution) and its catalogue."""
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    x, y, flux = rng.uniform(8, n - 8, 30), rng.uniform(8, n - 8, 30), 10 ** rng.uniform(2, 4, 30)
    image = rng.normal(0, 5, (n, n))
    for xi, yi, fi in zip(x, y, flux):
        image += fi * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / 4.5)
    header = fits.Header()
    if wcs:
        solution = WCS(naxis=2)
        solution.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        solution.wcs.crval, solution.wcs.crpix = [240.55, 28.17], [n / 2, n / 2]
        solution.wcs.cd = [[-0.5 / 3600, 0], [0, 0.5 / 3600]]
        header = solution.to_header()
    header["REFFRAME"], header["NSTACK"] = "f001", 20
    stack = folder / "stack.fits"
    fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), header),
                  fits.ImageHDU(np.ones((n, n), np.int16), name="WEIGHT")]).writeto(stack, overwrite=True)
    order = np.argsort(-flux)
    catalogue = Table({"source_id": np.arange(1, 31), "x": x[order], "y": y[order], "flux": flux[order]})
    catalogue.meta["fwhm"] = 3.5
    catalogue.write(folder / "catalogue.ecsv", overwrite=True)
    return stack, folder / "catalogue.ecsv"


def _summary(folder: Path) -> Path:
    lightcurves = folder / "lightcurves"
    lightcurves.mkdir(exist_ok=True)
    (lightcurves / "summary.json").write_text(json.dumps({
        "XO-1": {"source_id": 5, "aperture": "r1.5fwhm", "comparisons": [2, 3, 4, 6],
                 "weights": {"2": 0.4, "3": 0.3, "4": 0.2, "6": 0.1}},
        "star-b": {"source_id": 7, "aperture": "r2.0fwhm", "comparisons": [2, 8]},  # no weights recorded
        "lost": {"error": "no source within 3 arcsec"},
        "src00001": {"source_id": 1, "aperture": "r1.5fwhm", "comparisons": [2]}}))
    return lightcurves


@pytest.mark.parametrize("wcs", [True, False], ids=["plate-solved", "pixels"])
def test_finder_chart_marks_targets_and_weighted_comparisons(tmp_path, wcs):
    from matplotlib.figure import Figure

    stack, catalogue = _stack(tmp_path, wcs)
    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", keep)
        marked = finder_chart(stack, catalogue, _summary(tmp_path), tmp_path / "finder.png", "a field")
    _png(tmp_path / "finder.png")
    assert marked == {"XO-1": 4, "star-b": 2}  # the src* field sources are not targets
    (ax,) = [a for a in figures[0].axes if a.images]
    texts = [t.get_text() for t in ax.texts]
    assert {"XO-1", "star-b"} <= set(texts) and {"40%", "30%", "20%", "10%"} <= set(texts)
    assert "C" in texts  # star-b's comparisons: no weights recorded
    assert "not placed: lost" in ax.get_title()
    if wcs:
        assert ax.coords[0].get_axislabel() == "RA (ICRS)" and {"N", "E"} <= set(texts)
    else:
        assert "no plate solution" in ax.get_title() and ax.get_xlabel().startswith("x (px")


def test_finder_chart_of_a_field_not_aligned(tmp_path):
    stack = tmp_path / "stack.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((1, 1), np.float32), fits.Header({"REFFRAME": ""})),
                  fits.ImageHDU(np.zeros((1, 1), np.int16), name="WEIGHT")]).writeto(stack)
    Table({"source_id": [], "x": [], "y": [], "flux": []}).write(tmp_path / "catalogue.ecsv")
    assert finder_chart(stack, tmp_path / "catalogue.ecsv", tmp_path / "none", tmp_path / "f.png", "x") == {}
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG


def test_aperture_mask_table_counts_frames_and_reasons(tmp_path):
    lightcurves = _summary(tmp_path)
    rows = []
    for f in range(10):
        for source in (5, 2, 3, 4, 6):
            bits = bitmask.COSMIC_RAY if (source == 5 and f < 3) else 0
            bits |= bitmask.SATURATED if (source == 5 and f == 9) else 0
            rows.append({"frame_id": f"f{f}", "source_id": source, "aperture": "r1.5fwhm",
                         "n_masked": int(f == 9 and source == 5), "n_repaired": int(source == 5 and f < 3),
                         "flag": 0, "mask_bits": bits})
    pd.DataFrame(rows).to_parquet(tmp_path / "phot.parquet")
    table = aperture_mask_table(tmp_path / "phot.parquet", lightcurves).set_index(["target", "what"])
    xo1 = table.loc["XO-1"]
    assert xo1.loc["lost", "frames"] == 4 and xo1.loc["repaired", "frames"] == 3 and xo1.loc["left_out", "frames"] == 1
    assert xo1.loc["cosmic_ray", "fraction"] == pytest.approx(0.3) and xo1.loc["saturated", "frames"] == 1
    assert xo1.loc["hot", "frames"] == 0 and xo1.loc["lost", "comparisons"] == 0
    assert set(table.index.get_level_values(0)) == {"XO-1", "star-b"}
    # photometry from before mask_bits: the reasons are not recorded, the rest still counted
    pd.DataFrame(rows).drop(columns="mask_bits").to_parquet(tmp_path / "old.parquet")
    old = aperture_mask_table(tmp_path / "old.parquet", lightcurves).set_index(["target", "what"])
    assert old.loc[("XO-1", "lost"), "frames"] == 4 and np.isnan(old.loc[("XO-1", "cosmic_ray"), "fraction"])
    aperture_mask_plot(tmp_path / "phot.parquet", lightcurves, tmp_path / "masks.png", "a field")
    _png(tmp_path / "masks.png")


def test_conditions_plot_has_five_panels_against_hours_ut(tmp_path):
    from matplotlib.figure import Figure

    n = 30
    mjd = 60748.1 + np.arange(n) / 288
    frames = Table({"frame_id": [f"f{i}" for i in range(n)], "mjd_utc": mjd, "bjd_tdb": mjd + 2400000.5 + 0.004,
                    "airmass": np.linspace(1.4, 1.1, n), "fwhm": np.full(n, 3.0), "bkg_median": np.full(n, 100.0),
                    "residual_rms": np.full(n, 0.1), "aligned": np.arange(n) != 4})
    frames.write(tmp_path / "frames.ecsv")
    Table({"frame_id": frames["frame_id"], "transparency": np.where(np.arange(n) == 7, 0.5, 1.0),
           "cloudy": np.arange(n) == 7}).write(tmp_path / "transparency.ecsv")
    figures = []
    save = Figure.savefig
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k)))
        conditions_plot(tmp_path / "frames.ecsv", tmp_path / "conditions.png", "a field", tmp_path / "transparency.ecsv")
    _png(tmp_path / "conditions.png")
    axes = figures[0].axes
    labels = [a.get_ylabel() for a in axes if a.get_ylabel()]
    assert labels == ["airmass", "FWHM (px)", "sky (e-/px)", "transparency", "alignment rms (px)"]
    assert axes[4].get_xlabel().startswith("hours UT on 2025-03-14")
    assert any(a.get_xlabel().startswith("BJD_TDB - ") for a in figures[0].axes[0].child_axes)
    legend = " ".join(t.get_text() for a in axes if a.get_legend() for t in a.get_legend().get_texts())
    assert "1 through cloud" in legend and "1 not aligned" in legend
    # without the light curves' transparency the panel says so, the plot is still made
    conditions_plot(tmp_path / "frames.ecsv", tmp_path / "bare.png", "a field")
    _png(tmp_path / "bare.png")


def test_light_curve_plot_draws_flagged_frames_named_by_flag(tmp_path):
    from matplotlib.figure import Figure

    t = 2460749.6 + np.arange(60) / 720
    flux = 1 + np.random.default_rng(1).normal(0, 0.003, 60)
    flags = np.zeros(60, int)
    flags[5:8], flux[5] = FLAG_TRANSPARENCY, 0.4   # one far below: drawn on the axis' edge
    flags[20], flags[30], flags[40] = FLAG_EXCESS, FLAG_ENSEMBLE, FLAG_TARGET
    flux[40] = np.nan
    lc = pd.DataFrame({"bjd_tdb": t, "rel_flux": flux, "rel_flux_err": 0.003, "flag": flags})
    figures = []
    save = Figure.savefig
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k)))
        plot_light_curve(lc, tmp_path / "lc.png", "target")
    _png(tmp_path / "lc.png")
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert legend[0] == "frames (54)" and legend[1] == "10-min bins"
    for words in ("cloud", "excess", "ensemble", "no target flux", "off the axis"):
        assert any(words in entry for entry in legend), (words, legend)
    assert "flagged: cloud (transparency < 75%) (3)" in legend
    ax = figures[0].axes[0]
    assert ax.get_ylim()[0] > 0.9 and ax.get_xlabel() == "BJD_TDB - 2460749 (days)"


def test_night_rows_place_unreadable_files_by_their_folder():
    inventory = pd.DataFrame({
        "path": ["a/1.fits", "a/bad.fits", "b/1.fits", "b/bad.fits", "c/2.fits", "c/3.fits", "c/bad.fits"],
        "night": ["2025-01-01", "", "2025-01-02", "", "2025-01-01", "2025-01-02", ""],
        "frame_id": list("1234567")})
    assert list(night_rows(inventory, "2025-01-01")["frame_id"]) == ["1", "2", "5", "7"]
    assert list(night_rows(inventory, "2025-01-02")["frame_id"]) == ["3", "4", "6", "7"]


# ------------------------------------------------------------------------------ the workflow's report
def BACKGROUND(work: Path) -> Path:  # the name tests/conftest.py looks for
    """The demo config on the tiny demo night, simulated here with the demo's damaged files
    so that its transiting star and variable can be named by their pixels."""
    from ccdflow.simulate import NightSpec, simulate_night

    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    spec = NightSpec.from_dict(demo["simulate"]["overrides"], base="tiny")
    simulate_night(work / "night", spec)
    stars = Table.read(work / "night" / "truth" / "stars.ecsv", fill_values=[])
    roles = list(stars["role"])
    targets = [{"name": name, "x": float(stars["x"][roles.index(role)]), "y": float(stars["y"][roles.index(role)]),
                "frame": FIRST_FRAME, "pixels": "numpy"} for name, role in (("transit-host", "transit"),
                                                                             ("variable", "variable"))]
    config = {**demo, "campaign": "demo", "results_dir": str(work / "results"), "simulate": {"enabled": False},
              "raw": [{"path": str(work / "night" / "raw"), "instrument": "simulator"}],
              "calibration": {"flat": {"min_frames": 2}},   # the tiny night: 4 flats a filter, 2 spoiled
              "lightcurves": {"targets": targets}}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """(working directory of the run, its config)."""
    run = background_run(__name__)
    if run is not None:
        run.wait()
        return run.workdir, run.config
    work = tmp_path_factory.mktemp("report_demo")
    config = BACKGROUND(work)
    workdir = copy_workflow(work / "workflow")
    run_snakemake(config=config, cwd=workdir)
    return workdir, config


@pytest.fixture(scope="module")
def report(demo) -> Path:
    workdir, config = demo
    path = config.parent / "report.html"
    run_snakemake("--report", str(path), config=config, cwd=workdir)
    return path


def _embedded(report: Path) -> tuple[dict, dict]:
    """The report's results (path -> entry) and categories, as its page script holds them."""
    text = report.read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", text, re.DOTALL).group(1))
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", text, re.DOTALL).group(1))
    return results, categories


def _decoded(entry: dict) -> bytes:
    return base64.b64decode(entry["data_uri"].split(",", 1)[1])


@pytest.mark.slow
def test_report_has_a_page_per_night_and_named_entries(report, demo):
    results, categories = _embedded(report)
    night = "2025-03-13"
    assert set(categories) >= {"1. Night summary", "2. Master calibrations", "3. Observing conditions",
                               "4. Finder charts", "5. Light curves", "6. Aperture masks",
                               "7. Noise against magnitude"}
    assert all(list(subcategories) == [night] for subcategories in categories.values()), categories
    (page,) = [e for p, e in results.items() if p.endswith("night.html")]
    assert page["mime_type"] == "text/html" and page["labels"] == {"night": night, "page": "what was done"}
    html = _decoded(page).decode()
    for words in ("Night 2025-03-13", "Frames by type", "damaged_truncated.fits", "truncated", "Master calibrations",
                  "PASS", "8 calibrated, 0 not", "SIMFIELD R", "transit-host", "variable", "not aligned"):
        assert words in html, words
    # no entry is named by a field hash: by field (target and filter), target and night
    for path, entry in results.items():
        assert entry["labels"], path
        assert not any(re.fullmatch(r"[0-9a-f]{10}", str(v)) for v in entry["labels"].values()), entry["labels"]
        if entry["mime_type"] == "image/png":
            assert _decoded(entry)[:8] == PNG and len(_decoded(entry)) > 10_000, path
    curves = {(e["labels"]["target"], e["labels"]["plot"]) for p, e in results.items()
              if "/lightcurves/" in p}
    assert {("transit-host", "light curve"), ("variable", "light curve")} <= curves
    finder = [e for p, e in results.items() if p.endswith("finder.png")]
    assert [e["labels"]["field"] for e in finder] == ["SIMFIELD R"]
    # the light curves' summary holds each comparison star's weight, summing to 1
    _, config = demo
    (summary,) = (config.parent / "results" / "demo" / "lightcurves").glob("*/*/summary.json")
    host = json.loads(summary.read_text())["transit-host"]
    assert set(host["weights"]) == {str(c) for c in host["comparisons"]}
    assert sum(host["weights"].values()) == pytest.approx(1.0)
    (masks,) = (config.parent / "results" / "demo" / "qa").glob("*/*/masks.ecsv")
    assert set(Table.read(masks)["target"]) == {"transit-host", "variable"}


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None and os.environ.get("CCDFLOW_REQUIRE_CHROMIUM"):  # CI installs it: missing is a failure
        pytest.fail("headless Chromium is required (CCDFLOW_REQUIRE_CHROMIUM) but not installed")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium): the report's "
                    "rendering is not checked")
    return found


# Opens one result the way a click in the report's menu does, then records what the page shows.
SHOW = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var path = Object.keys(results).find(function (p) { return p.endsWith(%(suffix)s); });
    var entry = results[path];
    // one call: setView merges into the state of before the call (two calls would lose the first)
    app.setView({navbarMode: "subcategory", category: %(category)s, subcategory: %(subcategory)s,
                 content: entry.mime_type === "text/html" ? "html" : "img", contentPath: entry.data_uri,
                 resultPath: path});
    setTimeout(function () {
      var img = document.querySelector("img[src^='data:image/png']");
      var frame = document.querySelector("iframe[src^='data:text/html']");
      document.body.setAttribute("data-shown", JSON.stringify({
        path: path, img: img ? [img.complete, img.naturalWidth, img.naturalHeight] : null,
        iframe: frame ? frame.getBoundingClientRect().height : null,
        menu: document.body.innerText.slice(0, 4000)}));
    }, 800);
  }, 300);
});
</script>"""


def _chromium(browser: str, url: str, *args, attempts: int = 2) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with a profile of its own (a shared one can be locked);
    a run that hangs is killed with its child processes and tried once more."""
    import signal
    import tempfile

    for attempt in range(attempts):
        with tempfile.TemporaryDirectory(prefix="ccdflow-chromium-") as profile:
            command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                       "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
                       "--window-size=1500,1100", "--virtual-time-budget=15000", *args, url]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
            try:
                stdout, stderr = process.communicate(timeout=120)
                return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                if attempt == attempts - 1:
                    raise


VIEWS = [  # (what the result's path ends with, its category, a name for the screenshot)
    ("night.html", "1. Night summary", "night"),
    ("finder.png", "4. Finder charts", "finder"),
    ("transit-host.png", "5. Light curves", "lightcurve"),
    ("conditions.png", "3. Observing conditions", "conditions"),
    ("masks.png", "6. Aperture masks", "masks"),
]


@pytest.mark.slow
@pytest.mark.parametrize("suffix, category, name", VIEWS, ids=[v[2] for v in VIEWS])
def test_report_renders_in_headless_chromium(report, tmp_path, suffix, category, name):
    browser = _browser()
    page = tmp_path / f"report-{name}.html"
    script = SHOW % {"suffix": json.dumps(suffix), "category": json.dumps(category),
                     "subcategory": json.dumps("2025-03-13")}
    head, tail = report.read_text().rsplit("</body>", 1)   # the page's own end (its scripts quote others)
    page.write_text(head + script + "</body>" + tail)
    dom = _chromium(browser, page.as_uri(), "--dump-dom")
    match = re.search(r'data-shown="([^"]*)"', dom.stdout)
    assert match, f"the report's script did not run:\n{dom.stderr[-3000:]}"
    import html as html_module

    shown = json.loads(html_module.unescape(match.group(1)))
    assert shown["path"].endswith(suffix) and category in shown["menu"], shown
    assert "2025-03-13" in shown["menu"]
    if suffix.endswith(".png"):
        complete, width, height = shown["img"]
        assert complete and width > 300 and height > 200, shown
    else:
        assert shown["iframe"] and shown["iframe"] > 500, shown
    screenshot = tmp_path / f"{name}.png"
    done = _chromium(browser, page.as_uri(), f"--screenshot={screenshot}")
    assert screenshot.exists() and _png(screenshot), done.stderr[-2000:]
    keep = os.environ.get("CCDFLOW_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)


@pytest.mark.slow
def test_night_page_renders_on_its_own(report, demo, tmp_path):
    browser = _browser()
    _, config = demo
    (page,) = (config.parent / "results" / "demo" / "qa").glob("*/night.html")
    dom = _chromium(browser, page.as_uri(), "--dump-dom").stdout
    assert "<h1>Night 2025-03-13</h1>" in dom and dom.count("<table>") >= 5
    screenshot = tmp_path / "night-page.png"
    _chromium(browser, page.as_uri(), f"--screenshot={screenshot}", "--window-size=1200,2400")
    _png(screenshot)
    keep = os.environ.get("CCDFLOW_SCREENSHOTS")
    if keep:
        shutil.copy(screenshot, Path(keep) / screenshot.name)
