# The custody node image: one image for the init service (cluster PKI, tokens,
# bootstrap, configs) and for every node. See docs/deploy.md.
#
# The base is built from the Debian mirror by deploy/build-base-image.sh (no
# image registry needed); any Debian bookworm image works too, e.g.
#   --build-arg BASE_IMAGE=debian:bookworm-slim
# and then the packages below are installed with apt-get. The project itself
# comes from deploy/wheels/ (deploy/build-wheels.sh), so the build needs no
# network when the base already has the packages.
ARG BASE_IMAGE=localhost/custody-base:bookworm
FROM ${BASE_IMAGE}

# Nodes run as the user custody; the init service (root) hands their volumes to it.
RUN if ! command -v softhsm2-util >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3 python3-venv softhsm2 ca-certificates openssl \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin custody \
    && mkdir -p /cluster /admin /volumes

COPY deploy/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/custody \
    && /opt/custody/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels custody-cluster \
    && rm -rf /tmp/wheels

COPY deploy/init-cluster.sh deploy/run-node.sh deploy/healthcheck.py /opt/custody/deploy/
ENV PATH=/opt/custody/bin:/opt/custody/deploy:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /cluster
CMD ["custody", "--help"]
