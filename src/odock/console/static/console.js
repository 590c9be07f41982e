// Odock console: a small single-page app over /console/api (session cookie + CSRF header). No dependencies,
// no inline script (strict CSP), every value put in the page as text, never as HTML.
"use strict";

const state = { csrf: null, timer: null };
const view = () => document.getElementById("view");

// ---------------------------------------------------------------- DOM and formatting helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const usd = (nanos) => "$" + (Number(nanos || 0) / 1e9).toFixed(nanos && Math.abs(nanos) < 1e7 ? 6 : 2);
const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const ms = (n) => (n === null || n === undefined ? "–" : num(Math.round(n)) + " ms");
const when = (iso) => (iso ? String(iso).replace("T", " ").slice(0, 19) : "–");
function table(columns, rows, onClick) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)))),
    h("tbody", {}, rows.map((r) => h("tr", { class: onClick ? "clickable" : null, onclick: onClick ? () => onClick(r) : null },
      columns.map((c) => { const v = c.get(r); return h("td", { class: c.num ? "num" : null }, v instanceof Node ? v : String(v ?? "")); })))));
}
function message(text, ok) { return h("p", { class: ok ? "ok" : "error", role: "alert" }, text); }

// ---------------------------------------------------------------- API

async function api(path, options = {}) {
  const init = { method: options.method || "GET", credentials: "same-origin", headers: {} };
  if (init.method !== "GET") init.headers["X-CSRF-Token"] = state.csrf || "";
  if (options.body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(options.body); }
  const response = await fetch(path, init);
  if (response.status === 401 && path !== "/console/login") { showLogin(); throw new Error("log in first"); }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
  return body;
}
const admin = (path, options) => api("/console/api/admin/" + path, options);
const qs = (params) => { const p = new URLSearchParams(); for (const [k, v] of Object.entries(params)) if (v) p.set(k, v); return p.toString(); };

// ---------------------------------------------------------------- charts (hand-written SVG)

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}
function short(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G"; if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k"; if (a === 0 || a >= 1) return String(Math.round(v * 100) / 100);
  return String(Number(v.toPrecision(2)));
}
// series: [{name, values}], labels: x labels; opts.limit draws a horizontal limit line
function chart(title, labels, series, opts = {}) {
  const W = 560, H = 200, L = 48, R = 8, T = 8, B = 24;
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  if (opts.limit) all.push(opts.limit);
  const max = Math.max(1e-9, ...all) * 1.05;
  const n = Math.max(labels.length, 1);
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, "data-points": String(all.length) });
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, (opts.format || short)(v)));
  }
  svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }), s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  const step = Math.max(1, Math.ceil(n / 6));
  labels.forEach((label, i) => { if (i % step === 0) svg.append(s("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, String(label).slice(5))); });
  series.forEach((ser, k) => {
    const pts = ser.values.map((v, i) => (v === null || v === undefined ? null : `${x(i)},${y(v)}`)).filter(Boolean);
    if (pts.length > 1) svg.append(s("polyline", { class: `line s${k}`, points: pts.join(" ") }));
    ser.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      svg.append(s("circle", { class: `s${k}`, cx: x(i), cy: y(v), r: pts.length > 60 ? 1.5 : 3 }, s("title", {}, `${labels[i]} ${ser.name}: ${(opts.format || short)(v)}`)));
    });
  });
  if (opts.limit) svg.append(s("line", { class: "limit", x1: L, x2: W - R, y1: y(opts.limit), y2: y(opts.limit) }));
  const legend = h("div", { class: "legend" }, series.map((ser, k) => h("span", {}, h("i", { class: `s${k}` }), ser.name)),
    opts.limit ? h("span", {}, "dashed: limit") : null);
  return h("div", { class: "chart" }, h("h3", {}, title), all.length ? svg : h("p", { class: "muted" }, "no data in this range"), legend);
}

// ---------------------------------------------------------------- pages

async function overviewPage(params) {
  const hours = params.get("hours") || "24";
  const d = await api("/console/api/overview?" + qs({ hours, organisation: params.get("organisation") }));
  const t = d.totals, labels = d.series.map((p) => p.t), col = (k) => d.series.map((p) => p[k]);
  const pick = h("select", { onchange: (e) => go("overview", { hours: e.target.value }) },
    [["24", "last 24 hours"], ["168", "last 7 days"], ["720", "last 30 days"]].map(([v, l]) => h("option", { value: v, selected: v === hours }, l)));
  return [
    h("h1", {}, "Overview"), h("div", { class: "bar" }, pick),
    h("div", { class: "tiles" },
      [["Requests", num(t.requests)], ["Errors", num(t.errors)], ["Cost", usd(t.cost_nanos)],
       ["Input tokens", num(t.input_tokens)], ["Output tokens", num(t.output_tokens)], ["p50 latency", ms(t.p50_ms)], ["p95 latency", ms(t.p95_ms)],
       ["p50 TTFT", ms(t.ttft_p50_ms)], ["p95 TTFT", ms(t.ttft_p95_ms)]]
        .map(([k, v]) => h("div", { class: "tile" }, k, h("b", {}, v)))),
    h("div", { class: "charts" },
      chart("Requests and errors per hour", labels, [{ name: "requests", values: col("requests") }, { name: "errors", values: col("errors") }]),
      chart("Cost per hour (USD)", labels, [{ name: "cost", values: col("cost_nanos").map((v) => v / 1e9) }]),
      chart("Tokens per hour", labels, [{ name: "input", values: col("input_tokens") }, { name: "output", values: col("output_tokens") }]),
      chart("Latency per hour (ms)", labels, [{ name: "p50", values: col("p50_ms") }, { name: "p95", values: col("p95_ms") }]),
      // streamed calls only (a call answered at once has no first token before its whole answer)
      chart("Time to first token per hour, streamed calls (ms)", labels, [{ name: "p50", values: col("ttft_p50_ms") }, { name: "p95", values: col("ttft_p95_ms") }])),
    h("h2", {}, `By model (whole days since ${d.models_since})`),
    table([{ title: "model", get: (r) => r.model || "(none)" }, { title: "requests", num: 1, get: (r) => num(r.requests) },
      { title: "errors", num: 1, get: (r) => num(r.errors) }, { title: "tokens", num: 1, get: (r) => num(r.input_tokens + r.output_tokens) },
      { title: "cost", num: 1, get: (r) => usd(r.cost_nanos) }], d.models),
  ];
}

async function usagePage(params) {
  const p = Object.fromEntries(["group_by", "since", "until", "organisation", "team", "user", "key", "model", "after"].map((k) => [k, params.get(k) || ""]));
  p.group_by = p.group_by || "model";
  const d = await api("/console/api/usage?" + qs(p));
  const field = (name, type) => h("label", {}, name, h("input", { name, type: type || "text", value: p[name] || "" }));
  const form = h("form", { class: "bar", onsubmit: (e) => { e.preventDefault(); go("usage", Object.fromEntries(new FormData(e.target))); } },
    h("label", {}, "group by", h("select", { name: "group_by" }, ["organisation", "team", "user", "key", "model", "day"].map((g) => h("option", { value: g, selected: g === p.group_by }, g)))),
    field("since", "date"), field("until", "date"), field("organisation"),
    h("span", { class: "muted" }, "with group by day, one of:"), field("team"), field("user"), field("key"), field("model"),
    h("button", { type: "submit" }, "Apply"),
    h("a", { href: "/console/api/usage.csv?" + qs({ ...p, after: "" }), download: "" }, "Export CSV"));
  const labels = d.series.map((r) => r.t);
  return [
    h("h1", {}, "Usage explorer"), form,
    h("div", { class: "charts" },
      chart("Cost per day (USD)", labels, [{ name: "cost", values: d.series.map((r) => r.cost_nanos / 1e9) }]),
      chart("Requests per day", labels, [{ name: "requests", values: d.series.map((r) => r.requests) }, { name: "errors", values: d.series.map((r) => r.errors) }])),
    table([{ title: d.group_by, get: (r) => r.group || "(none)" }, { title: "name", get: (r) => r.name || "" },
      { title: "requests", num: 1, get: (r) => num(r.requests) }, { title: "errors", num: 1, get: (r) => num(r.errors) },
      { title: "input tokens", num: 1, get: (r) => num(r.input_tokens) }, { title: "output tokens", num: 1, get: (r) => num(r.output_tokens) },
      { title: "cost", num: 1, get: (r) => usd(r.cost_nanos) }], d.data),
    d.next ? h("button", { type: "button", onclick: () => go("usage", { ...p, after: d.next }) }, "Next page") : null,
  ];
}

function secretBox(title, created) {
  const box = h("div", { class: "secret", id: "secret" }, h("strong", {}, title), h("p", {}, "Copy it now: it is shown once and never again."),
    h("code", { id: "secret-value" }, created.secret), " ",
    h("button", { type: "button", onclick: () => box.remove() }, "Done"));
  return box;
}

async function keysPage(params) {
  const p = { organisation: params.get("organisation") || "", q: params.get("q") || "", after: params.get("after") || "" };
  const [d, orgs] = await Promise.all([api("/console/api/keys?" + qs(p)), admin("organisations")]);
  const out = h("div", {});
  const create = h("form", { class: "bar", id: "create-key", onsubmit: async (e) => {
    e.preventDefault();
    const f = Object.fromEntries(new FormData(e.target));
    const body = { organisation: f.organisation, name: f.name, type: f.type || null, team: f.team || null, expires_at: f.expires_at ? new Date(f.expires_at).toISOString() : null };
    try {
      const created = await admin("keys", { method: "POST", body });
      out.replaceChildren(secretBox(`Key ${created.name} created`, created)); e.target.reset();
      list.replaceChildren(...keyTable(await api("/console/api/keys?" + qs(p)), p));
    }
    catch (err) { out.replaceChildren(message(err.message)); }
  } },
    h("label", {}, "organisation", h("select", { name: "organisation", required: true }, orgs.data.map((o) => h("option", { value: o.id }, o.name)))),
    h("label", {}, "name", h("input", { name: "name", required: true })),
    h("label", {}, "type", h("select", { name: "type" }, ["", "ORGANISATION", "TEAM", "USER"].map((t) => h("option", { value: t }, t || "(default)")))),
    h("label", {}, "team", h("input", { name: "team" })),
    h("label", {}, "expires", h("input", { name: "expires_at", type: "datetime-local" })),
    h("button", { class: "primary", type: "submit" }, "Create key"));
  const search = h("form", { class: "bar", onsubmit: (e) => { e.preventDefault(); go("keys", Object.fromEntries(new FormData(e.target))); } },
    h("label", {}, "organisation id", h("input", { name: "organisation", value: p.organisation })),
    h("label", {}, "name starts with", h("input", { name: "q", value: p.q })), h("button", { type: "submit" }, "Search"));
  const list = h("div", {}, keyTable(d, p));
  return [h("h1", {}, "Keys"), h("h2", {}, "New key"), create, out, h("h2", {}, "Keys"), search, list];
}

function keyTable(d, p) {
  return [table([{ title: "name", get: (r) => r.name }, { title: "preview", get: (r) => r.key_preview }, { title: "type", get: (r) => r.type },
      { title: "organisation", get: (r) => r.organisation_id }, { title: "expires", get: (r) => when(r.expires_at) },
      { title: "state", get: (r) => (r.revoked ? "revoked" : "active") }, { title: "rotations", num: 1, get: (r) => r.rotation_count }],
      d.data, (r) => keyDetail(r.id)),
    d.next ? h("button", { type: "button", onclick: () => go("keys", { ...p, after: d.next }) }, "Next page") : null].filter(Boolean);
}

async function keyDetail(id) {
  const [key, grants] = await Promise.all([admin("keys/" + id), admin(`keys/${id}/grants`)]);
  const out = h("div", {});
  const act = (label, fn) => h("button", { type: "button", onclick: async () => { try { await fn(); } catch (err) { out.replaceChildren(message(err.message)); } } }, label);
  const policies = h("textarea", { "aria-label": "policies" }); policies.value = JSON.stringify(key.policies, null, 2);
  const expiry = h("input", { type: "datetime-local", "aria-label": "expires at" });
  const grant = h("input", { placeholder: "model name or id", "aria-label": "model to grant" });
  render([h("h1", {}, `Key ${key.name}`), h("p", { class: "muted" }, `${key.id} · ${key.key_preview} · ${key.type} · ${key.revoked ? "revoked" : "active"} · expires ${when(key.expires_at)}`),
    h("div", { class: "bar" },
      act("Rotate", async () => { const c = await admin(`keys/${id}/rotate`, { method: "POST", body: {} }); out.replaceChildren(secretBox("New secret for " + key.name, c)); }),
      act("Revoke", async () => { if (confirm("Revoke this key?")) { await admin(`keys/${id}/revoke`, { method: "POST" }); keyDetail(id); } }),
      expiry, act("Set expiry", async () => { await admin("keys/" + id, { method: "PATCH", body: { expires_at: expiry.value ? new Date(expiry.value).toISOString() : null } }); keyDetail(id); })),
    out,
    h("h2", {}, "Grants (models this key may call)"),
    table([{ title: "model", get: (g) => g.name || g.model_id || g.id || JSON.stringify(g) },
      { title: "", get: (g) => h("button", { type: "button", onclick: async () => { await admin(`keys/${id}/grants/${encodeURIComponent(g.id || g.model_id)}`, { method: "DELETE" }); keyDetail(id); } }, "Remove") }], grants.data),
    h("div", { class: "bar" }, grant, act("Grant", async () => { await admin(`keys/${id}/grants`, { method: "POST", body: { model: grant.value } }); keyDetail(id); })),
    h("h2", {}, "Policies (limits, routing, access)"), policies,
    act("Save policies", async () => { await admin("keys/" + id, { method: "PATCH", body: { policies: JSON.parse(policies.value || "{}") } }); out.replaceChildren(message("saved", true)); })]);
}

function jsonEditor(title, path, value, fields) {
  const area = h("textarea", { "aria-label": title }); area.value = JSON.stringify(Object.fromEntries(fields.map((f) => [f, value[f]])), null, 2);
  const out = h("span", {});
  return h("div", { class: "panel" }, h("strong", {}, title), area,
    h("button", { type: "button", onclick: async () => { try { await admin(path, { method: "PATCH", body: JSON.parse(area.value) }); out.replaceChildren(message("saved", true)); } catch (err) { out.replaceChildren(message(err.message)); } } }, "Save"), out);
}

async function modelsPage() {
  const [providers, models] = await Promise.all([admin("providers"), admin("models")]);
  const detail = h("div", {});
  return [h("h1", {}, "Providers"),
    table([{ title: "name", get: (r) => r.name }, { title: "type", get: (r) => r.type }, { title: "base URL", get: (r) => r.base_url },
      { title: "credential", get: (r) => (r.has_api_key ? r.api_key_preview || "set" : "none") },
      { title: "enabled", get: (r) => h("button", { type: "button", onclick: async () => { await admin("providers/" + r.id, { method: "PATCH", body: { enabled: !r.enabled } }); route(); } }, r.enabled ? "enabled: disable" : "disabled: enable") }],
      providers.data),
    h("h1", {}, "Models"),
    table([{ title: "name", get: (r) => r.name }, { title: "slug", get: (r) => r.slug }, { title: "type", get: (r) => r.type },
      { title: "capabilities", get: (r) => (r.capabilities || []).join(", ") }, { title: "pricing", get: (r) => JSON.stringify(r.pricing) }],
      models.data, (r) => detail.replaceChildren(jsonEditor(`Model ${r.name}`, "models/" + r.id, r, ["pricing", "capabilities", "policies", "config"]))),
    detail];
}

async function budgetsPage() {
  const budgets = await admin("budgets");
  const detail = h("div", { id: "budget-detail" });
  const create = h("form", { class: "bar", onsubmit: async (e) => {
    e.preventDefault(); const f = Object.fromEntries(new FormData(e.target));
    try { await admin("budgets", { method: "POST", body: { name: f.name, owner_type: f.owner_type, owner_id: f.owner_id, period: f.period, amount_usd: f.amount_usd } }); route(); }
    catch (err) { detail.replaceChildren(message(err.message)); }
  } }, h("label", {}, "name", h("input", { name: "name", required: true })),
    h("label", {}, "owner", h("select", { name: "owner_type" }, ["ORG", "TEAM", "USER", "APIKEY"].map((o) => h("option", {}, o)))),
    h("label", {}, "owner id", h("input", { name: "owner_id", required: true })),
    h("label", {}, "period", h("select", { name: "period" }, ["DAILY", "WEEKLY", "MONTHLY", "QUARTERLY"].map((o) => h("option", {}, o)))),
    h("label", {}, "amount USD", h("input", { name: "amount_usd", required: true, inputmode: "decimal" })), h("button", { type: "submit" }, "Create budget"));
  return [h("h1", {}, "Budgets"),
    table([{ title: "name", get: (r) => r.name }, { title: "owner", get: (r) => `${r.owner_type} ${r.owner_id}` }, { title: "period", get: (r) => r.period },
      { title: "amount", num: 1, get: (r) => usd(r.amount_nanos) }, { title: "thresholds", get: (r) => (r.thresholds || []).join("%, ") + "%" },
      { title: "active", get: (r) => (r.active ? "yes" : "no") }], budgets, (r) => budgetDetail(r, detail)),
    detail, h("h2", {}, "New budget"), create];
}

async function budgetDetail(b, into) {
  const [burn, events] = await Promise.all([api(`/console/api/budgets/${b.id}/burn`), admin(`budget-events?budget_id=${encodeURIComponent(b.id)}&limit=50`)]);
  const amount = h("input", { name: "amount_usd", value: String(b.amount_nanos / 1e9), inputmode: "decimal", "aria-label": "amount USD" });
  const thresholds = h("input", { name: "thresholds", value: (b.thresholds || []).join(","), "aria-label": "thresholds" });
  const out = h("span", {});
  const days = burn.by_day || [];
  into.replaceChildren(h("div", { class: "panel" }, h("h2", {}, `Budget ${b.name}`),
    h("p", { class: "muted" }, `window ${when(burn.window.start_at)} → ${when(burn.window.end_at)}; settled used ${burn.window.used === null ? "–" : usd(burn.window.used)} of ${usd(b.amount_nanos)}`),
    chart("Burn-down: cumulative spend this window (USD)", days.map((r) => r.t), [{ name: "spent", values: days.map((r) => r.cumulative_nanos / 1e9) }], { limit: b.amount_nanos / 1e9 }),
    h("form", { class: "bar", id: "budget-edit", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const updated = await admin("budgets/" + b.id, { method: "PATCH", body: { amount_usd: amount.value, thresholds: thresholds.value.split(",").map((x) => Number(x.trim())).filter((x) => x) } });
        out.replaceChildren(message(`saved: ${usd(updated.amount_nanos)}`, true));
      } catch (err) { out.replaceChildren(message(err.message)); }
    } }, h("label", {}, "amount USD", amount), h("label", {}, "thresholds %", thresholds), h("button", { class: "primary", type: "submit" }, "Save budget"), out),
    h("h3", {}, "Threshold and overspend events"),
    table([{ title: "when", get: (e) => when(e.created_at) }, { title: "kind", get: (e) => e.kind }, { title: "threshold", num: 1, get: (e) => e.threshold },
      { title: "used", num: 1, get: (e) => usd(e.used_nanos ?? e.charged_nanos) }], events)));
}

async function quotasPage() {
  const quotas = await admin("quotas");
  const detail = h("div", {});
  return [h("h1", {}, "Quotas"),
    table([{ title: "name", get: (r) => r.name }, { title: "owner", get: (r) => `${r.owner_type} ${r.owner_id}` }, { title: "period", get: (r) => r.period },
      { title: "metric", get: (r) => r.metric }, { title: "limit", num: 1, get: (r) => num(r.limit) }, { title: "active", get: (r) => (r.active ? "yes" : "no") }],
      quotas, (r) => detail.replaceChildren(jsonEditor(`Quota ${r.name}`, "quotas/" + r.id, r, ["limit", "active", "period"]))), detail];
}

async function routingPage(params) {
  const orgs = await admin("organisations");
  const detail = h("div", {});
  const find = h("form", { class: "bar", onsubmit: async (e) => {
    e.preventDefault(); const ref = new FormData(e.target).get("key");
    try { const k = await admin("keys/" + encodeURIComponent(ref)); detail.replaceChildren(jsonEditor(`Key ${k.name}: policies (routing.<model type> holds its routing policy)`, "keys/" + k.id, k, ["policies"])); }
    catch (err) { detail.replaceChildren(message(err.message)); }
  } }, h("label", {}, "key id", h("input", { name: "key", required: true })), h("button", { type: "submit" }, "Edit its routing policy"));
  return [h("h1", {}, "Routing policies"), h("p", { class: "muted" }, "Routing is switched on per organisation (policies.routing.enabled) and set per key and model type (policies.routing.chat …)."),
    table([{ title: "organisation", get: (r) => r.name }, { title: "routing", get: (r) => JSON.stringify((r.policies || {}).routing ?? (r.policies?.policies || {}).routing ?? null) }],
      orgs.data, (r) => detail.replaceChildren(jsonEditor(`Organisation ${r.name}: policies`, "organisations/" + r.id, r, ["policies"]))),
    find, detail];
}

const LOG_COLUMNS = [{ title: "time", get: (r) => when(r.created_at) }, { title: "status", num: 1, get: (r) => r.status }, { title: "outcome", get: (r) => r.outcome },
  { title: "model", get: (r) => r.model || "" }, { title: "provider", get: (r) => r.provider || "" }, { title: "key", get: (r) => r.api_key_id },
  { title: "tokens in/out", num: 1, get: (r) => `${num(r.input_tokens)} / ${num(r.output_tokens)}` }, { title: "latency", num: 1, get: (r) => ms(r.latency_ms) },
  { title: "cost", num: 1, get: (r) => usd(r.cost_nanos) }];

async function showRecord(id, into) {
  const r = await api("/console/api/records/" + encodeURIComponent(id));
  into.replaceChildren(h("div", { class: "panel" }, h("h2", {}, "Request " + r.request_id),
    table([{ title: "field", get: (x) => x[0] }, { title: "value", get: (x) => x[1] }],
      Object.entries(r).filter(([k]) => !["pricing", "raw_usage", "routing", "metadata"].includes(k)).map(([k, v]) => [k, v ?? ""])),
    h("h3", {}, "Routing attempts and decisions"), h("pre", {}, JSON.stringify(r.routing, null, 2)),
    h("h3", {}, "Pricing"), h("pre", {}, JSON.stringify(r.pricing, null, 2)),
    h("h3", {}, "Provider usage"), h("pre", {}, JSON.stringify(r.raw_usage, null, 2)),
    h("h3", {}, "Metadata"), h("pre", {}, JSON.stringify(r.metadata, null, 2))));
}

async function requestsPage(params) {
  const p = Object.fromEntries(["organisation", "key", "model", "provider", "outcome", "before"].map((k) => [k, params.get(k) || ""]));
  const d = await api("/console/api/records?" + qs(p));
  const detail = h("div", {});
  const form = h("form", { class: "bar", onsubmit: (e) => { e.preventDefault(); go("requests", Object.fromEntries(new FormData(e.target))); } },
    ["organisation", "key", "model", "provider"].map((n) => h("label", {}, n, h("input", { name: n, value: p[n] }))),
    h("label", {}, "outcome", h("select", { name: "outcome" }, ["", "success", "failed", "cancelled"].map((o) => h("option", { value: o, selected: o === p.outcome }, o || "any")))),
    h("button", { type: "submit" }, "Filter"));
  return [h("h1", {}, "Request log"), form, table(LOG_COLUMNS, d.data, (r) => showRecord(r.id, detail)),
    d.scanned_to ? h("p", { class: "muted" }, `looked through the records down to ${when(d.scanned_to)}; "Older" carries on from there`) : null,
    d.next ? h("button", { type: "button", onclick: () => go("requests", { ...p, before: d.next }) }, "Older") : null, detail];
}

async function tailPage() {
  const d = await api("/console/api/records?limit=50");
  let cursor = d.tail; const rows = d.data;
  const holder = h("div", {}, table(LOG_COLUMNS, rows));
  const detail = h("div", {});
  const poll = async () => {
    if (document.hidden) return;
    const url = "/console/api/records?" + qs({ after: cursor || "", limit: "100" });
    const next = cursor ? await api(url) : await api("/console/api/records?limit=50");
    if (next.data.length) {
      if (cursor) rows.unshift(...next.data.reverse()); else rows.splice(0, rows.length, ...next.data);
      rows.splice(200); cursor = next.tail || cursor;
      holder.replaceChildren(table(LOG_COLUMNS, rows, (r) => showRecord(r.id, detail)));
    }
  };
  state.timer = setInterval(() => poll().catch(() => {}), 2000);
  return [h("h1", {}, "Live tail"), h("p", { class: "muted" }, "newest first; checks for new records every 2 s while this page is visible"), holder, detail];
}

// ---------------------------------------------------------------- admin API reference (from /admin/openapi.json)

const METHODS = ["get", "post", "put", "patch", "delete"];
const refName = (ref) => String(ref).split("/").pop();
// a schema as a short type text: a $ref by its name, arrays and unions spelled out, enums listed
function typeText(schema) {
  if (!schema || typeof schema !== "object") return "any";
  if (schema.$ref) return refName(schema.$ref);
  const union = schema.anyOf || schema.oneOf;
  if (union) return union.map(typeText).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array") return "array of " + typeText(schema.items);
  if (type === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object") return "object of " + typeText(schema.additionalProperties);
  return (type || "any") + (schema.format ? ` (${schema.format})` : "");
}
// the named schemas a schema mentions (to offer a jump to each)
function refsOf(schema, out = new Set()) {
  if (Array.isArray(schema)) schema.forEach((x) => refsOf(x, out));
  else if (schema && typeof schema === "object") for (const [k, v] of Object.entries(schema)) { if (k === "$ref") out.add(refName(v)); else refsOf(v, out); }
  return out;
}
function jumpTo(name) {
  const el = document.getElementById("schema-" + name);
  if (el) { el.open = true; el.scrollIntoView(); }
}
function schemaLinks(schema) {
  const names = [...refsOf(schema)];
  return names.length ? h("span", { class: "refs" }, names.map((n) => h("button", { type: "button", class: "link", onclick: () => jumpTo(n) }, n))) : null;
}
function fieldsTable(schema, schemas) {
  const target = schema && schema.$ref ? schemas[refName(schema.$ref)] : schema;
  if (!target || !target.properties) return h("p", {}, h("code", {}, typeText(schema)), " ", schemaLinks(schema));
  const required = new Set(target.required || []);
  return table([{ title: "field", get: (r) => h("code", {}, r[0]) }, { title: "type", get: (r) => typeText(r[1]) },
    { title: "required", get: (r) => (required.has(r[0]) ? "yes" : "") }, { title: "description", get: (r) => r[1].description || "" }],
    Object.entries(target.properties));
}
function operationView(method, path, op, schemas) {
  const params = op.parameters || [];
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const responses = Object.entries(op.responses || {}).map(([status, r]) => {
    const resolved = r.$ref ? (reference.components.responses || {})[refName(r.$ref)] || {} : r;
    const media = resolved.content && resolved.content["application/json"];
    return { status, description: resolved.description || "", schema: media && media.schema, example: media && media.example };
  });
  return h("details", { class: "op", "data-method": method.toUpperCase(), "data-path": path },
    h("summary", {}, h("span", { class: "method m-" + method }, method.toUpperCase()), " ", h("code", {}, path), " ", h("span", { class: "muted" }, op.summary || "")),
    op.description ? h("p", {}, op.description) : null,
    params.length ? [h("h4", {}, "Parameters"), table([{ title: "name", get: (p) => h("code", {}, p.name) }, { title: "in", get: (p) => p.in },
      { title: "type", get: (p) => typeText(p.schema) }, { title: "required", get: (p) => (p.required ? "yes" : "") },
      { title: "description", get: (p) => p.description || "" }], params)] : null,
    body ? [h("h4", {}, "Request body ", schemaLinks(body.schema)), fieldsTable(body.schema, schemas),
      body.example !== undefined ? h("pre", {}, JSON.stringify(body.example, null, 2)) : null] : null,
    h("h4", {}, "Responses"),
    table([{ title: "status", get: (r) => r.status }, { title: "description", get: (r) => r.description },
      { title: "body", get: (r) => (r.schema ? h("span", {}, typeText(r.schema), " ", schemaLinks(r.schema)) : "") }], responses),
    responses.filter((r) => r.example !== undefined).flatMap((r) => [h("p", { class: "muted" }, `example ${r.status}`), h("pre", {}, JSON.stringify(r.example, null, 2))]));
}
// the document's shared parts (error responses), for the page being drawn
const reference = { components: {} };
async function apiPage(params) {
  const doc = await admin("openapi.json");
  reference.components = doc.components || {};
  const schemas = reference.components.schemas || {};
  const q = (params.get("q") || "").toLowerCase();
  const byTag = new Map();
  let count = 0;
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      if (q && !(path + " " + method + " " + (op.summary || "") + " " + (op.tags || []).join(" ")).toLowerCase().includes(q)) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(method, path, op, schemas));
      count++;
    }
  }
  const search = h("form", { class: "bar", onsubmit: (e) => { e.preventDefault(); go("api", { q: new FormData(e.target).get("q") }); } },
    h("label", {}, "filter", h("input", { name: "q", value: params.get("q") || "", placeholder: "path, method, summary" })), h("button", { type: "submit" }, "Apply"),
    h("a", { href: "/console/api/admin/openapi.json", download: "odock-admin-openapi.json" }, "Download openapi.json"));
  return [
    h("h1", {}, (doc.info && doc.info.title) || "Admin API"),
    h("p", { class: "muted" }, `OpenAPI ${doc.openapi}, version ${(doc.info && doc.info.version) || "?"}: ${count} operations. `, (doc.info && doc.info.description) || ""),
    search,
    h("div", {}, [...byTag.entries()].map(([tag, ops]) => h("section", { class: "tag", "data-tag": tag }, h("h2", {}, tag), ops))),
    h("h2", {}, "Schemas"),
    h("div", {}, Object.entries(schemas).map(([name, schema]) => h("details", { class: "schema", id: "schema-" + name },
      h("summary", {}, h("code", {}, name), " ", h("span", { class: "muted" }, schema.description || typeText(schema))), fieldsTable(schema, schemas)))),
  ];
}

// ---------------------------------------------------------------- routing, login

const PAGES = { overview: overviewPage, usage: usagePage, keys: keysPage, models: modelsPage, budgets: budgetsPage,
  quotas: quotasPage, routing: routingPage, requests: requestsPage, tail: tailPage, api: apiPage };

function go(page, params) { location.hash = "#/" + page + (params ? "?" + qs(params) : ""); }
function render(nodes) { view().replaceChildren(...[nodes].flat().filter(Boolean)); }

async function route() {
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  const [path, query] = (location.hash.slice(2) || "overview").split("?");
  const page = PAGES[path] ? path : "overview";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#/" + page));
  const started = performance.now();
  try { render(await PAGES[page](new URLSearchParams(query || ""))); }
  catch (err) { if (state.csrf) render(message(err.message)); }
  // when the page was drawn and how long it took from the route change (read by the browser tests and bench)
  state.renders = (state.renders || 0) + 1;
  view().dataset.page = page; view().dataset.renderMs = (performance.now() - started).toFixed(1);
  view().dataset.rendered = String(state.renders);
}

function showLogin() {
  state.csrf = null;
  document.getElementById("top").hidden = true; view().replaceChildren();
  document.getElementById("login").hidden = false;
}

async function start() {
  document.getElementById("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = document.getElementById("token").value;
    try { const s = await api("/console/login", { method: "POST", body: { token } }); document.getElementById("token").value = ""; enter(s.csrf); }
    catch (err) { document.getElementById("login-error").textContent = err.message; }
  });
  document.getElementById("logout").addEventListener("click", async () => { await api("/console/logout", { method: "POST" }).catch(() => {}); showLogin(); });
  window.addEventListener("hashchange", () => { if (state.csrf) route(); });
  try { const s = await api("/console/api/session"); enter(s.csrf); } catch (err) { showLogin(); }
}

function enter(csrf) {
  state.csrf = csrf;
  document.getElementById("login").hidden = true; document.getElementById("top").hidden = false;
  route();
}

document.addEventListener("DOMContentLoaded", start);
