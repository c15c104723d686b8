# The load balancer in front of the modelserve replicas: Debian's HAProxy package on the
# same base image as the serving image (deploy/build-image.sh picks or makes that base).
#
#   docker build --network host -f deploy/replicas/haproxy.Dockerfile \
#       --build-arg BASE_IMAGE=modelserve-base:bookworm-py3.11 -t modelserve-balancer deploy/replicas
#
# (deploy/replicas/replicas.sh and compose.yaml do this.) Runs as the package's `haproxy`
# user; nothing is written at run time, so a read-only root file system works.
ARG BASE_IMAGE=modelserve-base:bookworm-py3.11
FROM ${BASE_IMAGE}
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends haproxy >/dev/null; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    haproxy -v | head -1
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
RUN haproxy -c -f /etc/haproxy/haproxy.cfg
USER haproxy
EXPOSE 8080 8081 8404
# SIGUSR1 is HAProxy's soft stop: it stops listening and lets the requests in flight finish
# (SIGTERM would cut them).
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
