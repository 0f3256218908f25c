rule simulate_night:
    """Simulate a raw night with known truth (the demo night)."""
    output:
        raw=directory(SIM_RAW),
        truth=directory(SIM_TRUTH),
    params:
        spec={"preset": SIMULATE["preset"], "overrides": SIMULATE["overrides"]},
    log:
        LAYOUT.log("simulate_night"),
    benchmark:
        LAYOUT.benchmark("simulate_night")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/simulate.yaml"
    script:
        "../../scripts/simulate_night.py"
