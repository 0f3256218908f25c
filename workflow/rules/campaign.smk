# The campaign's manifest: written last, from every product under results/<campaign>.


rule manifest:
    """Every product with its sha256 and science digest, the job (rule, inputs) that made it,
    the software version and config hash, and the raw inputs' checksums."""
    input:
        LAYOUT.inventory_summary,
        LAYOUT.calibration_report,
        all_field_products,
        all_qa_products,
    output:
        LAYOUT.manifest,
    params:
        campaign=config["campaign"],
        campaign_dir=lambda wildcards, output: os.path.dirname(output[0]),
        config=config,
    log:
        LAYOUT.log("manifest"),
    benchmark:
        LAYOUT.benchmark("manifest")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/manifest.py"
