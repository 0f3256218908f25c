# ccdflow: raw CCD nights -> inventory -> calibrated frames -> photometry.
# Run the demo night:   snakemake --cores all
# Your own data:        snakemake --cores all --configfile my_night.yaml
# From anywhere:        snakemake --cores all --directory WORK --snakefile PATH/Snakefile
# In a host workflow:   module ccdflow: snakefile: "PATH/Snakefile" config: config
#                       use rule * from ccdflow as ccdflow_*         (config/README.md)
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


# The workflow's own files (the demo config, instrument profiles, schemas, the
# package's source) are found from the folder of this Snakefile, never from the
# working directory: the workflow runs the same with --directory elsewhere and as a
# module of another workflow. (workflow.basedir is the *main* Snakefile's folder, the
# host's when this is a module; current_basedir is this file's while it is parsed.)
# Paths a user writes in a config (raw:, results_dir, ...) stay relative to the
# working directory.
WORKFLOW_SOURCE = workflow.current_basedir
WORKFLOW_ROOT = Path(os.fspath(WORKFLOW_SOURCE)) if WORKFLOW_SOURCE.is_local else None
WORKFLOW_PROFILES = WORKFLOW_ROOT / "config" / "instruments" if WORKFLOW_ROOT else None

# The package: installed where Snakemake runs (pip install -e .), else this
# workflow's own src/ (the scripts of the jobs do the same: scripts/*.py).
try:
    import ccdflow
except ImportError:
    if WORKFLOW_ROOT is None:
        raise
    sys.path.insert(0, str(WORKFLOW_ROOT / "src"))

from ccdflow.configcheck import readable_config_errors


# Every job runs in this image with --sdm apptainer (Dockerfile; the tag is the
# package version, tests/test_envs.py); without it the directive does nothing.
container: "docker://ghcr.io/ccdflow/ccdflow:0.1.0"


# The demo night is the default run, not a layer under every config: a user's
# --configfile starts from the schema's defaults and inherits nothing of the demo
# (simulation, targets, campaign name). As a module given `config:`, Snakemake skips
# this configfile: the host's config is used.
if not workflow.overwrite_configfiles:
    # (a remote workflow, e.g. a module from github(...): a cached local copy)
    DEMO_CONFIG = (
        str(WORKFLOW_ROOT / "config" / "config.yaml")
        if WORKFLOW_ROOT
        else workflow.source_path("config/config.yaml")
    )

    configfile: DEMO_CONFIG


with readable_config_errors(workflow.configfiles):
    validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/inventory.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/photometry.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/campaign.smk"


# One run per campaign; a crashed run's Snakemake lock does not block the next
# (ccdflow.runlock). Job processes neither take nor need it. The lock folder is the
# working directory's .snakemake, as Snakemake's own.
if workflow.is_main_process:
    from snakemake.exceptions import WorkflowError
    from snakemake.logging import logger

    from ccdflow.runlock import CampaignBusy, guard_campaign

    try:
        CAMPAIGN_LOCK = guard_campaign(RESULTS, ".snakemake/locks", sys.argv, logger)
    except CampaignBusy as busy:
        raise WorkflowError(str(busy)) from None

REBUILD = products_to_rebuild() if workflow.is_main_process else []


rule all:
    input:
        REBUILD,
        LAYOUT.inventory_summary,
        LAYOUT.calibration_report,
        all_field_products,
        all_qa_products,
        LAYOUT.manifest,
        LAYOUT.run_ok,
    default_target: True
