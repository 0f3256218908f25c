# The QA report (snakemake --report report.html): per night a page of what was done
# (qa_night) and the masters' thumbnails; per field the conditions against time, the
# noise against magnitude, a finder chart and the targets' masked pixels (qa_field,
# qa_targets); the light curves come from rule lightcurves. Categories are numbered in
# the order an observer reads them; entries are labelled by night, field and target.


rule qa_field:
    """Conditions (airmass, FWHM, sky, transparency, alignment residual) against time and noise against magnitude."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=LAYOUT.field(FIELD, "frames.ecsv"),
        table=LAYOUT.field(FIELD, "photometry.parquet"),
        # its transparency.ecsv, made from the photometry table alone (an input here):
        # a light-curve setting does not change it
        lightcurves=ancient(LAYOUT.lightcurves(FIELD)),
    output:
        conditions=report(
            LAYOUT.qa_field(FIELD, "conditions.png"),
            caption="../report/conditions.rst",
            category="3. Observing conditions",
            subcategory="{night}",
            labels=field_report_labels("conditions against time"),
        ),
        noise=report(
            LAYOUT.qa_field(FIELD, "noise.png"),
            caption="../report/noise.rst",
            category="7. Noise against magnitude",
            subcategory="{night}",
            labels=field_report_labels("noise against magnitude"),
        ),
        table=LAYOUT.qa_field(FIELD, "noise.ecsv"),
    params:
        rows=rows_digest(field_ids),
        label=field_label,
        aperture=PHOT["qa_aperture"],
    log:
        LAYOUT.log("qa_field", FIELD),
    benchmark:
        LAYOUT.benchmark("qa_field", FIELD)
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../../scripts/qa_field.py"


rule qa_masters:
    """Thumbnails of one night's master calibrations with their QC verdict."""
    input:
        masters=night_masters,
    output:
        report(
            LAYOUT.qa_masters("{night}"),
            caption="../report/masters.rst",
            category="2. Master calibrations",
            subcategory="{night}",
            labels={"night": "{night}", "figure": "thumbnails"},
        ),
    log:
        LAYOUT.log("qa_masters", "{night}"),
    benchmark:
        LAYOUT.benchmark("qa_masters", "{night}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../../scripts/qa_masters.py"


rule qa_targets:
    """Finder chart of a field (its stacked reference, the targets named, their comparison
    stars, weights, RA/Dec when plate-solved); the targets' masked pixels and why."""
    input:
        inventory=ancient(INVENTORY),  # params.label reads the field plan
        stack=LAYOUT.field(FIELD, "stack.fits"),
        catalogue=LAYOUT.field(FIELD, "catalogue.ecsv"),
        table=LAYOUT.field(FIELD, "photometry.parquet"),
        lightcurves=LAYOUT.lightcurves(FIELD),  # its summary.json: targets, comparisons, weights
    output:
        finder=report(
            LAYOUT.qa_field(FIELD, "finder.png"),
            caption="../report/finder.rst",
            category="4. Finder charts",
            subcategory="{night}",
            labels=field_report_labels("finder chart"),
        ),
        masks=report(
            LAYOUT.qa_field(FIELD, "masks.png"),
            caption="../report/masks.rst",
            category="6. Aperture masks",
            subcategory="{night}",
            labels=field_report_labels("masked pixels in the targets' apertures"),
        ),
        table=LAYOUT.qa_field(FIELD, "masks.ecsv"),
    params:
        label=field_label,
    log:
        LAYOUT.log("qa_targets", FIELD),
    benchmark:
        LAYOUT.benchmark("qa_targets", FIELD)
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../../scripts/qa_targets.py"


rule qa_night:
    """One page per night: frames by type, quarantined files and why, masters and their QC
    verdict, fields and their alignment, light curves made, and the problems first."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        masters=night_masters,
        calibrated=night_calibrated_dirs,
        fields=night_field_products,
    output:
        report(
            LAYOUT.qa_night("{night}"),
            caption="../report/night.rst",
            category="1. Night summary",
            subcategory="{night}",
            labels={"night": "{night}", "page": "what was done"},
        ),
    params:
        rows=night_rows_digest,
        campaign=config["campaign"],
        fields=night_fields,
    log:
        LAYOUT.log("qa_night", "{night}"),
    benchmark:
        LAYOUT.benchmark("qa_night", "{night}")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../../scripts/qa_night.py"
