"""The pipeline in process: the reference stage order, stages inserted at the documented points, compensations
in reverse on every ending, and stages that see the decoded request, each stream delta and the response."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from odock.errors import ClientDisconnected, Forbidden, GatewayError
from odock.model import GatewayResponse, StreamEvent, TextDelta
from odock.pipeline.call import Call
from odock.pipeline.runner import BodyLimits, Pipeline
from odock.pipeline.stage import Stage
from tests.harness import wait_usage
from tests.inprocess import in_process_gateway

REFERENCE_ORDER = [
    "pre_auth_gate",
    "authenticate",
    "usage",
    "early_gate",
    "read_body",
    "model_access",
    "final_gate",
    "routing",
]


class Probe(Stage):
    """Registers a compensation that notes its name, so the order of the unwinding can be checked (an async one,
    or with `plain` a plain function)."""

    def __init__(
        self, name: str, log: list[str], fail: GatewayError | None = None, *, plain: bool = False
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.log = log
        self.fail = fail
        self.plain = plain

    async def before(self, call: Call) -> None:
        self.log.append(f"before:{self.name}")

        async def undo() -> None:
            self.log.append(f"undo:{self.name}")

        call.defer((lambda: self.log.append(f"undo:{self.name}")) if self.plain else undo)
        if self.fail is not None:
            raise self.fail


class Shout(Stage):
    """Upper-cases every text delta and the unary content; records what it saw of the request."""

    name = "shout"
    needs_request = True
    needs_response = True

    def __init__(self) -> None:
        self.seen_models: list[str] = []
        self.responses: list[GatewayResponse | None] = []

    async def before(self, call: Call) -> None:
        self.seen_models.append(call.ctx.requested_model or "")

    def on_delta(self, call: Call, event: StreamEvent) -> StreamEvent | None:
        return TextDelta(event.text.upper(), event.index) if isinstance(event, TextDelta) else event

    async def after(self, call: Call, response: GatewayResponse | None) -> None:
        self.responses.append(response)
        if response is not None:
            response.content = response.content.upper()
            for block in response.content_blocks or ():
                if block.text is not None:
                    block.text = block.text.upper()


def openai_client(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway.test/v1",
        api_key=gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )


async def test_llm_stages_follow_the_reference_order(tmp_path: Path) -> None:
    """The LLM pipeline's stages are, in order, the reference's §2.2 steps (with governance on)."""
    async with in_process_gateway(tmp_path) as gw:
        # the request log line (on by default) is an observation stage in front of the reference's steps
        assert gw.gateway.pipelines["llm"].names() == ["request_log", *REFERENCE_ORDER]
        assert gw.gateway.pipelines["listing"].names() == [
            "request_log", "pre_auth_gate", "authenticate", "early_gate"
        ]  # fmt: skip


async def test_insertion_points_sit_where_the_reference_puts_them(tmp_path: Path) -> None:
    """pre_route before model access; pre_reserve after it and before the reservations; pre_upstream after them."""

    class Named(Stage):
        def __init__(self, name: str) -> None:
            self.name = name  # type: ignore[misc]

    extra = {"pre_route": [Named("r")], "pre_reserve": [Named("s")], "pre_upstream": [Named("u")]}
    async with in_process_gateway(tmp_path, **extra) as gw:
        names = gw.gateway.pipelines["llm"].names()
    assert names.index("read_body") < names.index("r") < names.index("model_access") < names.index("s")
    assert names.index("s") < names.index("final_gate") < names.index("u") < names.index("routing")


async def test_a_call_runs_in_process_with_the_official_sdk(tmp_path: Path) -> None:
    """The whole app answers the OpenAI SDK in process (no socket) and records the call's usage."""
    async with in_process_gateway(tmp_path) as gw:
        client = openai_client(gw)
        reply = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "hello"}]
        )
        completion = reply.parse()
        assert completion.choices[0].message.content
        record = await wait_usage(gw.service, reply.headers["x-request-id"])
        assert record["outcome"] == "success" and record["input_tokens"] > 0


async def test_a_blocking_stage_unwinds_in_reverse_and_speaks_the_route_dialect(tmp_path: Path) -> None:
    """A pre-upstream stage that blocks: the upstream is never called, every compensation runs in reverse
    (the governance post-flight and the usage record included), and the Anthropic SDK raises its own class."""
    log: list[str] = []
    blocked = Forbidden("blocked by policy", "safety_blocked")
    stages = [Probe("first", log, plain=True), Probe("second", log, fail=blocked)]
    async with in_process_gateway(tmp_path, pre_upstream=stages) as gw:
        client = anthropic.AsyncAnthropic(
            base_url="http://gateway.test",
            api_key=gw.seeded["secret"],
            max_retries=0,
            http_client=gw.sdk_client(),
        )
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            await client.messages.create(
                model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
        assert "blocked by policy" in str(raised.value)
        assert log == ["before:first", "before:second", "undo:second", "undo:first"]
        assert gw.transport.requests == 0  # the upstream was never called
        request_id = raised.value.response.headers["x-request-id"]
        record = await wait_usage(gw.service, request_id)
        assert (record["status"], record["outcome"], record["error_code"]) == (
            403,
            "failed",
            "safety_blocked",
        )


async def test_stages_see_the_decoded_request_each_delta_and_the_response(tmp_path: Path) -> None:
    """A stage declaring it needs the request and response gets them: it changes a translated stream's deltas
    and a unary answer's content, and both reach the client changed."""
    shout = Shout()
    async with in_process_gateway(tmp_path, pre_upstream=[shout]) as gw:
        async with gw.client() as http:
            headers = {"Authorization": f"Bearer {gw.seeded['secret']}"}
            body = {"model": "claude-test", "messages": [{"role": "user", "content": "say something"}]}
            unary = await http.post("/v1/llm/chat", json=body, headers=headers)
            assert unary.status_code == 200, unary.text
            content = unary.json()["content"]
            assert content and content == content.upper()
            streamed = await http.post("/v1/llm/chat", json={**body, "stream": True}, headers=headers)
            assert streamed.status_code == 200
            text = streamed.text
            assert text.rstrip().endswith("data: [DONE]")
            chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
            said = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert said and said == said.upper() and said != said.lower()
        assert shout.seen_models == ["claude-test", "claude-test"]
        assert isinstance(shout.responses[0], GatewayResponse)


class _Exchange:
    """A client exchange that never disconnects and records what was sent."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.request_id = "r-1"
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.started = self.finished = False
        self.sent: list[tuple[int, bytes]] = []
        self.path = "/test"

    def query(self, name: str) -> str | None:
        return None

    def client_host(self) -> str:
        return "127.0.0.1"

    async def body(self, limit: int, timeout_s: float) -> bytes:
        return b"{}"

    async def respond(self, status: int, body: bytes, content_type: bytes = b"", headers: Any = None) -> None:
        self.started = self.finished = True
        self.sent.append((status, body))

    async def start_stream(self, *args: Any, **kwargs: Any) -> None:
        self.started = True

    async def write(self, chunk: bytes) -> None:
        raise ClientDisconnected()

    async def end(self, chunk: bytes = b"") -> None:
        self.finished = True

    async def wait_disconnect(self) -> None:
        await asyncio.Event().wait()


class _HangingRoute:
    """A route the gateway answers itself, which never finishes answering."""

    name = "test.hang"
    family: str | None = None
    dialect: Any = None

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    def render(self, err: GatewayError) -> tuple[bytes, bytes]:
        return err.code.encode(), b"text/plain"

    async def decode(self, call: Call) -> None:
        pass

    async def send(self, call: Call, candidate: Any) -> Any:
        raise AssertionError("no upstream")

    async def respond(self, call: Call, upstream: Any) -> None:
        self.entered.set()
        await asyncio.Event().wait()


async def test_compensations_run_in_reverse_on_cancel() -> None:
    """A call cancelled mid-way (shutdown, client gone) still runs every compensation, in reverse."""
    log: list[str] = []
    pipeline = Pipeline(
        [Probe("a", log), Probe("b", log)],
        transport=None,  # type: ignore[arg-type]
        limits=BodyLimits(1024, 1.0),
        client_ip=lambda exchange: "127.0.0.1",
    )
    route = _HangingRoute()
    task = asyncio.create_task(pipeline.run(_Exchange(), route))
    await asyncio.wait_for(route.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["before:a", "before:b", "undo:b", "undo:a"]


async def test_a_failing_compensation_does_not_stop_the_others() -> None:
    """One compensation raising is logged; those registered before it still run."""
    log: list[str] = []

    class Broken(Stage):
        name = "broken"

        async def before(self, call: Call) -> None:
            async def undo() -> None:
                raise RuntimeError("boom")

            call.defer(undo)

    pipeline = Pipeline(
        [Probe("a", log), Broken(), Probe("c", log, fail=Forbidden("no", "nope"))],
        transport=None,
        limits=BodyLimits(1024, 1.0),  # type: ignore[arg-type]
        client_ip=lambda exchange: "127.0.0.1",
    )
    exchange = _Exchange()
    await pipeline.run(exchange, _HangingRoute())
    assert log == ["before:a", "before:c", "undo:c", "undo:a"]
    assert exchange.sent == [(403, b"nope")]


def test_hooks_not_overridden_cost_nothing() -> None:
    """The runner's per-phase lists hold only the stages that override that hook."""
    log: list[str] = []
    pipeline = Pipeline(
        [Probe("a", log), Shout()],
        transport=None,
        limits=BodyLimits(1, 1.0),  # type: ignore[arg-type]
        client_ip=lambda exchange: "",
    )
    assert [s.name for s in pipeline.before_stages] == ["a", "shout"]
    assert [s.name for s in pipeline.delta_stages] == ["shout"]
    assert [s.name for s in pipeline.after_stages] == ["shout"]
    assert pipeline.needs_request and pipeline.needs_response


async def test_native_routes_decode_for_a_stage_that_needs_the_call(tmp_path: Path) -> None:
    """With a stage that needs the request and response, native routes decode with their own dialect: the stage
    sees the requested model, and its changes reach OpenAI, Anthropic (streamed) and Gemini clients."""
    shout = Shout()
    async with in_process_gateway(tmp_path, pre_upstream=[shout]) as gw:
        chat = await openai_client(gw).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "tell me"}]
        )
        text = chat.choices[0].message.content or ""
        assert text and text == text.upper() and chat.usage is not None and chat.usage.prompt_tokens > 0

        claude = anthropic.AsyncAnthropic(
            base_url="http://gateway.test",
            api_key=gw.seeded["secret"],
            max_retries=0,
            http_client=gw.sdk_client(),
        )
        said = ""
        async with claude.messages.stream(
            model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "tell me"}]
        ) as stream:
            async for piece in stream.text_stream:
                said += piece
            final = await stream.get_final_message()
        assert said and said == said.upper() and final.usage.output_tokens > 0

        async with gw.client() as http:
            reply = await http.post(
                "/v1beta/models/gemini-test:generateContent",
                headers={"x-goog-api-key": gw.seeded["secret"]},
                json={"contents": [{"role": "user", "parts": [{"text": "tell me"}]}]},
            )
        assert reply.status_code == 200, reply.text
        parts = reply.json()["candidates"][0]["content"]["parts"]
        gemini_text = "".join(p.get("text", "") for p in parts)
        assert gemini_text and gemini_text == gemini_text.upper()
        assert shout.seen_models == ["gpt-test", "claude-test", "gemini-test"]
        assert all(r is not None for r in shout.responses[:1])


async def test_without_such_a_stage_native_routes_relay_bytes(tmp_path: Path) -> None:
    """No stage needs the call: the pipeline stays a byte relay and decodes nothing for the stages."""
    async with in_process_gateway(tmp_path) as gw:
        llm = gw.gateway.pipelines["llm"]
        assert not llm.needs_request and not llm.needs_response and not llm.delta_stages
        chat = await openai_client(gw).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "tell me"}]
        )
        assert chat.choices[0].message.content
