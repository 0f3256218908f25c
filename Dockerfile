# The image every ccdflow job runs in with `snakemake --sdm apptainer` (the
# Snakefile's `container:` directive names it; without --sdm apptainer the
# directive does nothing). Build and publish from the repository root:
#
#   docker build -t ghcr.io/ccdflow/ccdflow:0.1.0 .
#   docker push ghcr.io/ccdflow/ccdflow:0.1.0
#
# The tag is pyproject.toml's version; tests/test_envs.py checks that the Snakefile
# names the image of the current version and that this file installs the pins.
ARG MINIFORGE_VERSION=24.9.2-0
FROM condaforge/miniforge3:${MINIFORGE_VERSION}

# One environment for every rule: the plots environment is the core one plus
# matplotlib and batman-package, and the simulator's is a subset of it. Its
# linux-64 pins (envs/make_pins.py) are what the workflow's own tests ran with.
# Conda stays in the image, so `--sdm conda apptainer` can still make the per-rule
# environments (envs/*.yaml) inside it.
COPY envs/ /opt/ccdflow/envs/
RUN mamba create --yes --prefix /opt/ccdflow/env \
        --file /opt/ccdflow/envs/plots.linux-64.pin.txt \
        --file /opt/ccdflow/envs/simulate.linux-64.pin.txt \
        conda-forge::pip conda-forge::setuptools conda-forge::wheel \
    && mamba clean --all --yes
ENV PATH=/opt/ccdflow/env/bin:${PATH}

# The package, installed by name in the image (the scripts' fallback to the
# workflow's src/ is not needed here: the host's checkout need not be mounted).
# Installed editable from a copy of the workflow so that it finds its schemas and
# instrument profiles (ccdflow.paths.project_root) as in a checkout.
COPY pyproject.toml README.md LICENSE Snakefile /opt/ccdflow/
COPY src/ /opt/ccdflow/src/
COPY workflow/ /opt/ccdflow/workflow/
COPY config/ /opt/ccdflow/config/
COPY scripts/ /opt/ccdflow/scripts/
RUN pip install --no-deps --no-build-isolation --editable /opt/ccdflow \
    && python -c "import ccdflow, ccdflow.paths; print(ccdflow.__version__, ccdflow.paths.project_root())"

LABEL org.opencontainers.image.description="ccdflow: CCD reduction and photometry (Snakemake workflow jobs)" \
      org.opencontainers.image.licenses="BSD-3-Clause"
