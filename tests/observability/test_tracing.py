"""OpenTelemetry traces exported over OTLP/HTTP to a real receiver: a root span per call, a span per stage and
per upstream attempt, GenAI attributes, W3C trace context sent upstream, and sampling decided at the root."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.inprocess import in_process_gateway
from tests.observability.otlp_receiver import Span, otlp_receiver

PROMPT = "purple-elephant-prompt-text"
SERVER, CLIENT = 2, 3  # OTLP span kinds
ERROR = 2  # OTLP status code


def sdk(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway.test/v1",
        api_key=gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )


def root_of(spans: list[Span]) -> Span:
    [root] = [s for s in spans if s.name == "http.request"]
    return root


async def test_a_call_is_traced_with_genai_attributes_and_trace_context_upstream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sampled unary call exports one trace: the SERVER root with GenAI attributes and usage, a child span per
    stage, and a CLIENT span for the upstream attempt whose traceparent the upstream received; the request's
    log line names the trace."""
    with otlp_receiver() as receiver, caplog.at_level(logging.INFO, logger="odock.request"):
        settings = {"traces_exporter": "otlphttp", "otel_endpoint": receiver.url, "sample_rate": 1.0}
        async with in_process_gateway(tmp_path, **settings) as gw:
            raw = await sdk(gw).chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": PROMPT}]
            )
            reply = raw.parse()
            sent = gw.mock.journal[-1]["headers"]["traceparent"]
            assert gw.gateway.tracing is not None and gw.gateway.tracing.flush()
        assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
        [spans] = receiver.traces().values()
    root = root_of(spans)
    assert root.kind == SERVER and root.parent_span_id == ""
    assert root.resource["service.name"] == "gateway-service"
    attributes = root.attributes
    assert attributes["gateway.request_id"] == raw.headers["x-request-id"]
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "openai"
    assert (
        attributes["gen_ai.request.model"] == "gpt-test"
        and attributes["gen_ai.response.model"] == "gpt-4o-mini"
    )
    assert reply.usage is not None
    assert attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens  # cached ones included
    assert attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert attributes["http.response.status_code"] == 200 and attributes["organization.id"]
    stages = {s.attributes.get("gateway.stage") for s in spans if s.parent_span_id == root.span_id}
    assert {"authenticate", "read_body", "model_access", "final_gate", "routing", "usage"} <= stages
    [attempt] = [s for s in spans if s.kind == CLIENT]
    assert attempt.parent_span_id == root.span_id and attempt.name == "chat gpt-4o-mini"
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attempt.attributes["http.response.status_code"] == 200
    version, trace_id, span_id, flags = sent.split("-")
    assert (version, trace_id, span_id) == ("00", root.trace_id, attempt.span_id) and int(
        flags, 16
    ) & 1  # sampled
    assert PROMPT not in repr(spans) and gw.seeded["secret"] not in repr(spans)
    [line] = [r for r in caplog.records if r.name == "odock.request"]
    assert line.fields["trace_id"] == root.trace_id  # type: ignore[attr-defined]


async def test_streams_failures_and_cached_tokens(tmp_path: Path) -> None:
    """A stream's root carries its first-chunk event; a failed attempt is an error span; cached input tokens are
    counted in input_tokens and given on their own as gen_ai.usage.cache_read.input_tokens."""
    with otlp_receiver() as receiver:
        settings = {"traces_exporter": "otlphttp", "otel_endpoint": receiver.url, "sample_rate": 1.0}
        async with in_process_gateway(tmp_path, **settings) as gw:
            client = sdk(gw)
            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "user", "content": "[[mock cached=40]] hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = [chunk.usage async for chunk in stream if chunk.usage is not None][-1]
            with pytest.raises(openai.APIStatusError):
                await client.chat.completions.create(
                    model="gpt-broken", messages=[{"role": "user", "content": "x"}]
                )
            assert gw.gateway.tracing is not None and gw.gateway.tracing.flush()
    streamed, failed = sorted(
        receiver.traces().values(), key=lambda t: root_of(t).attributes["gateway.stream"]
    )[::-1]
    root = root_of(streamed)
    assert root.attributes["gateway.stream"] is True and "gateway.stream.first_chunk" in root.events
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 40
    assert root.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert root.attributes["gen_ai.usage.cache_read.input_tokens"] == 40
    broken = root_of(failed)
    assert broken.status_code == ERROR and broken.attributes["http.response.status_code"] == 502
    [attempt] = [s for s in failed if s.kind == CLIENT]
    assert attempt.status_code == ERROR and attempt.attributes["http.response.status_code"] == 500


async def test_sampling_is_decided_once_at_the_root(tmp_path: Path) -> None:
    """At rate 0 nothing is exported (and no traceparent goes upstream) unless the inbound traceparent is
    sampled, in which case the call joins that trace; an unsampled inbound traceparent is honoured too."""
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with otlp_receiver() as receiver:
        settings = {"traces_exporter": "otlphttp", "otel_endpoint": receiver.url, "sample_rate": 0.0}
        async with in_process_gateway(tmp_path, **settings) as gw:
            client = sdk(gw)
            messages = [{"role": "user", "content": "hi"}]
            await client.chat.completions.create(model="gpt-test", messages=messages)  # type: ignore[arg-type]
            assert "traceparent" not in gw.mock.journal[-1]["headers"]
            for flags in ("00", "01"):
                await client.chat.completions.create(
                    model="gpt-test",
                    messages=messages,  # type: ignore[arg-type]
                    extra_headers={"traceparent": f"00-{parent_trace}-{parent_span}-{flags}"},
                )
            assert gw.gateway.tracing is not None and gw.gateway.tracing.flush()
    [(trace_id, spans)] = receiver.traces().items()
    assert trace_id == parent_trace and root_of(spans).parent_span_id == parent_span


async def test_tracing_off_builds_nothing(tmp_path: Path) -> None:
    """With tracing off (the default) there is no trace stage, no proxy and no tracing transport."""
    async with in_process_gateway(tmp_path) as gw:
        pipeline = gw.gateway.pipelines["llm"]
        assert gw.gateway.tracing is None and "trace" not in pipeline.names()
        assert all(not type(s).__name__.startswith("Traced") for s in pipeline.stages)
        assert pipeline.transport is gw.gateway.transport


def test_observability_settings_are_checked() -> None:
    """Unknown modes and rates outside [0, 1] stop the start with a message naming the variable."""
    from odock.settings import load_settings

    for overrides, name in (
        ({"traces_exporter": "jaeger"}, "OBSERVABILITY_OTEL_TRACES_EXPORTER"),
        ({"sample_rate": 1.5}, "OBSERVABILITY_SAMPLE_RATE"),
        ({"request_log": "some"}, "ODOCK_REQUEST_LOG"),
        ({"log_format": "xml"}, "ODOCK_LOG_FORMAT"),
        ({"request_log_sample_rate": float("nan")}, "ODOCK_REQUEST_LOG_SAMPLE_RATE"),
    ):
        with pytest.raises(SystemExit, match=name):
            load_settings(**overrides)
    assert load_settings(traces_exporter="otlphttp").traces_url == "http://localhost:4318/v1/traces"
