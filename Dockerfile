# The autosculpt image used by docker-compose.yml: `docker build -t autosculpt:local .`
# Every command is an autosculpt sub-command: `docker run --rm autosculpt:local env`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
COPY autosculpt ./autosculpt
COPY search ./search
COPY space ./space
COPY reports ./reports
# Versions come from pyproject.toml alone. The extra index holds the CPU-only build of
# the torch version pinned there (2.13.0+cpu satisfies torch==2.13.0), a fraction of the
# size of the CUDA build PyPI would give.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && rm -rf /src

# Non-root. The /data folders exist in the image and belong to that user, so the named
# volumes mounted there start out writable by it.
RUN useradd --create-home --uid 10001 autosculpt \
    && mkdir -p /data/artifacts /data/cache /data/exports \
    && chown -R autosculpt:autosculpt /data
USER autosculpt
WORKDIR /data

ENTRYPOINT ["autosculpt"]
CMD ["--help"]
