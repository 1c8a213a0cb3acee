# s3stream: consume every version under an S3 prefix and hand it to handler plugins.
#
#   docker build -t s3stream .
#   docker run --rm -p 127.0.0.1:9464:9464 \
#       -v "$PWD/my-config.toml:/etc/s3stream/config.toml:ro" \
#       -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_REGION \
#       s3stream
#
# The config is /etc/s3stream/config.toml, and only that file: the image ships config/container.toml
# there (metrics on 0.0.0.0:9464, one example source); mount yours over it, starting from that file.
# No environment variable of the image overrides it. Credentials come from the standard AWS chain
# (environment, a mounted profile, a task or instance role, IRSA); the region from `[s3] region`,
# else AWS_REGION, else AWS_DEFAULT_REGION.
# Any other subcommand works too, e.g. `docker run --rm s3stream consume s3://bucket/prefix/`.
# Logs are JSON lines on stderr; the stdout handler writes messages to stdout.
# With `[consumer.checkpoint] store = "file"`, mount a volume on /var/lib/s3stream (the working
# directory, where the default `.s3stream/checkpoints` lives) so cursors survive restarts.
# Your own handler: deploy/docker/Dockerfile.handler builds FROM this image.

# An exact Python and Debian release. For a fully reproducible base, pin its digest as well (it
# cannot be looked up without the registry, so it is not written here):
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm    # prints "Digest: sha256:…"
#   FROM python:3.11.14-slim-bookworm@sha256:<that digest>
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="s3stream" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package with every dependency at the version in constraints.txt (uvloop included: a
# default dependency on Linux).
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY s3stream ./s3stream
RUN pip install -c constraints.txt . \
    && python -c "import uvloop, s3stream" \
    && rm -rf /src

# Run as an unprivileged user with a writable home for file checkpoints. Nothing else is written:
# the root filesystem can be mounted read-only (deploy/kubernetes/ does).
RUN groupadd --gid 10001 s3stream \
    && useradd --no-log-init --uid 10001 --gid s3stream --create-home --home-dir /var/lib/s3stream \
        --shell /usr/sbin/nologin s3stream
COPY config/container.toml /etc/s3stream/config.toml
# Kept for images built FROM this one (deploy/docker/Dockerfile.handler installs with it).
COPY constraints.txt /usr/local/lib/s3stream/constraints.txt
COPY deploy/docker/healthcheck.py /usr/local/lib/s3stream/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/s3stream

# Metrics and health on 9464, as /etc/s3stream/config.toml's [metrics] says (0.0.0.0 inside the
# container's own network namespace: only what you publish with -p is exposed).
EXPOSE 9464
# The health check asks /healthz of the command the container runs, on the port that command's
# settings give: `run` and `consume` their [metrics] port, `snapshot serve` its [snapshot] port;
# other commands serve no endpoint and are healthy while they run.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/s3stream/healthcheck.py"]

# Exec form: s3stream is PID 1 and receives SIGTERM itself, stopping gracefully within
# consumer.shutdown_grace (keep `docker stop -t` / terminationGracePeriodSeconds above it).
ENTRYPOINT ["s3stream"]
CMD ["run", "--config", "/etc/s3stream/config.toml"]
