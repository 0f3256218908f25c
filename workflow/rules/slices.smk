# Which rows of the inventory each job reads. Jobs take the inventory file as
# ancient() input (its time stamp changes whenever any night is added) and a
# digest of their own rows as a parameter, so Snakemake's params trigger
# reruns a job exactly when its frames' rows change.
from ccdflow.inventory import row_digests, rows_digest


def _rows(frame_ids):
    return rows_digest(_memo("row_digests", lambda path: row_digests(inventory_table())), frame_ids)


def batch_rows(all_batches):
    """Params function: digest of one batch's rows (all_batches: frame_batches, proc_batches...)."""
    return lambda wildcards: _rows(all_batches()[wildcards.batch])


def master_rows(kind):
    return lambda wildcards: _rows(master_plans()[kind][f"{wildcards.night}/{wildcards.gid}"].frame_ids)


def field_rows(wildcards):
    return _rows(_field(wildcards).frame_ids)


# -- resources sized to the frames a job reads ---------------------------------------
# Coefficients measured with the benchmarks/ scripts and the demo night's benchmark
# files (max_rss, s), then doubled: a 4k x 4k camera asks for 16x the memory of a
# 1k x 1k one, and a batch of 25 frames for 25x the time of one.
def _pixels():
    """frame_id -> pixels of the raw frame (0 where the header gave no size)."""
    def compute(path):
        table = inventory_table()
        return dict(zip(table["frame_id"], table["naxis1"].fillna(0) * table["naxis2"].fillna(0)))

    return _memo("pixels", compute)


def sized_mem_mb(frames_of, base_mb, bytes_per_pixel):
    """Resource function: base + bytes_per_pixel x the largest frame of the job (MB)."""
    return lambda wildcards: int(base_mb + bytes_per_pixel * max([_pixels()[f] for f in frames_of(wildcards)] + [0]) / 2**20)


def sized_runtime(frames_of, base_minutes, seconds_per_megapixel):
    """Resource function: base + seconds_per_megapixel x all the job's pixels (minutes)."""
    return lambda wildcards: int(base_minutes + seconds_per_megapixel * sum(_pixels()[f] for f in frames_of(wildcards)) / 1e6 / 60) + 1


def batch_of(all_batches):
    return lambda wildcards: all_batches()[wildcards.batch]


def field_frames(wildcards):
    field = _field(wildcards)
    return field_chunks(field)[wildcards.chunk] if hasattr(wildcards, "chunk") else field.frame_ids
