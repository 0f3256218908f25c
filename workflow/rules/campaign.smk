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
        planned=planned_for_manifest,
    log:
        LAYOUT.log("manifest"),
    benchmark:
        LAYOUT.benchmark("manifest")
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/manifest.py"


rule run_summary:
    """What was made and what was not, and why: results/<campaign>/summary.txt."""
    input:
        inventory=INVENTORY,
        masters=all_masters,
        calibrated=batch_dirs("calibrated"),
        fields=all_field_products,
        manifest=LAYOUT.manifest,
    output:
        text=LAYOUT.summary,
        problems=LAYOUT.run_problems,
    params:
        campaign=config["campaign"],
        fields=field_summaries,
        missing_target=LC["missing_target"],
    log:
        LAYOUT.log("run_summary"),
    benchmark:
        LAYOUT.benchmark("run_summary")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/run_summary.py"


rule check_run:
    """Print the run summary; fail, naming the problems, where requested products
    could not be made (every other product exists by then)."""
    input:
        text=LAYOUT.summary,
        problems=LAYOUT.run_problems,
    output:
        touch(LAYOUT.run_ok),
    log:
        LAYOUT.log("check_run"),
    benchmark:
        LAYOUT.benchmark("check_run")
    localrule: True
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/check_run.py"
