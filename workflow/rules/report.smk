rule qa_field:
    """Conditions (FWHM, sky, alignment residual) against time and noise against magnitude."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=f"{FIELDS}/{{night}}/{{fid}}/frames.ecsv",
        table=f"{FIELDS}/{{night}}/{{fid}}/photometry.parquet",
    output:
        conditions=report(
            f"{RESULTS}/qa/{{night}}/{{fid}}/conditions.png",
            caption="../report/conditions.rst",
            category="Observing conditions",
            subcategory="{night}",
        ),
        noise=report(
            f"{RESULTS}/qa/{{night}}/{{fid}}/noise.png",
            caption="../report/noise.rst",
            category="Noise against magnitude",
            subcategory="{night}",
        ),
        table=f"{RESULTS}/qa/{{night}}/{{fid}}/noise.ecsv",
    params:
        rows=field_rows,
        label=lambda wc: _field(wc).label,
        aperture=PHOT["qa_aperture"],
    log:
        f"{LOGS}/qa_field/{{night}}/{{fid}}.log",
    benchmark:
        f"{BENCH}/qa_field/{{night}}/{{fid}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/qa_field.py"


rule qa_masters:
    """Thumbnails of one night's master calibrations with their QC verdict."""
    input:
        masters=night_masters,
    output:
        report(
            f"{RESULTS}/qa/{{night}}/masters.png",
            caption="../report/masters.rst",
            category="Master calibrations",
            subcategory="{night}",
        ),
    log:
        f"{LOGS}/qa_masters/{{night}}.log",
    benchmark:
        f"{BENCH}/qa_masters/{{night}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/qa_masters.py"
