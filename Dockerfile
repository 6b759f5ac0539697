# msdb's own containers in docker-compose.yml: the services
# (python -m system_under_test NAME --host 0.0.0.0 --port PORT), the one-shot
# migrations (deploy/compose/migrate.py) and Locust (locustfile.py), all from
# this checkout.  docker-compose.yml builds it as msdb/msdb:dev.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user; the analytics warehouse (DuckDB) lives in a volume at
# /data/analytics, which a new named volume takes over with this ownership.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin msdb \
    && mkdir -p /data/analytics \
    && chown msdb:msdb /data/analytics

WORKDIR /app
COPY . /app
RUN pip install /app

USER msdb
EXPOSE 15420-15426 8089 5557
CMD ["python", "-m", "system_under_test", "--help"]
