"""One structured log line per request: its fields, the modes (all, errors, sampled, off), the formats, and
never a prompt, a completion, a key or its hash."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from odock.gateway import Gateway
from odock.logs import JSONFormatter, TextFormatter, formatter
from odock.settings import Settings
from tests.inprocess import in_process_gateway

PROMPT = "purple-elephant-prompt-text"


class Lines(logging.Handler):
    """Keeps the request log's records."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(JSONFormatter().format(r)) for r in self.records]


@pytest.fixture()
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("odock.request")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def sdk(gw: Any, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway.test/v1",
        api_key=key or gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )


async def test_one_line_per_request_with_its_fields(tmp_path: Path, lines: Lines) -> None:
    """A unary call, a stream and a refused key each give exactly one line, with ids, model, provider, status,
    latency, TTFT (streams), tokens, cost and the routing decision — and no prompt, completion or secret."""
    async with in_process_gateway(tmp_path) as gw:
        client = sdk(gw)
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": PROMPT}]
        )
        answer = raw.parse().choices[0].message.content
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        with pytest.raises(openai.AuthenticationError):
            await sdk(gw, "sk-wrong-key-0123456789").chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": PROMPT}]
            )
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
    unary, streaming, refused, unknown = lines.json()
    assert unary["msg"] == "request" and unary["request_id"] == raw.headers["x-request-id"]
    assert unary["key_id"] == gw.seeded["key_id"] and unary["organisation_id"]
    assert unary["model"] == "gpt-test" and unary["provider"] == "openai" and unary["route"] == "openai.chat"
    assert unary["status"] == 200 and unary["latency_ms"] >= 0 and unary["overhead_ms"] >= 0
    assert unary["input_tokens"] > 0 and unary["output_tokens"] > 0 and unary["cost_usd"] > 0
    assert unary["routing"] == "direct" and unary["attempts"] == 1 and "ttft_ms" not in unary
    assert streaming["stream"] is True and streaming["ttft_ms"] >= 0 and streaming["output_tokens"] > 0
    assert refused["status"] == 401 and refused["code"] == "unauthorized" and "key_id" not in refused
    assert unknown["status"] == 400 and unknown["code"] == "model_not_found"
    text = json.dumps(lines.json())
    secret = gw.seeded["secret"]
    for forbidden in (PROMPT, answer, streamed, secret, hashlib.sha256(secret.encode()).hexdigest()):
        assert forbidden and forbidden not in text


@pytest.mark.parametrize(("mode", "logged"), [("errors", 1), ("sampled", 1), ("off", 0)])
async def test_modes_choose_which_requests_are_logged(
    tmp_path: Path, lines: Lines, mode: str, logged: int
) -> None:
    """`errors` logs only failed requests, `sampled` (rate 0) only errors too, `off` nothing and adds no stage."""
    async with in_process_gateway(tmp_path, request_log=mode, request_log_sample_rate=0.0) as gw:
        client = sdk(gw)
        await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert ("request_log" in gw.gateway.pipelines["llm"].names()) is (mode != "off")
    assert [line["status"] for line in lines.json()] == [400] * logged


def test_text_lines_are_readable_and_cannot_be_forged() -> None:
    """The terminal format is `time level logger msg k=v …`; values with spaces or newlines are quoted."""
    record = logging.LogRecord("odock.request", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"request_id": "abc", "status": 200, "model": "evil\nlevel=error x"}
    line = TextFormatter().format(record)
    assert "\n" not in line and " info    odock.request request request_id=abc status=200 " in line
    assert 'model="evil\\nlevel=error x"' in line
    as_json = json.loads(JSONFormatter().format(record))
    assert as_json["status"] == 200 and as_json["model"] == "evil\nlevel=error x"


def test_auto_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    """ODOCK_LOG_FORMAT=auto picks text for a TTY, JSON for a pipe; json/text force one."""

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert isinstance(formatter("auto", Stream(True)), TextFormatter)
    assert isinstance(formatter("auto", Stream(False)), JSONFormatter)
    assert isinstance(formatter("text", Stream(False)), TextFormatter)
    assert isinstance(formatter("json", Stream(True)), JSONFormatter)


async def test_an_empty_catalogue_says_what_to_do_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Starting on an empty catalogue logs how to fill it (the quick start, the CLI, the console)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'odock.db'}")
    gateway = await Gateway.open(settings)
    try:
        with caplog.at_level(logging.INFO, logger="odock.gateway"):
            await gateway.start()
    finally:
        await gateway.stop()
    hint = [r.getMessage() for r in caplog.records if "catalogue is empty" in r.getMessage()]
    assert hint and "odock apply examples/quickstart.yaml" in hint[0] and "/console" in hint[0]


async def test_budget_decisions_are_in_the_line(tmp_path: Path, lines: Lines) -> None:
    """Under a budget a call's line says `budget=settled`; once the budget is spent, `budget=denied`."""
    from odock.admin.governance import admin_for

    async with in_process_gateway(tmp_path) as gw:
        governance = gw.gateway.governance
        assert governance is not None
        budgets = admin_for(gw.service.store, on_change=governance.refresh_definitions)
        budget = await budgets.create_budget({"name": "b", "organisation": "acme", "amount_usd": "100"})
        client = sdk(gw)
        await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        await budgets.update_budget(budget.id, {"amount_nanos": 0})
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
    settled, denied = lines.json()
    assert settled["budget"] == "settled" and settled["status"] == 200
    assert denied["budget"] == "denied" and denied["code"] == "budget_exceeded"
