"""The plugin engine and its configuration: loading only what is named, per-plugin time limits and failure
modes, parallel findings in a bounded pool, the async post_response queue, storage scopes, and no cost when off."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from odock import metrics
from odock.plugins import PluginConfigError, Plugins, parse_plugins_config, read_plugins_file
from tests.inprocess import InProcessGateway, in_process_gateway
from tests.plugins import sample
from tests.plugins.test_plugins_routes import _openai

SAMPLE = "tests.plugins.sample"


def plugin(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": f"{SAMPLE}:{kind}" if kind[0].isupper() else kind, **fields}


def config(plugins: list[dict[str, Any]], **phases: dict[str, Any]) -> dict[str, Any]:
    return {"plugins": plugins, "phases": phases}


async def open_gateway(tmp_path: Path, document: dict[str, Any], **settings: Any) -> Any:
    path = tmp_path / "plugins.json"
    path.write_text(json.dumps(document))
    return in_process_gateway(tmp_path, plugins_config_path=str(path), **settings)


def ask(gw: InProcessGateway, text: str = "hello") -> Any:
    return _openai(gw).chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}])


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (config([], on_the_way={}), "unknown phase"),
        (config([], pre_route={"sequential": ["ghost"]}), "'ghost' is not declared"),
        (config([plugin("a", "audit_log")], pre_route={"sequential": ["a"], "parallel": ["a"]}), "both"),
        (config([plugin("a", "audit_log", storage_access=["redis"])]), "redis is not offered"),
        (config([plugin("a", "audit_log", storage_access=["wallets"])]), "unknown scope"),
        (config([plugin("a", "Upper")], stream_chunk={"parallel": ["a"]}), "in sequence"),
        (config([plugin("a", "audit_log", timeout_ms=0)]), "timeout_ms"),
        (config([plugin("a", "audit_log", on_error="maybe")]), "on_error"),
        (config([plugin("a", "audit_log"), plugin("a", "audit_log")]), "declared twice"),
        (
            config([plugin("a", "audit_log")], pre_route={"sequential": ["a"], "async": True}),
            "post_response only",
        ),
    ],
)
def test_invalid_configuration_is_refused_with_its_place(document: dict[str, Any], message: str) -> None:
    """Each mistake is a configuration error that names where it is."""
    with pytest.raises(PluginConfigError, match=message):
        parse_plugins_config(document)


def test_a_disabled_plugin_runs_nowhere() -> None:
    """enabled: false keeps the plugin declared but out of every phase (and it is never built)."""
    parsed = parse_plugins_config(
        config([plugin("a", "no.such.module:Thing", enabled=False)], pre_route={"sequential": ["a"]})
    )
    assert parsed.empty()
    assert Plugins.build(parsed, env={}).plugins == {}


def test_build_checks_types_and_phases() -> None:
    """An unknown type lists the bundled ones; a plugin listed in a phase it does not implement is refused."""
    with pytest.raises(PluginConfigError, match="bundled: audit_log, pii_mask, request_transform, webhook"):
        Plugins.build(
            parse_plugins_config(config([plugin("x", "nonesuch")], pre_route={"sequential": ["x"]}))
        )
    with pytest.raises(PluginConfigError, match="does not implement it"):
        Plugins.build(
            parse_plugins_config(config([plugin("g", "Gate")], post_upstream={"sequential": ["g"]}))
        )
    with pytest.raises(PluginConfigError, match="invalid config"):
        Plugins.build(
            parse_plugins_config(
                config(
                    [plugin("t", "request_transform", config={"bogus": 1})], pre_route={"sequential": ["t"]}
                )
            )
        )


def test_entry_points_load_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package's `odock.plugins` entry point runs only when configuration names it: a second,
    unnamed entry point whose module would fail to import is never touched."""
    dist = tmp_path / "acme_guard-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-guard\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[odock.plugins]\nacme_gate = {SAMPLE}:Gate\nacme_trap = acme_trap_module_that_does_not_exist:Trap\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    parsed = parse_plugins_config(config([plugin("guard", "acme_gate")], pre_route={"sequential": ["guard"]}))
    built = Plugins.build(parsed, env={})
    assert isinstance(built.plugins["guard"], sample.Gate)
    assert "acme_trap_module_that_does_not_exist" not in sys.modules


def test_catalogue_yaml_section_is_read(tmp_path: Path) -> None:
    """A catalogue YAML's `plugins:` section holds the same document."""
    path = tmp_path / "odock.yaml"
    path.write_text(
        "organisations: [{name: acme}]\n"
        "plugins:\n"
        "  plugins: [{name: audit, type: audit_log, config: {level: info}}]\n"
        "  phases: {post_response: {sequential: [audit], async: true}}\n"
    )
    parsed = read_plugins_file(path)
    assert parsed.phases["post_response"].sequential == ("audit",)
    assert parsed.phases["post_response"].run_async is True


# --- execution ------------------------------------------------------------------------------------------------


async def test_no_plugins_no_stages(tmp_path: Path) -> None:
    """Without a configuration (or with empty phases) there is no plugin stage at all; a plugin that reads
    nothing (audit_log) keeps native routes byte relays."""
    async with await open_gateway(tmp_path, config([plugin("a", "audit_log")])) as gw:
        assert gw.gateway.plugins is None
        assert not any(n.startswith("plugins") for n in gw.gateway.pipelines["llm"].names())
    document = config([plugin("a", "audit_log")], pre_route={"sequential": ["a"]})
    async with await open_gateway(
        tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path, document
    ) as gw:
        llm = gw.gateway.pipelines["llm"]
        assert "plugins_pre_route" in llm.names()
        assert not llm.needs_request and not llm.needs_response and not llm.delta_stages
        assert (await ask(gw)).choices[0].message.content


async def test_time_limits_and_failure_modes(tmp_path: Path) -> None:
    """A sequential plugin that times out fails the call closed (500 plugin_error) by default; with on_error
    open the call goes on and the run is recorded as a timeout; a raising plugin likewise."""
    document = config(
        [
            plugin("slow_open", "Slow", timeout_ms=20, on_error="open", config={"seconds": 5}),
            plugin("broken_open", "Broken", on_error="open"),
            plugin("slow_closed", "Slow", timeout_ms=20, config={"seconds": 5}),
        ],
        pre_route={"sequential": ["slow_open", "broken_open"]},
        pre_upstream={"sequential": ["slow_closed"]},
    )
    async with await open_gateway(tmp_path, document) as gw:
        with pytest.raises(openai.InternalServerError) as failed:
            await ask(gw)
        assert "plugin 'slow_closed' timed out in pre_upstream" in failed.value.message
        body = failed.value.body
        assert isinstance(body, dict) and body["code"] == "plugin_error"
    text = metrics.REGISTRY.get_sample_value(
        "gateway_plugin_errors_total",
        {"plugin_name": "broken_open", "plugin_stage": "pre_route", "kind": "error"},
    )
    assert text and text >= 1


async def test_parallel_plugins_give_findings_only_in_a_bounded_pool(tmp_path: Path) -> None:
    """Parallel plugins run at most PLUGINS_MAX_PARALLEL at once; a parallel block is ignored (and counted as
    an error), so the call is answered."""
    names = [f"c{i}" for i in range(5)]
    document = config(
        [*(plugin(n, "Concurrent") for n in names), plugin("gate", "Gate")],
        pre_route={"parallel": [*names, "gate"]},
    )
    sample.Concurrent.peak = 0
    async with await open_gateway(tmp_path, document, plugins_max_parallel=2) as gw:
        reply = await ask(gw, "forbidden but parallel")
        assert reply.choices[0].message.content
    assert sample.Concurrent.peak == 2


async def test_async_post_response_never_delays_the_client(tmp_path: Path) -> None:
    """The answer arrives while post_response plugins are still running; a full queue drops runs (counted)."""
    document = config([plugin("held", "Held")], post_response={"sequential": ["held"], "async": True})
    sample.Held.release = asyncio.Event()
    sample.Held.done.clear()
    dropped = metrics.PLUGIN_ASYNC_DROPPED._value.get()
    settings = {"plugins_async_queue_size": 1, "plugins_async_workers": 1}
    async with await open_gateway(tmp_path, document, **settings) as gw:
        for _ in range(3):  # one held by the worker, one queued, one dropped
            assert (await asyncio.wait_for(ask(gw), 5)).choices[0].message.content
        assert sample.Held.done == []
        assert metrics.PLUGIN_ASYNC_DROPPED._value.get() == dropped + 1
        sample.Held.release.set()
        await asyncio.wait_for(gw.gateway.plugins.drain(), 5)
        assert len(sample.Held.done) == 2


async def test_storage_reads_only_what_was_granted(tmp_path: Path) -> None:
    """A plugin granted `organisations` and `api_keys` reads them (never the key hash), and is refused budgets."""
    reads = {"reads": ["organisation", "api_key", "budgets"]}
    document = config(
        [plugin("rec", "Recorder", storage_access=["organisations", "api_keys"], config=reads)],
        pre_route={"sequential": ["rec"]},
    )
    sample.Recorder.seen.clear()
    async with await open_gateway(tmp_path, document) as gw:
        await ask(gw)
    seen = sample.Recorder.seen[0]
    assert seen["organisation"]["name"] == "acme"
    assert seen["api_key"]["id"] == gw.seeded["key_id"] and "key_hash" not in seen["api_key"]
    assert seen["budgets"] == "denied: plugin 'rec' has no 'budgets' storage access"


async def test_a_pre_upstream_block_releases_the_reservations(tmp_path: Path) -> None:
    """Blocked after the reservations, calls give their tokens back: a key whose TPM fits two calls still gets
    its answer after many blocked ones."""
    document = config([plugin("gate", "Gate")], pre_upstream={"sequential": ["gate"]})
    async with await open_gateway(tmp_path, document) as gw:
        created = await gw.service.create_key(
            {
                "organisation": "acme",
                "name": "tight",
                "type": "ORGANISATION",
                "models": ["gpt-test"],
                "policies": {"ratelimit": {"tokens": {"per_minute": 300}}},
            }
        )
        client = openai.AsyncOpenAI(
            base_url="http://gateway.test/v1",
            api_key=created.secret,
            max_retries=0,
            http_client=gw.sdk_client(),
        )
        messages: Any = [{"role": "user", "content": "forbidden"}]
        for _ in range(6):
            with pytest.raises(openai.PermissionDeniedError):
                await client.chat.completions.create(model="gpt-test", messages=messages, max_tokens=100)
        reply = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "fine"}], max_tokens=100
        )
        assert reply.choices[0].message.content


def test_catalogue_file_checks_the_plugins_section_and_serve_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`odock apply`'s loader checks the section (a bad one names its place); `odock serve --config` makes it the
    plugin configuration, and refuses a second one from PLUGINS_CONFIG_PATH."""
    from odock.commands.serve import _plugins_from
    from odock.config_file import ConfigFileError, load_config

    good = tmp_path / "good.yaml"
    good.write_text(
        "plugins:\n  plugins: [{name: a, type: audit_log}]\n  phases: {pre_route: {parallel: [a]}}\n"
    )
    assert load_config(good)["plugins"]["phases"]["pre_route"]["parallel"] == ["a"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins:\n  phases: {pre_route: {parallel: [ghost]}}\n")
    with pytest.raises(
        ConfigFileError, match=r"bad\.yaml: plugins\.phases\.pre_route: plugin 'ghost' is not declared"
    ):
        load_config(bad)
    monkeypatch.setenv("PLUGINS_CONFIG_PATH", "")  # recorded, so whatever _plugins_from sets is undone
    monkeypatch.delenv("PLUGINS_CONFIG_PATH")
    _plugins_from(str(good))
    assert Path(os.environ["PLUGINS_CONFIG_PATH"]) == good.resolve()
    monkeypatch.setenv("PLUGINS_CONFIG_PATH", str(tmp_path / "other.json"))
    with pytest.raises(SystemExit, match="configured twice"):
        _plugins_from(str(good))


async def test_a_failing_stream_plugin_fails_open_or_closed(tmp_path: Path) -> None:
    """stream_chunk: a raising plugin set to fail open is skipped for the rest of the stream (the answer arrives
    whole); set to fail closed it ends the stream with an error event, never a clean end."""
    for on_error in ("open", "closed"):
        home = tmp_path / on_error
        home.mkdir()
        document = config([plugin("b", "Broken", on_error=on_error)], stream_chunk={"sequential": ["b"]})
        async with await open_gateway(home, document) as gw:
            said = ""
            stream = await _openai(gw).chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hello"}], stream=True
            )
            if on_error == "open":
                async for chunk in stream:
                    said += chunk.choices[0].delta.content or "" if chunk.choices else ""
                assert said.startswith("Mock reply to")
            else:
                with pytest.raises(openai.APIError, match="plugin 'b' failed in stream_chunk"):
                    async for _chunk in stream:
                        pass


def test_audit_log_keeps_prompts_out_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    """audit_log's event names the call, never its text; include_prompt adds the messages."""
    from odock.context import CallContext
    from odock.model import GatewayRequest, Message
    from odock.plugins import PluginSetup
    from odock.plugins.base import PluginView
    from odock.plugins.bundled.audit_log import AuditLog
    from odock.plugins.storage import PluginStorage, StorageBackends

    ctx = CallContext(
        request_id="req-1", route="openai.chat", client_ip="127.0.0.1", requested_model="gpt-test"
    )
    request = GatewayRequest(model="gpt-test", messages=[Message(role="user", content="my secret plan")])
    storage = PluginStorage("a", frozenset(), ctx, StorageBackends())
    view = PluginView("pre_route", ctx, request, None, {}, storage, {})
    quiet = AuditLog(PluginSetup("a", {}))
    assert not quiet.needs_request
    event = quiet.event(view)
    assert event["request_id"] == "req-1" and event["model"] == "gpt-test"
    assert "my secret plan" not in json.dumps(event)
    loud = AuditLog(PluginSetup("a", {"include_prompt": True}))
    assert loud.needs_request and loud.event(view)["prompt"] == [{"role": "user", "text": "my secret plan"}]
    with caplog.at_level("INFO", logger="odock.audit"):
        asyncio.run(quiet.pre_route(view))
    assert caplog.records[0].audit["request_id"] == "req-1"  # type: ignore[attr-defined]


def test_request_transform_sets_defaults_and_caps() -> None:
    """Defaults fill only unset fields; the cap lowers a larger max_tokens and sets a missing one."""
    from odock.context import CallContext
    from odock.model import GatewayRequest, Message
    from odock.plugins import PluginSetup
    from odock.plugins.base import PluginView
    from odock.plugins.bundled.request_transform import RequestTransform
    from odock.plugins.storage import PluginStorage, StorageBackends

    transform = RequestTransform(
        PluginSetup("t", {"defaults": {"temperature": 0.2, "seed": 7}, "max_tokens_cap": 50})
    )
    ctx = CallContext(request_id="r", route="x", client_ip="")
    storage = PluginStorage("t", frozenset(), ctx, StorageBackends())
    for given, capped in ((None, 50), (500, 50), (20, 20)):
        request = GatewayRequest(
            model="m", messages=[Message(role="user", content="hi")], max_tokens=given, seed=1
        )
        view = PluginView("pre_route", ctx, request, None, {}, storage, {})
        asyncio.run(transform.pre_route(view))
        assert (request.temperature, request.seed, request.max_tokens) == (0.2, 1, capped)
    with pytest.raises(ValueError, match="not a defaultable field"):
        RequestTransform(PluginSetup("t", {"defaults": {"model": "x"}}))


async def test_input_added_before_the_reservations_is_reserved(tmp_path: Path) -> None:
    """A system prompt added in pre_route counts toward the TPM reservation: a key whose limit the client's
    short prompt fits is refused once the operator's long system prompt is added."""
    long_prompt = "Always answer with care. " * 200  # ~5000 bytes, ~1250 tokens
    document = config(
        [plugin("t", "request_transform", config={"system_prompt": long_prompt})],
        pre_route={"sequential": ["t"]},
    )
    async with await open_gateway(tmp_path, document) as gw:
        created = await gw.service.create_key(
            {
                "organisation": "acme",
                "name": "small",
                "type": "ORGANISATION",
                "models": ["gpt-test"],
                "policies": {"ratelimit": {"tokens": {"per_minute": 600}}},
            }
        )
        client = openai.AsyncOpenAI(
            base_url="http://gateway.test/v1",
            api_key=created.secret,
            max_retries=0,
            http_client=gw.sdk_client(),
        )
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], max_tokens=50
            )
        body = limited.value.body
        assert isinstance(body, dict) and body["code"] == "tpm_exceeded"


def test_serve_refuses_a_broken_plugin_file_before_starting(tmp_path: Path) -> None:
    """`odock serve` checks the plugin file's shape and types first: one line, nonzero exit, no worker started."""
    from odock.commands.serve import _check_plugins

    path = tmp_path / "plugins.json"
    path.write_text(json.dumps(config([plugin("t", "nosuch")], pre_route={"sequential": ["t"]})))
    with pytest.raises(SystemExit, match="invalid plugin configuration: plugin 't': no plugin type 'nosuch'"):
        _check_plugins(str(path))
    path.write_text(json.dumps(config([plugin("t", "audit_log")], pre_route={"sequential": ["t"]})))
    _check_plugins(str(path))
