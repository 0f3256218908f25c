# ccdflow: raw CCD nights -> inventory -> calibrated frames -> photometry.
# Run the demo night:   snakemake --cores all
# Your own data:        snakemake --cores all --configfile my_night.yaml
from snakemake.utils import min_version, validate

from ccdflow.configcheck import readable_config_errors

min_version("9.0")


# The demo night is the default run, not a layer under every config: a user's
# --configfile starts from the schema's defaults and inherits nothing of the demo
# (simulation, targets, campaign name).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


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
# (ccdflow.runlock). Job processes neither take nor need it.
if workflow.is_main_process:
    import sys

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
