"""`POST /v1/keys/validate` over HTTP: valid, unknown, revoked and expired keys; never the secret or its hash."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from odock.state import schema
from tests.inprocess import in_process_gateway


async def test_validate_reports_a_keys_owner_grants_and_status(tmp_path: Path) -> None:
    """A valid key answers 200 with its organisation and grants; revoked, expired and unknown keys answer 401
    with the documented codes; the secret and its hash appear in no answer."""
    async with in_process_gateway(tmp_path) as gw, gw.client() as http:
        secret, key_id = gw.seeded["secret"], gw.seeded["key_id"]
        reply = await http.post("/v1/keys/validate", headers={"Authorization": f"Bearer {secret}"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["valid"] is True and body["status"] == "valid"
        assert body["key"]["id"] == key_id and body["key"]["type"] == "ORGANISATION"
        assert body["organisation"]["name"] == "acme" and body["team"] is None
        names = [grant["name"] for grant in body["grants"]["models"]]
        assert "gpt-test" in names and "gpt-ungranted" not in names
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in reply.text and digest not in reply.text
        # every credential location of §3.1 works here too
        for headers, params in (
            ({"X-API-Key": secret}, {}),
            ({"x-goog-api-key": secret}, {}),
            ({}, {"key": secret}),
        ):
            again = await http.post("/v1/keys/validate", headers=headers, params=params)
            assert again.status_code == 200 and again.json()["key"]["id"] == key_id

        for headers in ({}, {"Authorization": "Bearer sk-not-a-key-0123456789"}):
            refused = await http.post("/v1/keys/validate", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert (await http.get("/v1/keys/validate")).status_code == 405

        async with gw.service.store.write() as conn:
            past = datetime.now(UTC) - timedelta(minutes=1)
            await conn.execute(sa.update(schema.api_keys).values(expires_at=past))
        await gw.gateway.catalogue.invalidate()
        expired = await http.post("/v1/keys/validate", headers={"Authorization": f"Bearer {secret}"})
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "api_key_expired"

        await gw.service.revoke_key(key_id)
        await gw.gateway.catalogue.invalidate()
        revoked = await http.post("/v1/keys/validate", headers={"Authorization": f"Bearer {secret}"})
        assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "api_key_revoked"
        for answer in (expired, revoked):
            assert secret not in answer.text and digest not in answer.text


async def test_validate_records_no_usage(tmp_path: Path) -> None:
    """Validating a key writes no usage record (it is not a call to a model)."""
    async with in_process_gateway(tmp_path) as gw, gw.client() as http:
        headers = {"Authorization": f"Bearer {gw.seeded['secret']}"}
        assert (await http.post("/v1/keys/validate", headers=headers)).status_code == 200
        await gw.gateway.recorder.flush()
        async with gw.service.store.read() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(schema.usage_records))
            ).scalar()
        assert count == 0
