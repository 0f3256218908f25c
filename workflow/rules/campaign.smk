# The campaign's manifest: written last, from every product under results/<campaign>.


rule manifest:
    """Every product with its sha256 and science digest, the job (rule, inputs) that made it,
    the software version and config hash, and the raw inputs' checksums."""
    input:
        f"{RESULTS}/inventory/summary.txt",
        f"{RESULTS}/calibrated/report.txt",
        all_field_products,
        all_qa_products,
    output:
        f"{RESULTS}/manifest.json",
    params:
        campaign=config["campaign"],
        campaign_dir=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/manifest.py"
