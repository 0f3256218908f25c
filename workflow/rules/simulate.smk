rule simulate_night:
    """Simulate a raw night with known truth (the demo night)."""
    output:
        raw=directory(SIM_RAW),
        truth=directory(SIM_TRUTH),
    params:
        spec={"preset": SIMULATE["preset"], "overrides": SIMULATE["overrides"]},
    log:
        f"{LOGS}/simulate_night.log",
    benchmark:
        f"{BENCH}/simulate_night.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/simulate_night.py"
