"""Rule check_run: print the run summary; fail where requested products could not be made."""
import json
import sys
from pathlib import Path

from ccdflow.runlog import start_job

job = start_job(snakemake)
print(Path(snakemake.input.text).read_text(), file=sys.stderr)
problems = json.loads(Path(snakemake.input.problems).read_text())
if problems:
    # every other product was made before this rule ran; exit non-zero so nobody misses it
    raise SystemExit("ccdflow: the run could not make everything asked for:\n  " + "\n  ".join(problems)
                     + f"\n(details: {snakemake.input.text})")
