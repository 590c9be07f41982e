"""`/v1/vllm/models` runs the listing pipeline: the same pre-auth gate, authentication and early gate as every
other route (IP lists and the key's request rate apply), then answers from the catalogue."""

from __future__ import annotations

from pathlib import Path

from tests.inprocess import in_process_gateway


async def test_the_early_gate_applies_to_model_listings(tmp_path: Path) -> None:
    """A key whose policy blocks the caller's IP is refused on `/v1/vllm/models` (429 ip_not_allowed), and its
    per-second request limit counts listings too."""
    async with in_process_gateway(tmp_path) as gw:
        headers = {"Authorization": f"Bearer {gw.seeded['secret']}"}
        async with gw.client() as http:
            listed = await http.get("/v1/vllm/models", headers=headers)
            assert listed.status_code == 200 and [m["id"] for m in listed.json()["data"]] == [
                "vllm-test",
                "vllm-whisper",
            ]
            await gw.service.update_key(
                gw.seeded["key_id"], {"policies": {"ip": {"blocklist": ["127.0.0.0/8"]}}}
            )
            await gw.gateway.catalogue.invalidate()
            blocked = await http.get("/v1/vllm/models", headers=headers)
            assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "ip_not_allowed"
            await gw.service.update_key(
                gw.seeded["key_id"], {"policies": {"ratelimit": {"requests": {"per_second": 1}}}}
            )
            await gw.gateway.catalogue.invalidate()
            statuses = [(await http.get("/v1/vllm/models", headers=headers)).status_code for _ in range(3)]
            assert statuses[0] == 200 and 429 in statuses[1:]
            unauthenticated = await http.get("/v1/vllm/models")
            assert unauthenticated.status_code == 401
