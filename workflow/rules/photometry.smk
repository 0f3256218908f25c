rule align_field:
    """Transforms of every frame of a field to its reference frame; stacked reference image."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        calibrated=field_calibrated_dirs,
    output:
        transforms=f"{FIELDS}/{{night}}/{{fid}}/transforms.ecsv",
        stack=f"{FIELDS}/{{night}}/{{fid}}/stack.fits",
    params:
        rows=field_rows,
        align=PHOT["align"],
    log:
        f"{LOGS}/align_field/{{night}}/{{fid}}.log",
    benchmark:
        f"{BENCH}/align_field/{{night}}/{{fid}}.tsv"
    threads: 1
    resources:
        mem_mb=sized_mem_mb(field_frames, 400, 120),
        runtime=sized_runtime(field_frames, 5, 1.0),
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/align_field.py"


rule reference_catalogue:
    """Sources of the stacked reference: ranked by flux; saturated, edge, blended flagged; sky coordinates."""
    input:
        stack=f"{FIELDS}/{{night}}/{{fid}}/stack.fits",
        transforms=f"{FIELDS}/{{night}}/{{fid}}/transforms.ecsv",
        calibrated=field_calibrated_dirs,
    output:
        f"{FIELDS}/{{night}}/{{fid}}/catalogue.ecsv",
    params:
        catalogue=PHOT["catalogue"],
        # the apertures' size flags edge and blended sources; re-centroiding does not
        apertures={k: v for k, v in PHOT["apertures"].items() if k != "recentroid_max_px"},
    log:
        f"{LOGS}/reference_catalogue/{{night}}/{{fid}}.log",
    benchmark:
        f"{BENCH}/reference_catalogue/{{night}}/{{fid}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/reference_catalogue.py"


rule photometry:
    """Forced aperture photometry of the catalogue on one chunk of a field's frames."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        calibrated=field_calibrated_dirs,
        transforms=f"{FIELDS}/{{night}}/{{fid}}/transforms.ecsv",
        catalogue=f"{FIELDS}/{{night}}/{{fid}}/catalogue.ecsv",
    output:
        directory(f"{RESULTS}/photometry/{{night}}/{{fid}}/c{{chunk}}"),
    params:
        rows=field_rows,
        apertures=PHOT["apertures"],
    log:
        f"{LOGS}/photometry/{{night}}/{{fid}}/c{{chunk}}.log",
    benchmark:
        f"{BENCH}/photometry/{{night}}/{{fid}}/c{{chunk}}.tsv"
    threads: 1
    resources:
        mem_mb=sized_mem_mb(field_frames, 400, 80),
        runtime=sized_runtime(field_frames, 5, 1.0),
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/photometry.py"


rule field_photometry:
    """One long photometry table per field (Parquet and ECSV) with BJD_TDB, airmass, FWHM, sky."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        photometry=field_photometry_dirs,
        transforms=f"{FIELDS}/{{night}}/{{fid}}/transforms.ecsv",
    output:
        table=f"{FIELDS}/{{night}}/{{fid}}/photometry.parquet",
        ecsv=f"{FIELDS}/{{night}}/{{fid}}/photometry.ecsv",
        frames=f"{FIELDS}/{{night}}/{{fid}}/frames.ecsv",
    params:
        rows=field_rows,
    log:
        f"{LOGS}/field_photometry/{{night}}/{{fid}}.log",
    benchmark:
        f"{BENCH}/field_photometry/{{night}}/{{fid}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/field_photometry.py"


rule lightcurves:
    """Differential light curves (Broeg-weighted ensemble, best aperture) of a field's targets."""
    input:
        # params.label reads the field plan (the inventory checkpoint): a cluster job may
        # only do that with the checkpoint's output among its inputs
        inventory=ancient(INVENTORY),  # its rows: params.rows
        table=f"{FIELDS}/{{night}}/{{fid}}/photometry.parquet",
        catalogue=f"{FIELDS}/{{night}}/{{fid}}/catalogue.ecsv",
        transforms=f"{FIELDS}/{{night}}/{{fid}}/transforms.ecsv",
    output:
        report(
            directory(f"{RESULTS}/lightcurves/{{night}}/{{fid}}"),
            patterns=["{name}.png"],
            caption="../report/lightcurves.rst",
            category="Light curves",
            subcategory="{night}",
        ),
    params:
        rows=field_rows,
        lightcurves=LC,
        label=lambda wc: _field(wc).label,
    log:
        f"{LOGS}/lightcurves/{{night}}/{{fid}}.log",
    benchmark:
        f"{BENCH}/lightcurves/{{night}}/{{fid}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/lightcurves.py"
