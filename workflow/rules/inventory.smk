checkpoint inventory:
    """Read every raw header, classify, assign nights and groups, quarantine bad files."""
    input:
        raw=raw_inputs,
        profiles=list(profile_files().values()),
    output:
        table=INVENTORY,
        parquet=LAYOUT.inventory_parquet,
        inputs=LAYOUT.inventory_inputs,
    params:
        sources=config["raw"],
        # size, times and inode of every raw file: an edit that keeps the
        # modification time still reruns the inventory (which reads only changed files)
        raw_state=raw_files_state,
        inputs=inventory_inputs_digest,
        rows_cache=LAYOUT.inventory_rows_cache,
        profiles=profile_files(),
        night=config["night"],
        inventory=config["inventory"],
    log:
        LAYOUT.log("inventory"),
    benchmark:
        LAYOUT.benchmark("inventory")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/inventory.py"


rule frame_stats:
    """Pixel statistics of each usable frame, many frames per job."""
    input:
        inventory=ancient(INVENTORY),  # its rows: params.rows
        frames=raw_frames(batch_ids("framestats")),
    output:
        directory(LAYOUT.batch("framestats", "{batch}")),
    params:
        rows=rows_digest(batch_ids("framestats")),
        frames=batch_ids("framestats"),
    log:
        LAYOUT.log("frame_stats", "{batch}"),
    benchmark:
        LAYOUT.benchmark("frame_stats", "{batch}")
    threads: 1
    resources:
        mem_mb=sized_mem_mb(batch_ids("framestats"), 300, 40),
        runtime=sized_runtime(batch_ids("framestats"), 2, 0.4),
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/frame_stats.py"


rule inventory_summary:
    """Counts by night, type, filter, exposure time and binning; quarantine list; frame statistics."""
    input:
        inventory=INVENTORY,
        stats=batch_dirs("framestats"),
    output:
        text=LAYOUT.inventory_summary,
        stats=LAYOUT.framestats_table,
    log:
        LAYOUT.log("inventory_summary"),
    benchmark:
        LAYOUT.benchmark("inventory_summary")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/core.yaml"
    script:
        "../../scripts/inventory_summary.py"
