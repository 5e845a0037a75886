# The evalfleet image: workers, Flower and the producer all run from it (see docker-compose.yml).
# torch's Linux wheels bring their own CUDA libraries; the host needs the NVIDIA driver and the
# NVIDIA Container Toolkit, nothing else.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall torch. With them the
# s3 extra (s3fs): docker-compose.yml keeps editbench's artifacts in an object store.
COPY pyproject.toml README.md constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt

# Only the packages: nothing else of the build context (work dirs, wheels, .git) goes in.
COPY config ./config
COPY shared ./shared
COPY producer ./producer
COPY workers ./workers
RUN pip install --no-deps . && python -c "import workers, producer, config, shared"

# Writable by any user id (docker-compose.yml runs the containers as EVALFLEET_UID).
RUN mkdir -p /data/work /data/artifacts /data/input /models && chmod 0777 /data/work /data/artifacts /models
ENV EVALFLEET_WORK_DIR=/data/work \
    EVALFLEET_ARTIFACT_ROOT=/data/artifacts \
    HF_HOME=/models/hf

USER 1000:1000
CMD ["python", "-m", "producer", "--help"]
