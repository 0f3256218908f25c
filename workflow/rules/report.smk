rule qa_field:
    """Conditions (FWHM, sky, alignment residual) against time and noise against magnitude."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=LAYOUT.field(FIELD, "frames.ecsv"),
        table=LAYOUT.field(FIELD, "photometry.parquet"),
    output:
        conditions=report(
            LAYOUT.qa_field(FIELD, "conditions.png"),
            caption="../report/conditions.rst",
            category="Observing conditions",
            subcategory="{night}",
        ),
        noise=report(
            LAYOUT.qa_field(FIELD, "noise.png"),
            caption="../report/noise.rst",
            category="Noise against magnitude",
            subcategory="{night}",
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
            category="Master calibrations",
            subcategory="{night}",
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
