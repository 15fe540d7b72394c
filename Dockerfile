# syntax=docker/dockerfile:1
#
# Farebox gateway image: `farebox serve` as an unprivileged user, configured by
# FAREBOX_* environment variables. See "## Container" in README.md.
#
#   docker build -t farebox .
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t farebox .
#
# Linted by hadolint in the test suite (tests/test_dockerfile.py, rules in
# .hadolint.yaml): keep `./dev test` green when editing this file.
#
# The base image is pinned by tag, in BASE (both stages use it). To pin it by
# digest as well (the same bytes on every build), look the digest up and append
# it, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # "Digest: sha256:..."
#   ARG BASE=python:3.11-slim-bookworm@sha256:<digest>
# and refresh it when Debian or Python publish security fixes.
#
# The tests (tests/test_container.py) build it with podman and no network at
# all. BASE is then a Debian bookworm made by debootstrap (its python3 is 3.11
# too; there "python" is only the venv's, hence python3 in the build stage),
# and pip takes the wheels `./dev test` downloaded, mounted for the build:
#   podman build --format docker --network none \
#     --build-arg BASE=localhost/farebox-base:bookworm \
#     --volume "$PWD/.container/wheelhouse:/wheels:ro" \
#     --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels -t farebox .
# PIP_NO_INDEX and PIP_FIND_LINKS are pip's own settings, unset unless given:
# pip then takes PyPI. (`--format docker`: podman's default, OCI, has no
# HEALTHCHECK and drops it.)
ARG BASE=python:3.11-slim-bookworm

# ---- build: the locked dependencies and farebox, in a venv --------------------
FROM ${BASE} AS build

ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every dependency comes from one wheel in the hash-pinned lock (no compiler
# needed). The lock is copied before the source so that this layer is rebuilt
# only when the lock changes, not on every code edit.
RUN python3 -m venv /opt/farebox
COPY requirements.lock /tmp/requirements.lock
RUN /opt/farebox/bin/pip install --no-cache-dir --require-hashes --no-deps \
        -r /tmp/requirements.lock

# Farebox itself (pip builds it with setuptools in an isolated environment,
# as `./dev` does). Then pip and setuptools leave the venv: the runtime needs
# neither, so it holds only the locked packages and farebox.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN /opt/farebox/bin/pip install --no-cache-dir --no-deps . \
    && /opt/farebox/bin/pip uninstall --yes pip setuptools

# ---- runtime -------------------------------------------------------------------
FROM ${BASE}

ARG REVISION=unknown
LABEL org.opencontainers.image.title="farebox" \
      org.opencontainers.image.description="Pay-per-use gateway for public services: a reverse proxy that answers HTTP 402 and takes BSV micropayments" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# No Debian packages are added. bsv-sdk's native extension has libsecp256k1
# linked in statically (`ldd _bsv_native*.so`: libc and libpthread only); the
# other wheels need at most libgcc_s, libstdc++ and librt, which the base
# image already has. The RUN further down fails the build if that changes: bsv-sdk
# must report its native backend, and every shared object in the venv must
# load (a C extension that fails to load is otherwise often skipped silently,
# e.g. multidict or yarl fall back to pure Python).
COPY --from=build /opt/farebox /opt/farebox

ENV PATH=/opt/farebox/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FAREBOX_HOST=0.0.0.0 \
    FAREBOX_PORT=8402 \
    FAREBOX_POLICIES=/etc/farebox/policies \
    FAREBOX_KEY_FILE=/run/secrets/farebox_key
# Token signing keys go to the default ./token-keys of the working directory
# below: /var/lib/farebox/token-keys. (Not set here: hadolint's DL3064 takes a
# name ending in KEYS for a secret, and the path is not one.)

# The native-code checks, then the user. It owns only its state directory; the
# code and the policies stay read-only to it. Its uid 10001 is fixed, so that a
# key file or a volume can be chown'ed to it.
RUN python -c "import sys, bsv; sys.exit(0 if bsv.native_status().get('available') else 'bsv-sdk: no native extension (libsecp256k1)')" \
    && python -c "import ctypes, glob; [ctypes.CDLL(so) for so in glob.glob('/opt/farebox/lib/python3.11/site-packages/**/*.so*', recursive=True)]" \
    && farebox --version \
    && groupadd --system --gid 10001 farebox \
    && useradd --system --uid 10001 --gid farebox --no-create-home \
        --home-dir /var/lib/farebox --shell /usr/sbin/nologin farebox \
    && mkdir -p /etc/farebox/policies /var/lib/farebox/token-keys \
    && chown -R farebox:farebox /var/lib/farebox \
    && chmod 0700 /var/lib/farebox /var/lib/farebox/token-keys

WORKDIR /var/lib/farebox
# Token signing keys (created on first start) must outlive the container:
# mount a named volume here (`-v farebox-data:/var/lib/farebox`).
VOLUME ["/var/lib/farebox"]
USER 10001:10001

EXPOSE 8402
# SIGTERM: stop accepting, drain in-flight requests for up to
# FAREBOX_SHUTDOWN_TIMEOUT (30s), exit. Give `docker stop` longer (-t 35).
STOPSIGNAL SIGTERM
# Liveness: GET /healthz on the listening port (FAREBOX_HOST/FAREBOX_PORT),
# with the Python already in the image (no curl). /readyz (the store answers)
# is for a load balancer or an orchestrator's readiness probe, not for this.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; h = os.environ.get('FAREBOX_HOST') or '127.0.0.1'; h = {'0.0.0.0': '127.0.0.1', '::': '[::1]'}.get(h, f'[{h}]' if ':' in h else h); p = os.environ.get('FAREBOX_PORT') or '8402'; u.build_opener(u.ProxyHandler({})).open(f'http://{h}:{p}/healthz', timeout=4)"]

ENTRYPOINT ["farebox"]
CMD ["serve"]
