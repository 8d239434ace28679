# StreamGate: one image for every role; the command picks it (run, edge, broker, farm, control).
#
#   docker build -t streamgate .
#   docker run -p 8080:8080 -e AUTH_REQUIRED=false streamgate            # single node, no sign-in
#   docker run -p 8080:8080 -e STREAMGATE__SERVER__PUBLIC_URL=https://videos.example streamgate
#                                        # with sign-in: the origin SIWE messages must name
#   docker run streamgate edge --workers 2                               # one role of a fleet
#
# The base is a build argument so the same file builds on python:3.11-slim (the default) or on
# any Debian-like image with Python 3.11 and python3-venv (tests/deploy/test_container.py builds
# one from Debian's packages with mmdebstrap). Offline builds: put wheels in wheelhouse/ and pass
# --build-arg WHEELHOUSE=wheelhouse.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# A directory of wheels inside the context (e.g. wheelhouse): install from it alone, offline.
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/streamgate \
    && /opt/streamgate/bin/pip install --no-compile ${WHEELHOUSE:+--no-index --find-links "/src/$WHEELHOUSE"} . \
    && /opt/streamgate/bin/python -m compileall -q /opt/streamgate/lib

FROM ${BASE}
# tini is PID 1: it forwards SIGTERM/SIGINT to the streamgate process and reaps orphans (the
# supervisor reaps its own children, but an encoder orphaned by a killed worker would otherwise
# stay a zombie under PID 1). Debian's package; already present on the test's base.
# hadolint ignore=DL3008
RUN if ! command -v tini >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends tini \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && ln -sf "$(command -v tini)" /usr/local/sbin/tini \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/streamgate --shell /usr/sbin/nologin streamgate \
    && install -d -o streamgate -g streamgate -m 0750 /var/lib/streamgate /run/streamgate /run/streamgate/prometheus \
    && install -d -m 0755 /etc/streamgate
COPY --from=build /opt/streamgate /opt/streamgate

# No config file is baked in: the defaults (auth required, so server.public_url or auth.domain
# must be given: an edge never takes its sign-in domain from a request's Host) plus the
# environment, or a mounted
# /etc/streamgate/config.yaml (STREAMGATE_CONFIG). The multiprocess directory is where every
# StreamGate process of the container writes its metrics (common/metrics.py).
ENV PATH=/opt/streamgate/bin:$PATH \
    STREAMGATE_DATA_DIR=/var/lib/streamgate \
    PROMETHEUS_MULTIPROC_DIR=/run/streamgate/prometheus \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/streamgate
USER 10001:10001
VOLUME ["/var/lib/streamgate"]
EXPOSE 8080 8090 5570 5571 5572

# The edge's liveness (or the control service's: HEALTHCHECK_PORT=8090); farm and broker have
# no HTTP port, Compose and Kubernetes give them their own checks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/opt/streamgate/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('HEALTHCHECK_PORT') or os.environ.get('SERVER_PORT') or '8080'), timeout=3)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/sbin/tini", "--", "/opt/streamgate/bin/streamgate"]
CMD ["run"]
