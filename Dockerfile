# syntax=docker/dockerfile:1
# The gpufleet operator image: `docker build -t gpufleet:dev .`
#
# Pinned by tag here; pin the digest too when you build for production:
#   docker buildx imagetools inspect python:3.11.13-slim-bookworm   (prints the digest)
#   ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>
# tests/chart/test_image.py runs the install steps below in a clean virtual environment.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a wheel of the package alone (e2e/, the test bed, is not in the context) ---
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .
# The package and its runtime dependencies (no dev or aws extras) into one virtual environment.
RUN python -m venv /opt/gpufleet \
 && /opt/gpufleet/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/gpufleet-*.whl \
 && /opt/gpufleet/bin/pip uninstall --yes pip

# --- runtime: the virtual environment and a non-root user ----------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gpufleet" \
      org.opencontainers.image.description="Autoscales GPU inference fleets across clouds under power caps" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/gpufleet /opt/gpufleet
# 65532: the same uid:gid as the chart's podSecurityContext.
RUN groupadd --gid 65532 gpufleet \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gpufleet
ENV PATH=/opt/gpufleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["gpufleet"]
CMD ["run"]
