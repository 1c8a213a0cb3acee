# s3stream: consume every version under an S3 prefix and hand it to handler plugins.
#
#   docker build -t s3stream .
#   docker run --rm -p 127.0.0.1:9464:9464 \
#       -v "$PWD/config/minimal.toml:/etc/s3stream/config.toml:ro" \
#       -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#       s3stream
#
# Credentials come from the standard AWS chain (environment, a mounted profile, a task or instance
# role); the region is `[s3] region` in the config.
# Any other subcommand works too, e.g. `docker run --rm s3stream consume s3://bucket/prefix/`.
# Logs are JSON lines on stderr; the stdout handler writes messages to stdout.
# With `[consumer.checkpoint] store = "file"`, mount a volume on /var/lib/s3stream (the working
# directory, where the default `.s3stream/checkpoints` lives) so cursors survive restarts.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package and its dependencies (uvloop included: a default dependency on Linux).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY s3stream ./s3stream
RUN pip install . \
    && python -c "import uvloop, s3stream" \
    && rm -rf /src

# Run as an unprivileged user with a writable home for file checkpoints.
RUN groupadd --gid 10001 s3stream \
    && useradd --no-log-init --uid 10001 --gid s3stream --create-home --home-dir /var/lib/s3stream \
        --shell /usr/sbin/nologin s3stream \
    && mkdir -p /etc/s3stream
USER 10001:10001
WORKDIR /var/lib/s3stream

# Metrics and health on 9464 (inside the container's own network namespace, so 0.0.0.0 here only
# exposes it to what you publish with -p); /healthz answers while the process is alive.
ENV S3STREAM_METRICS__PORT=9464 \
    S3STREAM_METRICS__HOST=0.0.0.0
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]

# Exec form: s3stream is PID 1 and receives SIGTERM itself, stopping gracefully within
# consumer.shutdown_grace (keep `docker stop -t` / terminationGracePeriodSeconds above it).
ENTRYPOINT ["s3stream"]
CMD ["run", "--config", "/etc/s3stream/config.toml"]
