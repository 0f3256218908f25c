rule preprocess_calibrations:
    """Overscan, trim and gain for a batch of bias, dark and flat frames."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=raw_frames(batch_ids("proc")),
    output:
        # temporary: deleted once the masters that read them are made (keep: --notemp); a
        # master that must be rebuilt has them made again
        temp(directory(LAYOUT.batch("proc", "{batch}"))),
    params:
        rows=rows_digest(batch_ids("proc")),
        frames=batch_ids("proc"),
        calibration=cal_params("overscan", "saturation_grow"),
    log:
        LAYOUT.log("preprocess_calibrations", "{batch}"),
    benchmark:
        LAYOUT.benchmark("preprocess_calibrations", "{batch}")
    priority: 10  # calibration first: see the master rules
    threads: 1
    resources:
        mem_mb=sized_mem_mb(batch_ids("proc"), 300, 80),
        runtime=sized_runtime(batch_ids("proc"), 2, 1.0),
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/preprocess_calibrations.py"


# One rule per master recipe (ccdflow.recipes): master_bias, master_dark, master_flat.
for KIND, RECIPE in RECIPES.items():

    rule:
        name:
            f"master_{KIND}"
        input:
            unpack(subtracted_masters(KIND)),  # bias=..., dark=...: what the recipe subtracts
            inventory=ancient(INVENTORY),  # its rows: params.rows
            proc=batch_dirs("proc", master_ids(KIND)),
        output:
            LAYOUT.master(KIND, "{night}/{gid}"),
        params:
            rows=rows_digest(master_ids(KIND)),
            master=master_plan(KIND),
            frames=frame_products("proc", master_ids(KIND)),
            calibration=cal_params(*RECIPE.config_blocks()),
        log:
            LAYOUT.log("masters", f"{KIND}/{{night}}/{{gid}}"),
        benchmark:
            LAYOUT.benchmark("masters", f"{KIND}/{{night}}/{{gid}}")
        # Two threads: while one-thread jobs (alignment of a long field) keep a core
        # busy, a master would wait for a second free core, and the whole night's
        # calibration with it. It goes first (Snakemake maximises the sum of the
        # priorities it runs: above two one-thread calibration jobs, 2 x 10).
        priority: 30
        threads: 2
        resources:
            mem_mb=CAL["combine"]["mem_budget_mb"] + 1000,
            runtime=30,
        conda:
            "../../envs/core.yaml"
        script:
            "../../scripts/build_master.py"


rule calibrate_science:
    """Calibrate a batch of science frames: data (e-), variance, bitmask, provenance."""
    input:
        unpack(science_batch_inputs),
        inventory=ancient(INVENTORY),  # its rows: params.rows
    output:
        directory(LAYOUT.batch("calibrated", "{batch}")),
    params:
        rows=rows_digest(batch_ids("calibrated")),
        frames=batch_ids("calibrated"),
        candidates=frame_candidates,
        calibration=cal_params(
            "overscan", "saturation_grow", "cosmic_rays", "window_days", *RECIPES
        ),
    log:
        LAYOUT.log("calibrate_science", "{batch}"),
    benchmark:
        LAYOUT.benchmark("calibrate_science", "{batch}")
    priority: 10
    threads: 1
    resources:
        mem_mb=sized_mem_mb(batch_ids("calibrated"), 400, 250),
        runtime=sized_runtime(batch_ids("calibrated"), 5, 3.0),
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/calibrate_science.py"


rule calibration_report:
    """Masters with their QC, each frame's masters or skipped steps, and why frames were left uncalibrated."""
    input:
        inventory=INVENTORY,
        masters=all_masters,
        calibrated=batch_dirs("calibrated"),
    output:
        LAYOUT.calibration_report,
    log:
        LAYOUT.log("calibration_report"),
    benchmark:
        LAYOUT.benchmark("calibration_report")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/calibration_report.py"
