"""Rule check_run: print the run summary; fail where requested products could not be made."""
# ccdflow: installed in the job's environment (pip install -e ., the container image),
# else this workflow's own src/ (a conda env made from envs/*.yaml lists only the
# package's dependencies). Snakemake sets __file__ to this script's own path.
try:
    import ccdflow  # noqa: F401
except ImportError:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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
