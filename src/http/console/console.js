// The sale console: every second, the live campaigns (GET /v1/campaigns, with the token the
// person entered), the service's metrics (GET /metrics: rates from the change since the last
// second) and readiness (GET /readyz). Actions (create, end, adjust stock) are API calls with
// the same token; the API decides who may do what. No library, no external resource.
"use strict";

const state = {
  token: sessionStorage.getItem("flashsale-token") || "",
  last: null,
  lastAt: 0,
  // An action's outcome stays on screen this long before the periodic hints may replace it.
  saidUntil: 0,
};
const $ = (selector) => document.querySelector(selector);

function say(text, ok) {
  const message = $("#message");
  message.textContent = text;
  message.className = ok ? "ok" : "";
}

function hint(text) {
  if (performance.now() >= state.saidUntil) say(text, false);
}

async function api(method, path, body, key) {
  const headers = { "Authorization": "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Idempotency-Key"] = key;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let answer = null;
  try { answer = text ? JSON.parse(text) : null; } catch (_) { answer = text; }
  if (!response.ok) {
    const detail = answer && answer.detail ? answer.detail : response.statusText;
    const code = answer && answer.code ? answer.code : response.status;
    throw new Error(`${response.status} ${code}: ${detail}`);
  }
  return answer;
}

// Prometheus text: a map from "name{labels}" to value, and the labels of each sample.
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2];
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function sum(samples, name, where) {
  return samples
    .filter((s) => s.name === name && Object.entries(where || {}).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0);
}

// The reserve route's p99 over the last interval, from the histogram buckets' change.
function p99(now, before) {
  const route = { route: "/v1/campaigns/{id}/reservations", method: "POST" };
  const buckets = {};
  for (const [samples, sign] of [[now, 1], [before, -1]]) {
    for (const s of samples) {
      if (s.name !== "flashsale_http_request_duration_seconds_bucket") continue;
      if (s.labels.route !== route.route || s.labels.method !== route.method) continue;
      buckets[s.labels.le] = (buckets[s.labels.le] || 0) + sign * s.value;
    }
  }
  const bounds = Object.keys(buckets).sort((a, b) => Number(a) - Number(b));
  const total = buckets["+Inf"] || 0;
  if (total <= 0) return null;
  for (const le of bounds) {
    if (buckets[le] >= 0.99 * total) return le === "+Inf" ? Infinity : Number(le);
  }
  return null;
}

function rate(now, before, seconds, name, where) {
  if (!before || seconds <= 0) return 0;
  return Math.max(0, (sum(now, name, where) - sum(before, name, where)) / seconds);
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n.toLocaleString("en", { maximumFractionDigits: digits === undefined ? 0 : digits });
}

function cell(row, text, numeric) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  row.appendChild(td);
  return td;
}

function render(campaigns, now, before, seconds) {
  const body = $("#campaigns tbody");
  body.replaceChildren();
  for (const c of campaigns) {
    const row = document.createElement("tr");
    row.dataset.campaign = c.id;
    cell(row, c.id);
    cell(row, c.status);
    cell(row, fmt(c.available), true).dataset.field = "available";
    cell(row, fmt(c.held), true).dataset.field = "held";
    cell(row, fmt(c.confirmed), true).dataset.field = "confirmed";
    cell(row, fmt(c.stock), true).dataset.field = "stock";
    const label = { campaign: c.id };
    cell(row, fmt(rate(now, before, seconds, "flashsale_reservation_attempts_total", label), 1), true)
      .dataset.field = "attempts";
    const reasons = {};
    for (const s of now) {
      if (s.name !== "flashsale_reservation_attempts_total" || s.labels.campaign !== c.id) continue;
      const outcome = s.labels.outcome;
      if (outcome === "reserved" || outcome === "replayed") continue;
      const r = rate(now, before, seconds, s.name, { campaign: c.id, outcome });
      if (r > 0) reasons[outcome] = r;
    }
    cell(row, Object.entries(reasons).map(([k, v]) => `${k} ${fmt(v, 1)}`).join(", ") || "–");
    const waiting = now.find((s) => s.name === "flashsale_queue_waiting" && s.labels.campaign === c.id);
    cell(row, waiting ? fmt(waiting.value) : "–", true);
    const actions = cell(row, "");
    const end = document.createElement("button");
    end.textContent = "End";
    end.dataset.action = "end";
    end.onclick = () => act(() => api("POST", `/v1/campaigns/${encodeURIComponent(c.id)}/end`), `${c.id} ended`);
    const delta = document.createElement("input");
    delta.type = "number";
    delta.placeholder = "± units";
    delta.style.width = "6rem";
    const adjust = document.createElement("button");
    adjust.textContent = "Adjust stock";
    adjust.dataset.action = "stock";
    adjust.onclick = () => act(
      () => api("POST", `/v1/campaigns/${encodeURIComponent(c.id)}/stock`, { delta: Number(delta.value) }, "console-" + Date.now()),
      `${c.id}: stock adjusted by ${delta.value}`);
    actions.append(end, " ", delta, adjust);
    body.appendChild(row);
  }
}

async function act(call, done) {
  state.saidUntil = performance.now() + 5000;
  try {
    await call();
    say(done, true);
    await tick();
  } catch (error) {
    say(error.message, false);
  }
}

async function tick() {
  const at = performance.now();
  try {
    const ready = await fetch("/readyz").then((r) => r.json()).catch(() => null);
    const health = $("#health");
    health.textContent = ready ? `${ready.status} · ${ready.engine} · ${ready.database}` : "unreachable";
    health.className = "pill " + (ready ? ready.status : "degraded");
    const metricsText = await fetch("/metrics").then((r) => (r.ok ? r.text() : "")).catch(() => "");
    const now = parseMetrics(metricsText);
    const before = state.last;
    const seconds = before ? (at - state.lastAt) / 1000 : 0;
    state.last = now;
    state.lastAt = at;
    $("#persister-lag").textContent = `${fmt(sum(now, "flashsale_persister_lag_seconds"), 2)} s`;
    $("#persister-backlog").textContent = fmt(sum(now, "flashsale_persister_backlog_events"));
    const hooks = now.filter((s) => s.name === "flashsale_webhook_lag_seconds").map((s) => s.value);
    $("#webhook-lag").textContent = hooks.length ? `${fmt(Math.max(...hooks), 1)} s` : "–";
    const p = before ? p99(now, before) : null;
    $("#p99").textContent = p === null ? "–" : p === Infinity ? "> max bucket" : `≤ ${fmt(p * 1000, 1)} ms`;
    $("#attempts").textContent = fmt(rate(now, before, seconds, "flashsale_reservation_attempts_total"), 1);
    if (!state.token) {
      hint("Enter the admin token (or a store token to watch only).");
      return;
    }
    const live = [];
    for (const status of ["active", "sold_out", "scheduled"]) {
      const page = await api("GET", `/v1/campaigns?status=${status}&limit=500`);
      live.push(...page.campaigns);
    }
    render(live, now, before, seconds);
  } catch (error) {
    hint(error.message);
  }
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem("flashsale-token", state.token);
  say("", true);
  tick();
});

$("#create").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = {
    id: form.get("id"), kind: "flash_sale", sku: form.get("sku"),
    stock: Number(form.get("stock")), per_user_limit: Number(form.get("per_user_limit") || 1),
  };
  act(() => api("POST", "/v1/campaigns", body, "console-" + body.id), `${body.id} created`);
});

tick();
setInterval(tick, 1000);
