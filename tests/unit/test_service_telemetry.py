"""The services' FastAPI telemetry: off by default (they report through
Prometheus, and FastAPI would check OpenTelemetry's providers on every
request), on when FastAPI's own FASTAPI_OTEL_AUTO_CONFIGURE asks for it."""

from __future__ import annotations

import fastapi.telemetry._asgi as fastapi_otel
import pytest

from system_under_test.common.app import Service


@pytest.fixture
def providers_configured(monkeypatch):
    # as if an OpenTelemetry SDK had set tracer, meter and logger providers
    monkeypatch.setattr(fastapi_otel, "_unconfigured", lambda provider: False)


def test_a_service_checks_no_telemetry_provider_per_request(providers_configured, monkeypatch):
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    app = Service("t", database=False, redis_user=False).app
    assert app._native_telemetry.enabled() is False


def test_fastapis_own_switch_turns_it_back_on(providers_configured, monkeypatch):
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    app = Service("t", database=False, redis_user=False).app
    assert app._native_telemetry.enabled() is True
