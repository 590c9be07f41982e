"""CatalogueService: CRUD, key lifecycle, ownership rules, grants, provider credential encryption."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from odock.errors import BadRequest, GatewayError, NotFound
from odock.providers.registry import PROVIDER_TYPES
from odock.state import schema
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore

FUTURE = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
PAST = datetime(2020, 1, 1, tzinfo=UTC)


async def _catalogue(service: CatalogueService) -> None:
    await service.create_organisation({"name": "acme"})
    await service.create_team({"organisation": "acme", "name": "platform"})
    await service.create_user({"organisation": "acme", "email": "dev@acme.test", "name": "Dev"})
    await service.create_provider(
        {
            "organisation": "acme",
            "name": "oa",
            "type": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "sk-upstream-very-secret-1234",
        }
    )
    await service.create_model(
        {"organisation": "acme", "name": "chat", "provider": "oa", "slug": "gpt-4o-mini"}
    )


async def test_key_create_stores_hash_not_secret(store: SqlStore, service: CatalogueService) -> None:
    """A new key returns its secret once; the row holds the SHA-256 hash and a masked preview only."""
    await _catalogue(service)
    created = await service.create_key({"organisation": "acme", "name": "k1"})
    assert created.secret.startswith("sk-odock-") and len(created.secret) > 40
    async with store.read() as conn:
        row = (await conn.execute(sa.select(schema.api_keys))).mappings().one()
    assert created.secret not in str(dict(row))
    assert row["key_hash"] == hashlib.sha256(created.secret.encode()).hexdigest()
    found = await store.find_key(row["key_hash"])
    assert found is not None and found.id == created.key.id and found.type == "ORGANISATION"
    assert found.created_at is not None and found.created_at.tzinfo is not None
    assert created.key.key_preview.endswith(created.secret[-4:]) and "…" in created.key.key_preview
    assert not hasattr(created.key, "key_hash")


async def test_key_rotation_in_place(store: SqlStore, service: CatalogueService) -> None:
    """Rotation keeps the id, changes the secret, resets revealed, records history, and the old secret stops matching."""
    await _catalogue(service)
    created = await service.create_key(
        {"organisation": "acme", "name": "k1", "expires_at": FUTURE.isoformat()}
    )
    rotated = await service.rotate_key("k1", organisation="acme", expires_at=None, rotated_by="admin")
    assert rotated.key.id == created.key.id and rotated.secret != created.secret
    assert (
        rotated.key.rotation_count == 1 and rotated.key.expires_at is None and rotated.key.revealed is False
    )
    assert await store.find_key(hashlib.sha256(created.secret.encode()).hexdigest()) is None
    assert await store.find_key(hashlib.sha256(rotated.secret.encode()).hexdigest()) is not None
    history = await service.key_rotations(created.key.id)
    assert len(history) == 1
    assert history[0].previous_preview == created.key.key_preview and history[0].previous_expires_at == FUTURE
    assert history[0].new_expires_at is None and history[0].rotated_by == "admin"


async def test_expiry_rules(store: SqlStore, service: CatalogueService) -> None:
    """A past expiry is refused on create and rotate; an expired key can still be rotated."""
    await _catalogue(service)
    with pytest.raises(BadRequest):
        await service.create_key({"organisation": "acme", "name": "old", "expires_at": PAST.isoformat()})
    created = await service.create_key({"organisation": "acme", "name": "k1"})
    with pytest.raises(BadRequest):
        await service.rotate_key(created.key.id, expires_at="2020-01-01T00:00:00Z")
    # force the key into the past, as time would
    async with store.write() as conn:
        await conn.execute(schema.api_keys.update().values(expires_at=PAST))
    rotated = await service.rotate_key(created.key.id, expires_at=FUTURE)
    assert rotated.key.expires_at == FUTURE


async def test_revoke_and_delete(store: SqlStore, service: CatalogueService) -> None:
    """Revoke sets the flag without changing the secret; delete removes the key."""
    await _catalogue(service)
    created = await service.create_key({"organisation": "acme", "name": "k1"})
    revoked = await service.revoke_key(created.key.id)
    assert revoked.revoked is True and revoked.key_preview == created.key.key_preview
    record = await store.find_key(hashlib.sha256(created.secret.encode()).hexdigest())
    assert record is not None and record.revoked
    await service.delete_key("k1", organisation="acme")
    with pytest.raises(NotFound):
        await service.get_key(created.key.id)


OWNERSHIP_CASES: list[tuple[dict[str, str], bool]] = [
    ({"type": "ORGANISATION"}, True),
    ({"type": "ORGANISATION", "team": "platform"}, False),
    ({"type": "ORGANISATION", "user": "dev@acme.test"}, False),
    ({"type": "TEAM", "team": "platform"}, True),
    ({"type": "TEAM"}, False),
    ({"type": "TEAM", "team": "platform", "user": "dev@acme.test"}, False),
    ({"type": "USER", "user": "dev@acme.test"}, True),
    ({"type": "USER"}, False),
    ({"type": "USER", "user": "dev@acme.test", "team": "platform"}, False),
    ({"type": "ADMIN"}, False),
]


async def test_ownership_rules(service: CatalogueService) -> None:
    """ORGANISATION keys have no owner, TEAM keys exactly a team, USER keys exactly a user (reference §3.3)."""
    await _catalogue(service)
    for i, (data, ok) in enumerate(OWNERSHIP_CASES):
        request = {"organisation": "acme", "name": f"k{i}", **data}
        if ok:
            created = await service.create_key(request)
            assert created.key.type == data["type"]
            assert (created.key.team_id is not None) == (data["type"] == "TEAM")
            assert (created.key.user_id is not None) == (data["type"] == "USER")
        else:
            with pytest.raises(BadRequest):
                await service.create_key(request)
    key = (await service.create_key({"organisation": "acme", "name": "move"})).key
    with pytest.raises(BadRequest):
        await service.update_key(key.id, {"type": "TEAM"})
    moved = await service.update_key(key.id, {"type": "TEAM", "team": "platform"})
    assert moved.type == "TEAM" and moved.team_id is not None


async def test_grants(store: SqlStore, service: CatalogueService) -> None:
    """Grants are deny-by-default, added and removed by name or id, limited to the key's organisation."""
    await _catalogue(service)
    key = (await service.create_key({"organisation": "acme", "name": "k1"})).key
    assert await store.granted_model_ids(key.id) == frozenset()
    granted = await service.add_grant(key.id, "chat")
    assert [m.name for m in granted] == ["chat"]
    assert await service.add_grant(key.id, granted[0].id) == granted
    assert await store.granted_model_ids(key.id) == frozenset({granted[0].id})
    await service.create_organisation({"name": "other"})
    await service.create_provider(
        {"organisation": "other", "name": "p", "type": "vllm", "base_url": "http://x/v1"}
    )
    foreign = await service.create_model({"organisation": "other", "name": "m", "provider": "p", "slug": "s"})
    with pytest.raises(BadRequest) as info:
        await service.add_grant(key.id, foreign.id)
    assert info.value.code == "model_not_in_organisation"
    with pytest.raises(NotFound):
        await service.add_grant(key.id, "m")
    await service.remove_grant(key.id, "chat")
    assert await service.list_grants(key.id) == []
    with pytest.raises(NotFound):
        await service.remove_grant(key.id, "chat")
    assert await service.set_grants(key.id, ["chat"]) is True
    assert await service.set_grants(key.id, ["chat"]) is False


async def test_provider_credential_encrypted_at_rest(store: SqlStore, service: CatalogueService) -> None:
    """The provider api_key column holds an AES-GCM envelope; the store decrypts it; the service never shows it."""
    await _catalogue(service)
    info = (await service.list_providers("acme"))[0]
    assert info.has_api_key and info.api_key_preview == "****1234"
    assert "sk-upstream-very-secret" not in repr(info)
    async with store.read() as conn:
        raw = (await conn.execute(sa.select(schema.providers.c.api_key_encrypted))).scalar_one()
    assert "sk-upstream-very-secret" not in raw and '"alg":"A256GCM"' in raw
    loaded = await store.get_provider(info.id)
    assert loaded is not None and loaded.api_key == "sk-upstream-very-secret-1234"
    cleared = await service.update_provider(info.id, {"api_key": None})
    assert not cleared.has_api_key
    reloaded = await store.get_provider(info.id)
    assert reloaded is not None and reloaded.api_key is None


async def test_provider_types_are_exactly_the_registered_ones(
    store: SqlStore, service: CatalogueService
) -> None:
    """Every provider type of the provider registry is accepted on create and update and loads back from the
    store; any other type, or a type that is not a string, is 400 provider_type_unsupported."""
    await _catalogue(service)
    for ptype in PROVIDER_TYPES:
        info = await service.create_provider(
            {"organisation": "acme", "name": f"p-{ptype}", "type": ptype, "base_url": "http://127.0.0.1:9"}
        )
        loaded = await store.get_provider(info.id)
        assert info.type == ptype and loaded is not None and loaded.type == ptype
    assert {"azure_openai", "custom", "google"} <= set(PROVIDER_TYPES)
    with pytest.raises(BadRequest):  # an empty string is a malformed field (invalid_request) like any other
        await service.create_provider(
            {"organisation": "acme", "name": "bad", "type": "", "base_url": "http://x"}
        )
    for bad in ("mistral", "OPENAI", ["openai"], 1):
        with pytest.raises(BadRequest) as info:
            await service.create_provider(
                {"organisation": "acme", "name": "bad", "type": bad, "base_url": "http://127.0.0.1:9"}
            )
        assert info.value.code == "provider_type_unsupported", bad
        with pytest.raises(BadRequest) as info:
            await service.update_provider("oa", {"type": bad}, "acme")
        assert info.value.code == "provider_type_unsupported", bad
    assert (await service.update_provider("oa", {"type": "azure_openai"}, "acme")).type == "azure_openai"


async def test_model_lookup_and_validation(store: SqlStore, service: CatalogueService) -> None:
    """Models are found by (organisation, name); bad fields and unknown providers are 400/404."""
    await _catalogue(service)
    org = await service.get_organisation("acme")
    model = await store.find_model(org.id, "chat")
    assert model is not None and model.slug == "gpt-4o-mini" and model.type == "chat"
    assert await store.find_model(org.id, "nope") is None
    with pytest.raises(BadRequest):
        await service.create_model(
            {"organisation": "acme", "name": "x", "provider": "oa", "slug": "s", "type": "bad"}
        )
    with pytest.raises(BadRequest):
        await service.create_model(
            {"organisation": "acme", "name": "x", "provider": "oa", "slug": "s", "pricing": {"input": -1}}
        )
    with pytest.raises(NotFound):
        await service.create_model({"organisation": "acme", "name": "x", "provider": "nope", "slug": "s"})
    with pytest.raises(BadRequest, match="unknown field"):
        await service.create_model(
            {"organisation": "acme", "name": "x", "provider": "oa", "slug": "s", "colour": 1}
        )
    updated = await service.update_model("chat", {"slug": "gpt-4o", "capabilities": ["vision"]}, "acme")
    assert updated.slug == "gpt-4o" and updated.capabilities == ["vision"]


async def test_duplicates_and_references(store: SqlStore, service: CatalogueService) -> None:
    """Duplicate names are 409 conflict; in-use providers, teams and users cannot be deleted; org delete cascades."""
    await _catalogue(service)
    for call in (
        service.create_organisation({"name": "acme"}),
        service.create_team({"organisation": "acme", "name": "platform"}),
        service.create_user({"organisation": "acme", "email": "dev@acme.test"}),
        service.create_model({"organisation": "acme", "name": "chat", "provider": "oa", "slug": "x"}),
    ):
        with pytest.raises(GatewayError) as info:
            await call
        assert (info.value.status, info.value.code) == (409, "conflict")
    with pytest.raises(GatewayError) as info:
        await service.delete_provider("oa", "acme")
    assert info.value.status == 409
    await service.create_key({"organisation": "acme", "name": "t", "type": "TEAM", "team": "platform"})
    with pytest.raises(GatewayError):
        await service.delete_team("platform", "acme")
    key = await service.create_key({"organisation": "acme", "name": "k", "models": ["chat"]})
    await service.delete_organisation("acme")
    assert await service.list_organisations() == []
    assert await store.granted_model_ids(key.key.id) == frozenset()
    with pytest.raises(NotFound):
        await service.get_team("platform")


async def _models(service: CatalogueService, names: list[str]) -> dict[str, str]:
    return {
        name: (
            await service.create_model({"organisation": "acme", "name": name, "provider": "oa", "slug": name})
        ).id
        for name in names
    }


async def test_concurrent_set_grants_leave_one_callers_set(
    store: SqlStore, service: CatalogueService
) -> None:
    """set_grants computes and writes in one transaction: concurrent calls end on exactly one caller's set."""
    await _catalogue(service)
    await _models(service, ["m1", "m2", "m3"])
    key = (await service.create_key({"organisation": "acme", "name": "k", "models": ["chat"]})).key
    targets = [["chat", "m1"], ["m2"], ["m3", "chat"], ["m1", "m2", "m3"], []]
    for _ in range(3):
        await asyncio.gather(*(service.set_grants(key.id, target) for target in targets))
        granted = sorted(m.name for m in await service.list_grants(key.id))
        assert granted in [sorted(target) for target in targets]


async def test_set_grants_failing_part_way_keeps_the_old_grants(
    store: SqlStore, service: CatalogueService
) -> None:
    """When a write fails after the stale grants were deleted, nothing of the change remains (409 conflict)."""
    await _catalogue(service)
    ids = await _models(service, ["m1", "m2", "refused"])
    key = (await service.create_key({"organisation": "acme", "name": "k", "models": ["chat", "m1"]})).key
    async with store.write() as conn:  # the database itself refuses one grant, after the deletes ran
        if store.dialect == "postgresql":
            await conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse_grant() RETURNS trigger AS $$ BEGIN IF NEW.model_id = "
                    f"'{ids['refused']}' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_grant BEFORE INSERT ON key_model_grants "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_grant()"
                )
            )
        else:
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER refuse_grant BEFORE INSERT ON key_model_grants WHEN NEW.model_id = "
                    f"'{ids['refused']}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
    version = await store.catalogue_version()
    with pytest.raises(GatewayError) as info:
        await service.set_grants(key.id, ["m2", "refused"])
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert sorted(m.name for m in await service.list_grants(key.id)) == ["chat", "m1"]
    assert await store.catalogue_version() == version


async def test_inputs_are_checked_by_their_structs(service: CatalogueService) -> None:
    """Field types, lengths and ranges are checked before any write: 400 naming the field and what it allows."""
    await _catalogue(service)
    provider = {"organisation": "acme", "name": "big", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(BadRequest, match="timeout_ms"):  # an INTEGER column: PostgreSQL would refuse it
        await service.create_provider({**provider, "timeout_ms": 2**31})
    with pytest.raises(BadRequest, match="timeout_ms"):
        await service.update_provider("oa", {"timeout_ms": True}, "acme")
    with pytest.raises(
        BadRequest, match="supported: openai, azure_openai, custom, anthropic, gemini, google, vllm"
    ):
        await service.create_provider({**provider, "type": "azure"})
    with pytest.raises(BadRequest, match="unknown field `colour`; allowed: "):
        await service.create_team({"organisation": "acme", "name": "t", "colour": "red"})
    with pytest.raises(BadRequest, match="name must be a non-empty string"):
        await service.create_team({"organisation": "acme", "name": "   "})
    with pytest.raises(BadRequest, match="e-mail"):
        await service.update_user("dev@acme.test", {"email": "not-an-address"}, "acme")
    with pytest.raises(BadRequest, match="length <= 200"):
        await service.update_organisation("acme", {"name": "x" * 201})
    with pytest.raises(BadRequest, match="secret must be"):
        await service.create_key(
            {"organisation": "acme", "name": "k", "secret": " sk-with-surrounding-space "}
        )
    team = await service.create_team({"organisation": "acme", "name": "  spaced  ", "policies": None})
    assert team.name == "spaced" and team.policies == {}
    created = await service.create_provider({**provider, "api_key": "", "base_url": "http://127.0.0.1:9/v1/"})
    assert created.has_api_key is False and created.base_url == "http://127.0.0.1:9/v1"
