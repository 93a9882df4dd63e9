# authority: the token service, as it runs in production.
# Build: docker build -t authority .   Run: see docker-compose.yml (it needs Redis/Valkey and configuration).
# Reproducible: the base image by digest (python:3.11-slim-bookworm as published on 2026-08-25, Python 3.11.16; both
# stages the same), every Python distribution from requirements/serve.txt by version and hash (README, Dependencies).

FROM python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /venv
# The locked set first (its own layer: a source change does not reinstall it), then the project alone: --no-deps and
# --no-build-isolation, so pip fetches nothing the lock does not pin (setuptools, the build backend, is in it).
COPY requirements/serve.txt ./requirements/
RUN /venv/bin/pip install --require-hashes --no-deps -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY authority ./authority
RUN /venv/bin/pip install --no-deps --no-build-isolation . && /venv/bin/pip check

FROM python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b
RUN groupadd --system --gid 10001 authority \
    && useradd --system --uid 10001 --gid authority --no-create-home --shell /usr/sbin/nologin authority \
    && install -d -o authority -g authority -m 0700 /keys
COPY --from=build /venv /venv
# Read-only root filesystem friendly: nothing is written outside /keys (a volume) and /tmp (a tmpfs).
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTHORITY_KEYS_DIR=/keys \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
VOLUME ["/keys"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# The worker settings the benchmark chose (README, Performance): granian, 2 workers, uvloop, on 2 cores. A worker that
# dies is replaced while the other serves (--respawn-failed-workers); granian exits only on a crash loop.
CMD ["granian", "--interface", "asgi", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--respawn-failed-workers", "--loop", "uvloop", "--no-ws", "--log-level", "warning", "authority.asgi:app"]
