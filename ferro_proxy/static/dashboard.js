// ferro-proxy dashboard: a self-contained page on the admin listener. It signs in with an
// admin or read-only key (kept in sessionStorage for this tab) and reads /admin/* with it.
"use strict";

const state = { key: null, viewer: null, isAdmin: false, history: [], selected: null, timer: null };
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ API

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.key };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || ("HTTP " + resp.status);
    const err = new Error(message);
    err.status = resp.status;
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------ small DOM helpers

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillTable(id, items, render) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (!items.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, "nothing yet", "muted");
    td.colSpan = $(id).querySelectorAll("thead th").length;
    body.appendChild(tr);
    return;
  }
  for (const item of items) {
    const tr = document.createElement("tr");
    render(tr, item);
    body.appendChild(tr);
  }
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false });
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function notify(text) {
  const el = $("notice");
  el.textContent = text;
  el.classList.toggle("hidden", !text);
}

// A destructive button asks for a second click instead of a blocking dialog.
function confirmButton(label, cls, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = cls;
  button.textContent = label;
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm " + label.toLowerCase();
      return;
    }
    button.disabled = true;
    try { await action(); } catch (e) { notify(label + " failed: " + e.message); }
    button.disabled = false;
  });
  return button;
}

// ------------------------------------------------------------------ charts

function drawChart(canvas, points, lines) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#2a3441";
  ctx.fillStyle = "#8b98a5";
  let max = 0;
  for (const line of lines) for (const p of points) max = Math.max(max, Number(p[line.field]) || 0);
  max = max > 0 ? max * 1.15 : 1;
  for (let i = 0; i <= 3; i++) {
    const y = pad / 2 + ((h - pad) * i) / 3;
    ctx.beginPath(); ctx.moveTo(pad + 8, y); ctx.lineTo(w - 4, y); ctx.stroke();
    ctx.fillText(fmt(max * (1 - i / 3), max < 10 ? 2 : 0), 2, y + 4);
  }
  if (points.length) {
    ctx.fillText(new Date(points[0].t).toLocaleTimeString(undefined, { hour12: false }), pad + 8, h - 2);
    const last = new Date(points[points.length - 1].t).toLocaleTimeString(undefined, { hour12: false });
    ctx.fillText(last, w - ctx.measureText(last).width - 4, h - 2);
  }
  const step = points.length > 1 ? (w - pad - 12) / (points.length - 1) : 0;
  lines.forEach((line, index) => {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = pad + 8 + i * step;
      const y = pad / 2 + (h - pad) * (1 - (Number(p[line.field]) || 0) / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = line.color;
    ctx.fillText(line.label, w - 90, 12 + index * 13);
  });
  ctx.lineWidth = 1;
  canvas.dataset.points = String(points.length);
}

// ------------------------------------------------------------------ sections

async function loadStats() {
  const stats = await api("GET", "/admin/logs/stats?since=1h&bucket=60");
  $("t-requests").textContent = fmt(stats.total_requests, 0);
  $("t-rps").textContent = fmt(stats.requests_per_second_last_minute, 3);
  $("t-errors").textContent = fmt(stats.error_rate * 100, 1) + " %";
  const l = stats.latency_ms;
  $("t-latency").textContent = [l.p50, l.p95, l.p99].map((v) => fmt(v, 0)).join(" / ");
  $("t-tokens").textContent = fmt(stats.tokens.total, 0);
  $("t-cost").textContent = fmt(stats.cost_usd, 4);
  const points = stats.series.points;
  drawChart($("chart-rate"), points, [{ field: "rps", label: "req/s", color: "#4aa3ff" }]);
  drawChart($("chart-latency"), points, [
    { field: "latency_p50_ms", label: "p50", color: "#3fb950" },
    { field: "latency_p95_ms", label: "p95", color: "#d29922" },
  ]);
  drawChart($("chart-errors"), points, [{ field: "errors", label: "errors", color: "#f85149" }]);
}

async function loadProviders() {
  const data = await api("GET", "/admin/providers");
  fillTable("providers", data.data, (tr, p) => {
    tr.dataset.provider = p.name;
    cell(tr, p.display && p.display !== p.name ? `${p.name} (${p.display})` : p.name);
    cell(tr, p.base_url, "wrap");
    cell(tr, p.key_configured ? "configured" : "none", p.key_configured ? "status-ok" : "status-warn");
    const circuit = typeof p.circuit === "string" ? p.circuit : (p.circuit && p.circuit.state) || "closed";
    cell(tr, circuit, circuit === "closed" ? "status-ok" : "status-bad");
  });
}

async function loadLogs() {
  const data = await api("GET", "/admin/logs?limit=20");
  fillTable("logs", data.data, (tr, r) => {
    tr.dataset.requestId = r.id;
    cell(tr, when(r.ts));
    cell(tr, r.key_id);
    cell(tr, r.provider);
    cell(tr, r.model);
    cell(tr, r.status, r.status >= 400 ? "status-bad" : "status-ok");
    cell(tr, r.total_tokens);
    cell(tr, fmt(r.latency_ms, 1));
    cell(tr, r.error, "wrap");
  });
}

async function loadKeys() {
  const data = await api("GET", "/admin/keys");
  fillTable("keys", data.data, (tr, k) => {
    tr.dataset.keyId = k.id;
    cell(tr, k.name);
    cell(tr, k.id);
    cell(tr, k.prefix + "…");
    cell(tr, k.scopes.join(", "));
    cell(tr, k.status, k.status === "active" ? "status-ok" : "status-bad");
    cell(tr, k.usage_count);
    cell(tr, when(k.last_used_at));
    if (state.isAdmin) {
      const td = cell(tr, "");
      td.replaceChildren();
      if (k.status === "active") {
        td.appendChild(confirmButton("Rotate", "secondary rotate", async () => {
          const rotated = await api("POST", `/admin/keys/${k.id}/rotate`);
          notify(`New secret for ${k.name} (shown once): ${rotated.key}`);
          await loadKeys();
        }));
        td.appendChild(document.createTextNode(" "));
        td.appendChild(confirmButton("Revoke", "danger revoke", async () => {
          await api("POST", `/admin/keys/${k.id}/revoke`);
          notify(`Key ${k.name} revoked.`);
          await loadKeys();
        }));
      }
    }
  });
}

// ------------------------------------------------------------------ config history and diff

function configLines(config) {
  return JSON.stringify(config, null, 2).split("\n");
}

function diffLines(before, after) {
  // Lines equal but for a trailing comma (a new last key) count as unchanged.
  const same = (a, b) => a.replace(/,$/, "") === b.replace(/,$/, "");
  const n = before.length, m = after.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = same(before[i], after[j]) ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (same(before[i], after[j])) { out.push(["same", after[j]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) { out.push(["del", before[i]]); i++; }
    else { out.push(["add", after[j]]); j++; }
  }
  while (i < n) out.push(["del", before[i++]]);
  while (j < m) out.push(["add", after[j++]]);
  return out;
}

function showDiff(version) {
  state.selected = version;
  const index = state.history.findIndex((v) => v.version === version);
  const current = state.history[index];
  const previous = state.history[index + 1];
  const pre = $("diff");
  pre.replaceChildren();
  $("diff-title").textContent = previous
    ? `Version ${previous.version} → ${current.version}`
    : `Version ${current.version} (the first one)`;
  const ops = diffLines(previous ? configLines(previous.config) : [], configLines(current.config));
  for (const [kind, text] of ops) {
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = (kind === "add" ? "+ " : kind === "del" ? "- " : "  ") + text;
    pre.appendChild(span);
  }
  for (const tr of $("history").querySelectorAll("tbody tr")) {
    tr.classList.toggle("selected", Number(tr.dataset.version) === version);
  }
}

async function loadHistory() {
  const data = await api("GET", "/admin/config/history?limit=50");
  state.history = data.data;
  fillTable("history", data.data, (tr, v) => {
    tr.dataset.version = String(v.version);
    cell(tr, v.version === data.current_version ? `${v.version} (current)` : v.version);
    cell(tr, when(v.created_at));
    cell(tr, v.actor);
    cell(tr, v.rolled_back_from ? `rollback of ${v.rolled_back_from}` : v.source, "wrap");
    const td = cell(tr, "");
    td.replaceChildren();
    const view = document.createElement("button");
    view.type = "button";
    view.className = "secondary view";
    view.textContent = "Diff";
    view.addEventListener("click", () => showDiff(v.version));
    td.appendChild(view);
    if (state.isAdmin && v.version !== data.current_version) {
      td.appendChild(document.createTextNode(" "));
      td.appendChild(confirmButton("Rollback", "danger rollback", async () => {
        const made = await api("POST", `/admin/config/rollback/${v.version}`);
        notify(`Rolled back to version ${v.version}: now version ${made.version}.`);
        await loadHistory();
      }));
    }
  });
  if (state.history.length) {
    const keep = state.history.some((v) => v.version === state.selected);
    showDiff(keep ? state.selected : state.history[0].version);
  }
}

// ------------------------------------------------------------------ sign in and refresh

async function refresh() {
  const jobs = [loadStats(), loadProviders(), loadLogs(), loadKeys()];
  const results = await Promise.allSettled(jobs);
  for (const r of results) {
    if (r.status === "rejected") {
      if (r.reason && r.reason.status === 401) { signOut("Your key is no longer valid."); return; }
      notify("Could not load part of the dashboard: " + r.reason.message);
    }
  }
  document.body.dataset.refreshed = String(Date.now());
}

async function signIn(key) {
  state.key = key;
  let summary;
  try {
    summary = await api("GET", "/admin/dashboard");
  } catch (e) {
    state.key = null;
    $("signin-error").textContent = e.status === 401 || e.status === 403 ? "That key was not accepted: " + e.message : e.message;
    return;
  }
  sessionStorage.setItem("ferro-admin-key", key);
  state.viewer = summary.viewer;
  state.isAdmin = summary.viewer.scopes.includes("admin");
  $("whoami").textContent = `${summary.viewer.name} · ${summary.viewer.scopes.join(", ")} · config v${summary.config_version ?? "–"}`;
  for (const el of document.querySelectorAll(".admin-only")) el.classList.toggle("hidden", !state.isAdmin);
  $("signin").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("signout").classList.remove("hidden");
  $("signin-error").textContent = "";
  await Promise.allSettled([refresh(), loadHistory()]);
  document.body.dataset.ready = "1";
  state.timer = setInterval(refresh, 5000);
}

function signOut(message) {
  sessionStorage.removeItem("ferro-admin-key");
  clearInterval(state.timer);
  state.key = null;
  $("app").classList.add("hidden");
  $("signout").classList.add("hidden");
  $("signin").classList.remove("hidden");
  $("whoami").textContent = "";
  $("signin-error").textContent = message || "";
  delete document.body.dataset.ready;
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("key-input").value.trim());
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("create-key").addEventListener("submit", async (event) => {
    event.preventDefault();
    const models = $("new-key-models").value.split(",").map((s) => s.trim()).filter(Boolean);
    const body = { name: $("new-key-name").value.trim(), scopes: [$("new-key-scope").value] };
    if (models.length) body.allowed_models = models;
    try {
      const created = await api("POST", "/admin/keys", body);
      notify(`Key ${created.name} created. Copy it now, it is shown once: ${created.key}`);
      $("new-key-name").value = "";
      $("new-key-models").value = "";
      await loadKeys();
    } catch (e) {
      notify("Create failed: " + e.message);
    }
  });
  const saved = sessionStorage.getItem("ferro-admin-key");
  if (saved) signIn(saved);
});
