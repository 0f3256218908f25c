checkpoint inventory:
    """Read every raw header, classify, assign nights and groups, quarantine bad files."""
    input:
        raw=raw_inputs,
        profiles=list(profile_files().values()),
    output:
        table=INVENTORY,
        parquet=f"{RESULTS}/inventory/inventory.parquet",
    params:
        sources=config["raw"],
        profiles=profile_files(),
        night=config["night"],
        inventory=config["inventory"],
    log:
        f"{LOGS}/inventory.log",
    benchmark:
        f"{BENCH}/inventory.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/inventory.py"


rule frame_stats:
    """Pixel statistics of each usable frame, many frames per job."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=batch_frames,
    output:
        directory(f"{RESULTS}/framestats/{{batch}}"),
    params:
        rows=batch_rows(frame_batches),
    log:
        f"{LOGS}/frame_stats/{{batch}}.log",
    benchmark:
        f"{BENCH}/frame_stats/{{batch}}.tsv"
    threads: 1
    resources:
        mem_mb=sized_mem_mb(batch_of(frame_batches), 300, 40),
        runtime=sized_runtime(batch_of(frame_batches), 2, 0.4),
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/frame_stats.py"


rule inventory_summary:
    """Counts by night, type, filter, exposure time and binning; quarantine list; frame statistics."""
    input:
        inventory=INVENTORY,
        stats=framestats_dirs,
    output:
        text=f"{RESULTS}/inventory/summary.txt",
        stats=f"{RESULTS}/inventory/framestats.ecsv",
    log:
        f"{LOGS}/inventory_summary.log",
    benchmark:
        f"{BENCH}/inventory_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/ccdflow.yaml"
    script:
        "../../scripts/inventory_summary.py"
