rule preprocess_calibrations:
    """Overscan, trim and gain for a batch of bias, dark and flat frames."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=proc_batch_frames,
    output:
        directory(f"{RESULTS}/proc/{{batch}}"),
    params:
        rows=batch_rows(proc_batches),
        calibration=cal_params("overscan", "saturation_grow"),
    log:
        f"{LOGS}/preprocess_calibrations/{{batch}}.log",
    benchmark:
        f"{BENCH}/preprocess_calibrations/{{batch}}.tsv"
    threads: 1
    resources:
        mem_mb=sized_mem_mb(batch_of(proc_batches), 300, 80),
        runtime=sized_runtime(batch_of(proc_batches), 2, 1.0),
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/preprocess_calibrations.py"


rule master_bias:
    """Combine the biases of one calibration group and night."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        proc=master_proc_dirs("bias"),
    output:
        f"{RESULTS}/masters/bias/{{night}}/{{gid}}.fits",
    params:
        rows=master_rows("bias"),
        kind="bias",
        calibration=cal_params("combine", "bias", "dark"),
    log:
        f"{LOGS}/masters/bias/{{night}}/{{gid}}.log",
    benchmark:
        f"{BENCH}/masters/bias/{{night}}/{{gid}}.tsv"
    threads: 2
    resources:
        mem_mb=lambda wc: CAL["combine"]["mem_budget_mb"] + 1000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/build_master.py"


rule master_dark:
    """Combine bias-subtracted darks (as e-/s in rate mode); flag hot pixels."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        proc=master_proc_dirs("dark"),
        bias=masters_for_master("bias", "dark"),
    output:
        f"{RESULTS}/masters/dark/{{night}}/{{gid}}.fits",
    params:
        rows=master_rows("dark"),
        kind="dark",
        calibration=cal_params("combine", "bias", "dark", "window_days"),
    log:
        f"{LOGS}/masters/dark/{{night}}/{{gid}}.log",
    benchmark:
        f"{BENCH}/masters/dark/{{night}}/{{gid}}.tsv"
    threads: 2
    resources:
        mem_mb=lambda wc: CAL["combine"]["mem_budget_mb"] + 1000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/build_master.py"


rule master_flat:
    """Combine bias- and dark-corrected flats of one filter, normalised; mask low response."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        proc=master_proc_dirs("flat"),
        bias=masters_for_master("bias", "flat"),
        dark=masters_for_master("dark", "flat"),
    output:
        f"{RESULTS}/masters/flat/{{night}}/{{gid}}.fits",
    params:
        rows=master_rows("flat"),
        kind="flat",
        calibration=cal_params("combine", "bias", "dark", "flat", "window_days"),
    log:
        f"{LOGS}/masters/flat/{{night}}/{{gid}}.log",
    benchmark:
        f"{BENCH}/masters/flat/{{night}}/{{gid}}.tsv"
    threads: 2
    resources:
        mem_mb=lambda wc: CAL["combine"]["mem_budget_mb"] + 1000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/build_master.py"


rule calibrate_science:
    """Calibrate a batch of science frames: data (e-), variance, bitmask, provenance."""
    input:
        unpack(science_batch_inputs),
        inventory=ancient(INVENTORY),  # its rows: params.rows
    output:
        directory(f"{RESULTS}/calibrated/{{batch}}"),
    params:
        rows=batch_rows(science_batches),
        calibration=cal_params(
            "overscan", "saturation_grow", "cosmic_rays", "window_days", "bias", "dark", "flat"
        ),
    log:
        f"{LOGS}/calibrate_science/{{batch}}.log",
    benchmark:
        f"{BENCH}/calibrate_science/{{batch}}.tsv"
    threads: 1
    resources:
        mem_mb=sized_mem_mb(batch_of(science_batches), 400, 250),
        runtime=sized_runtime(batch_of(science_batches), 5, 3.0),
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/calibrate_science.py"


rule calibration_report:
    """Masters with their QC, each frame's masters or skipped steps; fails on frames left uncalibrated."""
    input:
        inventory=INVENTORY,
        masters=all_masters,
        calibrated=calibrated_dirs,
    output:
        f"{RESULTS}/calibrated/report.txt",
    log:
        f"{LOGS}/calibration_report.log",
    benchmark:
        f"{BENCH}/calibration_report.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/calibration_report.py"
