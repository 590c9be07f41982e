"""What the cache must never do: serve across tenants or keys, serve a revoked key or a spent budget, answer a
client that said no-store, or let a stampede of identical misses reach the upstream more than once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from google.genai import types

from odock.admin.governance import GovernanceAdmin
from odock.governance.store import GovernanceStore
from tests.cache.test_cache_replay import MESSAGES, enable, gemini_client, openai_client, upstream_calls
from tests.harness import seed_basic, wait_usage
from tests.inprocess import InProcessGateway, in_process_gateway


async def ask(client: openai.AsyncOpenAI, **extra: Any) -> tuple[str, str | None]:
    """One chat call: its cache header and content."""
    reply = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, **extra
    )
    return reply.headers.get("x-odock-cache", ""), reply.parse().choices[0].message.content


async def second_key(gw: InProcessGateway, name: str = "other", org: str = "acme", **extra: Any) -> str:
    created = await gw.service.create_key(
        {"organisation": org, "name": name, "type": "ORGANISATION", "models": ["gpt-test"], **extra}
    )
    return created.secret


async def test_organisations_never_share_entries_and_keys_share_only_when_scoped_so(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        beta = await seed_basic(gw.service, "http://mock.invalid", org="beta")
        await enable(gw, org="beta")
        main, same_org = openai_client(gw), openai_client(gw, await second_key(gw))
        assert (await ask(main))[0] == "MISS"
        assert (await ask(same_org))[0] == "HIT"  # scope organisation: every key of the org shares it
        assert (await ask(openai_client(gw, beta["secret"])))[0] == "MISS"  # another organisation never does
        # scope key: each key its own entries
        await enable(gw, {"cache": {"mode": "exact", "scope": "key"}})
        assert (await ask(main))[0] == "MISS"
        assert (await ask(main))[0] == "HIT"
        assert (await ask(same_org))[0] == "MISS"
        # a namespace is a separate set of entries
        await enable(gw, {"cache": {"mode": "exact", "scope": "key", "namespace": "faq"}})
        assert (await ask(main))[0] == "MISS"
        assert upstream_calls(gw.mock) == 5


async def test_cache_control_directives(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        assert (await ask(client, extra_headers={"cache-control": "no-store"}))[0] == "BYPASS"
        assert (await ask(client))[0] == "MISS"  # no-store wrote nothing
        assert (await ask(client))[0] == "HIT"
        assert (await ask(client, extra_headers={"cache-control": "no-cache"}))[0] == "MISS"  # refresh
        assert (await ask(client, extra_headers={"cache-control": "max-age=3600"}))[0] == "HIT"
        assert (await ask(client, extra_headers={"cache-control": "max-age=0"}))[0] == "MISS"  # too old
        assert upstream_calls(gw.mock) == 4


async def test_age_is_the_entry_age_and_max_age_bounds_it(tmp_path: Path) -> None:
    """`Age` on a hit counts seconds since the answer was stored; `max-age=N` takes only an entry at most N
    seconds old, and a too old one is refreshed (its replacement starts at 0)."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)

        async def age(**extra: Any) -> tuple[str, str | None]:
            reply = await client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=MESSAGES, **extra
            )
            return reply.headers["x-odock-cache"], reply.headers.get("age")

        assert await age() == ("MISS", None)
        await asyncio.sleep(1.2)
        verdict, seconds = await age()
        assert verdict == "HIT" and seconds is not None and 1 <= int(seconds) <= 3
        assert (await age(extra_headers={"cache-control": "max-age=60"}))[0] == "HIT"
        assert await age(extra_headers={"cache-control": "max-age=1"}) == ("MISS", None)
        assert await age() == ("HIT", "0")
        assert upstream_calls(gw.mock) == 2


async def test_disabled_for_a_key_and_bypassed_fields(tmp_path: Path) -> None:
    """A key can turn off what its organisation turned on; fields outside the short list change the key."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        assert (await ask(client))[0] == "MISS"
        assert (await ask(client, user="someone", metadata={"a": "b"}))[0] == "HIT"  # ignored fields
        assert (await ask(client, seed=7))[0] == "MISS"
        assert (await ask(client, temperature=0.5))[0] == "MISS"
        off = await second_key(gw, policies={"cache": {"enabled": False}})
        reply = await openai_client(gw, off).chat.completions.with_raw_response.create(
            model="gpt-test", messages=MESSAGES
        )
        assert "x-odock-cache" not in reply.headers


async def test_a_revoked_key_is_never_served(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        assert (await ask(client))[0] == "MISS"
        assert (await ask(client))[0] == "HIT"
        await gw.service.revoke_key(gw.seeded["key_id"])
        await gw.gateway.catalogue.invalidate()
        with pytest.raises(openai.AuthenticationError):
            await ask(client)


async def test_a_spent_budget_is_never_served(tmp_path: Path) -> None:
    """Hits reserve nothing, yet once the key's budget is spent they are refused (402) like any call."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        admin = GovernanceAdmin(GovernanceStore(gw.service.store), catalogue=gw.service)
        budget = await admin.create_budget(
            {"name": "b", "organisation": "acme", "key": "main", "period": "DAILY", "amount_nanos": 10**12}
        )
        governance = gw.gateway.governance
        assert governance is not None
        await governance.refresh_definitions()
        client = openai_client(gw)
        reply = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert reply.headers["x-odock-cache"] == "MISS"
        spent = (await wait_usage(gw.service, reply.headers["x-request-id"]))["cost_nanos"]
        assert spent > 0
        assert (await ask(client))[0] == "HIT"  # room left: served, free
        await admin.update_budget(
            budget.id, {"amount_nanos": spent}
        )  # what the miss charged is all there was
        await governance.refresh_definitions()
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(client)
        assert refused.value.status_code == 402
        assert refused.value.body["code"] == "budget_exceeded"  # type: ignore[index]
        assert upstream_calls(gw.mock) == 1


async def test_a_stampede_makes_one_upstream_call(tmp_path: Path) -> None:
    """50 identical concurrent misses: one upstream call, 49 coalesced waits answered from it."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        slow: Any = [{"role": "user", "content": "slow one [[mock latency_ms=100]]"}]
        answers = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(model="gpt-test", messages=slow)
                for _ in range(50)
            )
        )
        verdicts = sorted(a.headers["x-odock-cache"] for a in answers)
        assert verdicts == ["HIT"] * 49 + ["MISS"]
        assert len({a.parse().choices[0].message.content for a in answers}) == 1
        assert upstream_calls(gw.mock) == 1


async def test_model_scope_hit_cost_and_the_entry_bound(tmp_path: Path) -> None:
    """A model's policy turns the cache on for it alone; a hit is billed hit_cost of the original; an answer above
    the entry bound is not stored."""
    async with in_process_gateway(tmp_path, cache_max_entry_bytes=2000) as gw:
        await gw.service.update_model("gpt-test", {"policies": {"cache": {"hit_cost": 0.5}}}, "acme")
        await gw.gateway.catalogue.invalidate()
        client = openai_client(gw)
        first = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        hit = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert [first.headers["x-odock-cache"], hit.headers["x-odock-cache"]] == ["MISS", "HIT"]
        original = (await wait_usage(gw.service, first.headers["x-request-id"]))["cost_nanos"]
        billed = (await wait_usage(gw.service, hit.headers["x-request-id"]))["cost_nanos"]
        assert original > 0 and billed == round(original * 0.5)
        long: Any = [{"role": "user", "content": "long [[mock words=600]]"}]
        for _ in range(2):
            big = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=long)
            # a unary answer's headers wait for the after-hooks: it says it was not stored (a stream cannot)
            assert big.headers["x-odock-cache"] == "BYPASS"
            stream = await client.chat.completions.create(model="gpt-test", messages=long, stream=True)
            async for _chunk in stream:
                pass
        assert upstream_calls(gw.mock) == 5


async def test_safetysec_runs_first_a_block_is_never_cached_and_the_key_is_the_redacted_body(
    tmp_path: Path,
) -> None:
    """SafetySec's request phase sits before the cache: a blocked call never reaches the cache or the upstream,
    however often it is sent, and two prompts that differ only in what SafetySec redacts share one entry."""
    safety = {"enabled": True, "request": {"secrets": "block", "pii": "redact"}}
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw, {"cache": {"mode": "exact"}, "safety": safety})
        names = gw.gateway.pipelines["llm"].names()
        assert names.index("safety") < names.index("cache") < names.index("final_gate")
        client = openai_client(gw)
        secret = [{"role": "user", "content": "my key is AKIAIOSFODNN7EXAMPLE, keep it"}]
        for _ in range(2):
            with pytest.raises(openai.PermissionDeniedError) as blocked:
                await client.chat.completions.with_raw_response.create(model="gpt-test", messages=secret)
            assert blocked.value.code == "safety_blocked"
            assert "x-odock-cache" not in blocked.value.response.headers
        assert upstream_calls(gw.mock) == 0

        def mail(address: str) -> list[Any]:
            return [{"role": "user", "content": f"write to {address} about caches"}]

        first = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=mail("ada@example.com")
        )
        second = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=mail("alan@example.org")
        )
        assert (first.headers["x-odock-cache"], second.headers["x-odock-cache"]) == ("MISS", "HIT")
        assert upstream_calls(gw.mock) == 1


async def test_answers_the_normalized_events_cannot_carry_are_bypassed(tmp_path: Path) -> None:
    """Several choices (`n`) and non-text output (audio, images) are never stored: the normalized answer is one
    choice of text, thinking and tool calls, so their replay would differ; each says BYPASS and goes upstream,
    untouched (a byte relay: the cache stage steps aside)."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        for _ in range(2):
            assert (await ask(client, n=2))[0] == "BYPASS"
            assert (await ask(client, modalities=["text", "audio"]))[0] == "BYPASS"
        assert upstream_calls(gw.mock) == 4
        assert (await ask(client, n=1, modalities=["text"]))[0] == "MISS"  # one text choice: cached
        assert (await ask(client, n=1, modalities=["text"]))[0] == "HIT"
        gemini = gemini_client(gw)
        image = types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"])
        for _ in range(2):
            reply = await gemini.aio.models.generate_content(
                model="gemini-test", contents="draw a cache", config=image
            )
            assert reply.sdk_http_response is not None and reply.sdk_http_response.headers is not None
            assert reply.sdk_http_response.headers["x-odock-cache"] == "BYPASS"
        assert upstream_calls(gw.mock) == 7
