"""The Markdown summary of a results dict (what `python -m bench` prints)."""

from __future__ import annotations

from typing import Any

GATEWAYS = ("odock", "odock-cluster")
PEERS = ("portkey", "litellm")
FORWARDER = "forwarder"  # the bare Python forwarder (bench/forwarder.py)
TARGET_ADDED_P99_MS = 1.0  # at one connection, every scenario (issue 16)
TARGET_MAX_MS = 20.0  # the slowest single request of a latency run
TARGET_GOVERNED_VS_UNGOVERNED = 0.8  # governed req/s over the same gateway's without governance
TARGET_ADDED_P50_MS = 0.3
TARGET_VS_PORTKEY = 2.0
TARGET_VS_LITELLM = 15.0
TARGET_SOAK_GROWTH_PCT = 5.0
SOAKS = ("soak", "soak-cluster")  # embedded, cluster
TARGET_TRANSLATED_VS_NATIVE = 1.5  # a translated call's added p50 over the same-dialect call's
TARGET_SAFETY_ON_VS_OFF = 2.0  # SafetySec on: added p50 over the same call's with it off (issue 12)
# the streamed route of each other dialect keeps the core latency target; the unified endpoint translating
# to a provider is held against that provider's own route
DIALECT_STREAMS = ("anthropic-stream", "gemini-stream")
TRANSLATED = (
    ("unified-to-anthropic-stream", "anthropic-stream"),
    ("unified-to-gemini-stream", "gemini-stream"),
)


def _ms(us: float | None) -> str:
    return "–" if us is None else f"{us / 1000:.3f}"


def _n(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def _get(runs: dict[str, Any], scenario: str, target: str, phase: str, key: str) -> Any:
    return runs.get(scenario, {}).get(target, {}).get(phase, {}).get(key)


def _errors(runs: dict[str, Any], scenario: str, target: str) -> str:
    tp = runs.get(scenario, {}).get(target, {}).get("throughput")
    if not tp or not tp.get("requests"):
        return "–"
    return f"{tp['errors']:,} of {tp['requests']:,} ({100 * tp['errors'] / tp['requests']:.2f}%)"


def _k(n: int) -> str:
    return f"{n / 1000:,.0f}k" if n >= 1000 else str(n)


def _mib(kb: int | None) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"


def markdown(results: dict[str, Any]) -> str:  # noqa: C901 - older than the complexity rule; to split
    """Render the tables: direct vs gateway, peers, memory, soak, load generator, targets."""
    runs: dict[str, Any] = results.get("runs", {})
    out: list[str] = []
    meta = results.get("meta", {})
    out.append(f"## Odock benchmark — {meta.get('started', '')} — commit {meta.get('commit', '')}")
    out.append(
        f"`{meta.get('command', '')}` · {meta.get('cpu_model', '')} · {meta.get('cpus')} CPUs · "
        f"pinning {meta.get('pinning', {}).get('sut_cpu')}/{meta.get('pinning', {}).get('load_cpu')} · "
        f"idle {meta.get('idle', 'default')} · "
        f"{meta.get('wrk', '')}"
    )
    out.append("")
    out.append(
        "### Direct to mock vs through the gateway (latency: 1 connection, sequential; req/s: "
        f"{meta.get('options', {}).get('connections')} connections)"
    )
    out.append("")
    out.append(
        "| scenario | via | p50 ms | p99 ms | max ms | added p50 ms | added p99 ms | req/s | gateway/direct "
        "| gateway CPU % | errors |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc, targets in runs.items():
        d50 = _get(runs, sc, "direct", "latency", "p50_us")
        d99 = _get(runs, sc, "direct", "latency", "p99_us")
        drps = _get(runs, sc, "direct", "throughput", "rps")
        out.append(
            f"| {sc} | direct | {_ms(d50)} | {_ms(d99)} | "
            f"{_ms(_get(runs, sc, 'direct', 'latency', 'lat_max_us'))} | | | {_n(drps)} | | "
            f"{_get(runs, sc, 'direct', 'throughput', 'sut_cpu_pct') or '–'} (mock) | "
            f"{_get(runs, sc, 'direct', 'throughput', 'errors')} |"
        )
        for target in (*GATEWAYS, FORWARDER, *PEERS):
            if target not in targets:
                continue
            g50 = _get(runs, sc, target, "latency", "p50_us")
            g99 = _get(runs, sc, target, "latency", "p99_us")
            grps = _get(runs, sc, target, "throughput", "rps")
            added50 = _ms(g50 - d50) if g50 is not None and d50 is not None else "–"
            added99 = _ms(g99 - d99) if g99 is not None and d99 is not None else "–"
            out.append(
                f"| {sc} | {target} | {_ms(g50)} | {_ms(g99)} | "
                f"{_ms(_get(runs, sc, target, 'latency', 'lat_max_us'))} | {added50} | {added99} | {_n(grps)} | "
                f"{_ratio(grps, drps)} | {_get(runs, sc, target, 'throughput', 'sut_cpu_pct')} | "
                f"{_get(runs, sc, target, 'throughput', 'errors')} |"
            )
    peer_rows = [sc for sc, t in runs.items() if any(p in t for p in PEERS)]
    if peer_rows:
        out.append("")
        out.append("### Odock vs peers (same mock, same load generator, one worker each)")
        out.append("")
        out.append(
            "| scenario | odock req/s | portkey req/s | litellm req/s | odock/portkey (≥2×) | "
            "odock/litellm (≥15×) | p50 ms odock / portkey / litellm |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---|")
        for sc in peer_rows:
            r = {t: _get(runs, sc, t, "throughput", "rps") for t in ("odock", *PEERS)}
            p = {t: _ms(_get(runs, sc, t, "latency", "p50_us")) for t in ("odock", *PEERS)}
            out.append(
                f"| {sc} | {_n(r['odock'])} | {_n(r['portkey'])} | {_n(r['litellm'])} | "
                f"{_ratio(r['odock'], r['portkey'])} | {_ratio(r['odock'], r['litellm'])} | "
                f"{p['odock']} / {p['portkey']} / {p['litellm']} |"
            )
    failover = [sc for sc in runs if sc.startswith("failover-") and not sc.startswith("failover-healthy-")]
    if failover:
        out.append("")
        out.append("### Failover (primary answers 503 to 1% of calls, healthy fallback)")
        out.append("")
        out.append(
            "| scenario | direct errors | odock client errors | odock req/s | vs healthy model (same gateway) |"
        )
        out.append("|---|---:|---:|---:|---:|")
        for sc in failover:
            # compare like with like: the unary run with the healthy unary run, the stream with the healthy stream
            healthy = _get(runs, sc.replace("failover-", "failover-healthy-"), "odock", "throughput", "rps")
            out.append(
                f"| {sc} | {_errors(runs, sc, 'direct')} | {_errors(runs, sc, 'odock')} | "
                f"{_n(_get(runs, sc, 'odock', 'throughput', 'rps'))} | "
                f"{_ratio(_get(runs, sc, 'odock', 'throughput', 'rps'), healthy)} |"
            )
    memory = results.get("memory", {})
    if memory:
        out.append("")
        out.append("### Memory (process tree, MiB)")
        out.append("")
        out.append("| process | RSS idle | RSS at end | peak (VmHWM) |")
        out.append("|---|---:|---:|---:|")
        for name, m in memory.items():
            out.append(
                f"| {name} | {_mib(m.get('idle', {}).get('rss_kb'))} | {_mib(m.get('end', {}).get('rss_kb'))}"
                f" | {_mib(m.get('end', {}).get('hwm_kb'))} |"
            )
    for soak in (results[name] for name in SOAKS if name in results):
        out.append("")
        out.append(f"### Soak ({soak['scenario']}, {soak.get('mode', 'embedded')} mode, {soak['seconds']} s)")
        out.append("")
        out.append("| after requests | RSS MiB | peak MiB | req/s | errors | usage backlog | database MiB |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for m in soak["marks"]:
            out.append(
                f"| {m['requests']:,} | {_mib(m['rss_kb'])} | {_mib(m['hwm_kb'])} | {_n(m['rps'])} | "
                f"{m['errors']} | {_n(m.get('usage_backlog'))} | {_n(m.get('db_mb'))} |"
            )
        out.append(f"\nRSS growth from the first to the last mark: **{soak['rss_growth_pct']:+.2f}%**")
    lg = results.get("loadgen")
    if lg:
        out.append("")
        out.append("### Load generator cost (direct to mock, client pinned to the load core)")
        out.append("")
        out.append("| connections | client | req/s | client CPU ms per 1k requests | p50 ms |")
        out.append("|---|---|---:|---:|---:|")
        for conns, pair in lg.items():
            for client, r in pair.items():
                out.append(
                    f"| {conns[1:]} | {client} | {_n(r['rps'])} | {r['client_cpu_ms_per_1k']} | "
                    f"{_ms(r['p50_us'])} |"
                )
    out.append("")
    out.append("### Targets")
    out.append("")
    out.extend(_targets(results))
    problems = results.get("problems", [])
    if problems:
        out.append("")
        out.append("### Problems")
        out.extend(f"- {p}" for p in problems)
    return "\n".join(out)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _added_ms(
    runs: dict[str, Any], scenario: str, target: str = "odock", key: str = "p50_us"
) -> float | None:
    d = _get(runs, scenario, "direct", "latency", key)
    g = _get(runs, scenario, target, "latency", key)
    return None if d is None or g is None else (g - d) / 1000


def _added_row(runs: dict[str, Any], scenario: str, target: str = "odock") -> str:
    added = _added_ms(runs, scenario, target)
    via = "" if target == "odock" else f", {target}"
    return (
        f"| added p50 ≤ {TARGET_ADDED_P50_MS} ms ({scenario}{via}) | "
        f"{'–' if added is None else f'{added:.3f} ms'} | "
        f"{_verdict(None if added is None else added <= TARGET_ADDED_P50_MS)} |"
    )


# a cache hit beside the same call uncached: the hit must add less than the uncached call's gateway overhead
CACHE_HITS = (("cache-hit-unary", "openai-unary"), ("cache-hit-stream", "openai-stream"))


def _cache_rows(runs: dict[str, Any], hit: str, uncached: str) -> list[str]:
    h, u = _added_ms(runs, hit), _added_ms(runs, uncached)
    hit_rps = _get(runs, hit, "odock", "throughput", "rps")
    direct_rps = _get(runs, hit, "direct", "throughput", "rps")
    ratio = hit_rps / direct_rps if hit_rps and direct_rps else None
    return [
        f"| {hit} added p50 < {uncached}'s | "
        f"{'–' if h is None or u is None else f'{h:.3f} ms vs {u:.3f} ms'} | "
        f"{_verdict(None if h is None or u is None else h < u)} |",
        f"| {hit} req/s vs direct to the mock (info) | {'–' if ratio is None else f'{ratio:.2f}×'} | n/a |",
    ]


def _tail_rows(runs: dict[str, Any]) -> list[str]:
    """Issue 16: at one connection, added p99 ≤ 1 ms and no request above 20 ms, every scenario, both modes."""
    rows = []
    for target in GATEWAYS:
        for sc in (s for s, t in runs.items() if target in t):
            added = _added_ms(runs, sc, target, "p99_us")
            rows.append(
                f"| added p99 ≤ {TARGET_ADDED_P99_MS:g} ms at 1 connection ({sc}, {target}) | "
                f"{'–' if added is None else f'{added:.3f} ms'} | "
                f"{_verdict(None if added is None else added <= TARGET_ADDED_P99_MS)} |"
            )
            top = _get(runs, sc, target, "latency", "lat_max_us")
            top_ms = None if top is None else top / 1000
            direct = _get(runs, sc, "direct", "latency", "lat_max_us")
            rows.append(
                f"| slowest request ≤ {TARGET_MAX_MS:g} ms in the latency run ({sc}, {target}) | "
                f"{'–' if top_ms is None else f'{top_ms:.3f} ms'}"
                f"{'' if direct is None else f' (direct {direct / 1000:.3f} ms)'} | "
                f"{_verdict(None if top_ms is None else top_ms <= TARGET_MAX_MS)} |"
            )
    return rows


def _ratio_row(label: str, a: float | None, b: float | None, goal: float) -> str:
    ratio = a / b if a and b else None
    figures = "–" if ratio is None else f"{ratio:.2f}× ({a:,.0f} / {b:,.0f} req/s)"
    return f"| {label} | {figures} | {_verdict(None if ratio is None else ratio >= goal)} |"


def _governance_rows(results: dict[str, Any]) -> list[str]:
    """Issue 16: with governance on every scope, added p50 ≤ 0.3 ms, req/s ≥ 0.8× the same gateway without it,
    and req/s ≥ the bare Python forwarder's, both modes."""
    runs: dict[str, Any] = results.get("runs", {})
    rows = []
    for target in GATEWAYS:
        for sc, meta in results.get("scenarios", {}).items():
            baseline = meta.get("baseline")
            if not baseline or target not in runs.get(sc, {}):
                continue
            rows.append(_added_row(runs, sc, target))
            rps = _get(runs, sc, target, "throughput", "rps")
            rows.append(
                _ratio_row(
                    f"req/s ≥ {TARGET_GOVERNED_VS_UNGOVERNED:g}× without governance ({sc} / {baseline}, {target})",
                    rps,
                    _get(runs, baseline, target, "throughput", "rps"),
                    TARGET_GOVERNED_VS_UNGOVERNED,
                )
            )
            rows.append(
                _ratio_row(
                    f"req/s ≥ the bare Python forwarder's ({sc}, {target})",
                    rps,
                    _get(runs, sc, FORWARDER, "throughput", "rps"),
                    1.0,
                )
            )
    return rows


def _safety_rows(results: dict[str, Any]) -> list[str]:
    """SafetySec on against off (`--safety`): in the main table, and in the alternating rounds."""
    runs: dict[str, Any] = results.get("runs", {})
    rows = []
    for kind in ("unary", "stream"):
        on, off = _added_ms(runs, f"safety-{kind}"), _added_ms(runs, f"safety-off-{kind}")
        if on is not None and off is not None and off > 0:
            rows.append(
                f"| SafetySec on: added p50 ≤ {TARGET_SAFETY_ON_VS_OFF:g}× off (safety-{kind}, table) | "
                f"{on / off:.2f}× ({on:.3f} vs {off:.3f} ms) | {_verdict(on / off <= TARGET_SAFETY_ON_VS_OFF)} |"
            )
        rounds = results.get("safety_rounds", {}).get(kind)
        if rounds and rounds["ratio"] is not None:
            rows.append(
                f"| SafetySec on: added p50 ≤ {TARGET_SAFETY_ON_VS_OFF:g}× off (safety-{kind}, median of "
                f"{rounds['rounds']} alternating rounds) | {rounds['ratio']:.2f}× ({rounds['added_p50_on_ms']:.3f} "
                f"vs {rounds['added_p50_off_ms']:.3f} ms; per round {rounds['round_ratios']}) | "
                f"{_verdict(rounds['ratio'] <= TARGET_SAFETY_ON_VS_OFF)} |"
            )
    return rows


def _targets(results: dict[str, Any]) -> list[str]:
    runs: dict[str, Any] = results.get("runs", {})
    rows = ["| target | measured | verdict |", "|---|---|---|"]
    for sc in ("openai-unary", "openai-stream"):
        rows.append(_added_row(runs, sc))
        for peer, goal in (("portkey", TARGET_VS_PORTKEY), ("litellm", TARGET_VS_LITELLM)):
            o = _get(runs, sc, "odock", "throughput", "rps")
            p = _get(runs, sc, peer, "throughput", "rps")
            ratio = o / p if o and p else None
            rows.append(
                f"| req/s ≥ {goal:g}× {peer} ({sc}) | {'–' if ratio is None else f'{ratio:.2f}×'} | "
                f"{_verdict(None if ratio is None else ratio >= goal)} |"
            )
    for sc in DIALECT_STREAMS:
        if sc in runs:
            rows.append(_added_row(runs, sc))
    for translated, native in TRANSLATED:
        if translated in runs:
            t, n = _added_ms(runs, translated), _added_ms(runs, native)
            ratio = t / n if t is not None and n is not None and n > 0 else None
            rows.append(
                f"| {translated} added p50 ≤ {TARGET_TRANSLATED_VS_NATIVE:g}× {native}'s | "
                f"{'–' if ratio is None else f'{ratio:.2f}×'} | "
                f"{_verdict(None if ratio is None else ratio <= TARGET_TRANSLATED_VS_NATIVE)} |"
            )
    for hit, uncached in CACHE_HITS:
        if hit in runs:
            rows += _cache_rows(runs, hit, uncached)
    rows.extend(_governance_rows(results))
    rows.extend(_safety_rows(results))
    rows.extend(_tail_rows(runs))
    for name in SOAKS:
        soak = results.get(name)
        if soak is None and name != "soak":
            continue
        growth = soak["rss_growth_pct"] if soak else None
        span = (
            f"{_k(soak['marks'][-1]['requests'])} within {TARGET_SOAK_GROWTH_PCT:g}% of after "
            f"{_k(soak['marks'][0]['requests'])}"
            if soak and soak["marks"]
            else f"the last soak mark within {TARGET_SOAK_GROWTH_PCT:g}% of the first"
        )
        mode = f" ({soak.get('mode', 'embedded')})" if soak else ""
        rows.append(
            f"| RSS after {span}{mode} | "
            f"{'–' if growth is None else f'{growth:+.2f}%'} | "
            f"{_verdict(None if growth is None else abs(growth) <= TARGET_SOAK_GROWTH_PCT)} |"
        )
    return rows
