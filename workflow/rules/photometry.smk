FIELD = "{night}/{fid}"


rule align_field:
    """Transforms of every frame of a field to its reference frame; stacked reference image."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        calibrated=batch_dirs("calibrated", field_ids),
    output:
        transforms=LAYOUT.field(FIELD, "transforms.ecsv"),
        stack=LAYOUT.field(FIELD, "stack.fits"),
    params:
        rows=rows_digest(field_ids),
        frames=frame_products("calibrated", field_ids),
        align=PHOT["align"],
    log:
        LAYOUT.log("align_field", FIELD),
    benchmark:
        LAYOUT.benchmark("align_field", FIELD)
    threads: 1
    resources:
        mem_mb=sized_mem_mb(field_ids, 400, 120),
        runtime=sized_runtime(field_ids, 5, 1.0),
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/align_field.py"


rule reference_catalogue:
    """Sources of the stacked reference: ranked by flux; saturated, edge, blended flagged; sky coordinates.
    Without a master dark, hot pixels found from the field's own frames."""
    input:
        inventory=ancient(INVENTORY),  # params.frames reads the plan
        stack=LAYOUT.field(FIELD, "stack.fits"),
        transforms=LAYOUT.field(FIELD, "transforms.ecsv"),
        calibrated=batch_dirs("calibrated", field_ids),
    output:
        catalogue=LAYOUT.field(FIELD, "catalogue.ecsv"),
        hot_pixels=LAYOUT.field(FIELD, "hotpixels.fits"),
    params:
        frames=frame_products("calibrated", field_ids),
        catalogue=PHOT["catalogue"],
        # the apertures' size flags edge and blended sources; re-centroiding does not
        apertures={
            k: v for k, v in PHOT["apertures"].items() if k != "recentroid_max_px"
        },
    log:
        LAYOUT.log("reference_catalogue", FIELD),
    benchmark:
        LAYOUT.benchmark("reference_catalogue", FIELD)
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/reference_catalogue.py"


rule photometry:
    """Forced aperture photometry of the catalogue on one chunk of a field's frames."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        calibrated=batch_dirs("calibrated", field_ids),
        transforms=LAYOUT.field(FIELD, "transforms.ecsv"),
        catalogue=LAYOUT.field(FIELD, "catalogue.ecsv"),
        hot_pixels=LAYOUT.field(FIELD, "hotpixels.fits"),
    output:
        directory(LAYOUT.photometry_chunk(FIELD, "{chunk}")),
    params:
        rows=rows_digest(field_ids),
        frames=frame_products("calibrated", field_ids),
        apertures=PHOT["apertures"],
    log:
        LAYOUT.log("photometry", f"{FIELD}/c{{chunk}}"),
    benchmark:
        LAYOUT.benchmark("photometry", f"{FIELD}/c{{chunk}}")
    threads: 1
    resources:
        mem_mb=sized_mem_mb(field_ids, 400, 80),
        runtime=sized_runtime(field_ids, 5, 1.0),
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/photometry.py"


rule field_photometry:
    """One long photometry table per field (Parquet and ECSV) with BJD_TDB, airmass, FWHM, sky."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        photometry=field_photometry_dirs,
        transforms=LAYOUT.field(FIELD, "transforms.ecsv"),
    output:
        table=LAYOUT.field(FIELD, "photometry.parquet"),
        ecsv=LAYOUT.field(FIELD, "photometry.ecsv"),
        frames=LAYOUT.field(FIELD, "frames.ecsv"),
    params:
        rows=rows_digest(field_ids),
        frames=field_ids,
    log:
        LAYOUT.log("field_photometry", FIELD),
    benchmark:
        LAYOUT.benchmark("field_photometry", FIELD)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/field_photometry.py"


rule lightcurves:
    """Differential light curves (Broeg-weighted ensemble, best aperture) of a field's targets."""
    input:
        # params.label reads the field plan (the inventory checkpoint): a cluster job may
        # only do that with the checkpoint's output among its inputs
        inventory=ancient(INVENTORY),  # its rows: params.rows
        table=LAYOUT.field(FIELD, "photometry.parquet"),
        catalogue=LAYOUT.field(FIELD, "catalogue.ecsv"),
        transforms=LAYOUT.field(FIELD, "transforms.ecsv"),
        stack=LAYOUT.field(FIELD, "stack.fits"),  # the light at a target's given position
    output:
        report(
            directory(LAYOUT.lightcurves(FIELD)),
            patterns=["{name}.png"],
            caption="../report/lightcurves.rst",
            category="5. Light curves",
            subcategory="{night}",
            labels=light_curve_report_labels,
        ),
    params:
        rows=rows_digest(field_ids),
        lightcurves=LC,
        label=field_label,
    log:
        LAYOUT.log("lightcurves", FIELD),
    benchmark:
        LAYOUT.benchmark("lightcurves", FIELD)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/plots.yaml"
    script:
        "../../scripts/lightcurves.py"
