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
