/* The fleet dashboard: hash-routed pages over the controller's REST API, polled every 2 s. */
"use strict";

const API = "../api/v1";
const POLL_MS = 2000;
const LEVELS = ["critical", "saver", "balanced", "performance"];
const PRECISIONS = ["int8", "fp16", "fp32"];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed"];

/* --- small helpers ------------------------------------------------------------------------ */

const token = (() => {
  const m = location.hash.match(/token=([^&]+)/) || location.search.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("lepton-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
  return sessionStorage.getItem("lepton-token");
})();

async function fetchApi(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(`${API}${path}`, { headers, cache: "no-store" });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res;
}

async function api(path) {
  return (await fetchApi(path)).json();
}

/* One page of a cursor-paged list: its rows and the cursor of the next page (or null). */
async function apiPage(path) {
  const res = await fetchApi(path);
  return { rows: await res.json(), next: res.headers.get("X-Next-Cursor") };
}

function queryString(params) {
  return Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const fmt = {
  num: (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d)),
  pct: v => (v === null || v === undefined ? "n/a" : `${(v * 100).toFixed(1)} %`),
  ago: ts => {
    if (!ts) return "–";
    const s = Math.max(0, Date.now() / 1000 - ts);
    return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  },
  time: ts => (ts ? new Date(ts * 1000).toTimeString().slice(0, 8) : "–"),
};

function precisionOf(variant) {
  if (!variant) return null;
  return PRECISIONS.find(p => variant.includes(p)) || null;
}

function fill(root, ...nodes) {
  root.replaceChildren(...nodes.flat().filter(n => n !== null && n !== undefined && n !== false));
}

function badge(text, cls) {
  return h("span", { class: `badge ${cls || ""}` }, text ?? "–");
}

function batteryCell(b) {
  if (!b) return h("span", { class: "muted" }, "mains");
  const pct = b.percent;
  const cls = pct < 10 ? "crit" : pct < 20 ? "low" : pct < 50 ? "mid" : "ok";
  return h("span", { class: "battery", title: b.charging ? "charging" : "discharging" },
    h("span", { class: `bar ${cls}` }, h("span", { style: `width:${Math.max(2, pct)}%` })),
    ` ${pct.toFixed(0)} %${b.charging ? " ⚡" : ""}`);
}

/* --- the device model, from the API's device objects --------------------------------------- */

/* `d` is the API's DeviceOut (see /openapi.json): `last_telemetry` is a shared Telemetry. */
function deviceView(d) {
  const tel = d.last_telemetry;
  const inf = (tel && tel.inference) || {};
  const hw = d.hardware;
  return {
    id: d.id,
    online: d.online,
    arch: d.arch || "",
    cpu: hw ? hw.cpu_model : "",
    gpu: hw && hw.gpu ? hw.gpu.name : null,
    tags: d.tags,
    level: d.power_level,
    variant: d.active_variant,
    precision: precisionOf(d.active_variant),
    bundle: d.active_bundle,
    fps: inf.fps,
    p99: inf.latency_p99_ms,
    accuracy: inf.accuracy,
    battery: tel ? tel.battery : null,
    lastSeen: d.last_seen,
  };
}

/* --- pages --------------------------------------------------------------------------------- */

const filters = { q: "", online: "", arch: "", level: "", variant: "", tag: "" };
/* The fleet table shows one page of PAGE devices; `cursors[i]` opens page i (null: the first). */
const PAGE = 100;
const paging = { cursors: [null], page: 0 };

function option(value, label, current) {
  return h("option", { value, selected: value === current }, label);
}

/* The filters go to the server: a change starts again from the first page. */
function setFilter(key, value) {
  filters[key] = value;
  paging.cursors = [null];
  paging.page = 0;
  refresh();
}

function serverFilters() {
  return {
    q: filters.q, online: filters.online === "" ? "" : filters.online === "online",
    arch: filters.arch, power_level: filters.level, variant: filters.variant, tag: filters.tag,
  };
}

/* Options from the unfiltered fleet summary: every value any device has. */
function filterBar(summary) {
  const keys = counts => Object.keys(counts || {}).filter(k => k !== "none").sort();
  const select = (key, label, values) =>
    h("label", {}, `${label} `,
      h("select", { "data-filter": key, onchange: e => setFilter(key, e.target.value) },
        option("", "all", filters[key]), values.map(v => option(v, v, filters[key]))));
  let typing = null;
  return h("div", { class: "filters" },
    h("input", {
      type: "search", placeholder: "search device…", value: filters.q, "data-filter": "q",
      oninput: e => { clearTimeout(typing); typing = setTimeout(() => setFilter("q", e.target.value), 250); },
    }),
    select("online", "status", ["online", "offline"]),
    select("arch", "arch", keys(summary.arch)),
    select("level", "power", LEVELS),
    select("variant", "variant", keys(summary.variant)),
    select("tag", "tag", keys(summary.tag)));
}

/* Horizontal bars of a summary breakdown (power levels, variants): counts, not device lists. */
function mixBars(title, counts, order) {
  const entries = (order || Object.keys(counts).sort()).filter(k => counts[k]).map(k => [k, counts[k]]);
  const total = entries.reduce((a, [, n]) => a + n, 0) || 1;
  return h("div", { class: "mix", "data-mix": title },
    h("h3", {}, title),
    entries.map(([k, n]) => h("div", { class: "mix-row" },
      h("span", { class: "mix-label" }, k),
      h("span", { class: "bar" }, h("span", { style: `width:${Math.max(1, (100 * n) / total)}%` })),
      h("span", { class: "num" }, String(n)))));
}

function levelBadge(level) {
  return badge(level || "–", `level-${level || "none"}`);
}

async function fleetPage(root) {
  const filtered = queryString(serverFilters());
  const cursor = paging.cursors[paging.page];
  const [summary, shownSummary, page, rollouts, events] = await Promise.all([
    api("/devices/summary"),
    filtered ? api(`/devices/summary?${filtered}`) : null,
    apiPage(`/devices?${queryString({ ...serverFilters(), limit: PAGE, cursor })}`),
    api("/rollouts").catch(() => []),
    api("/events?kind=precision_switch&limit=500").catch(() => []),
  ]);
  const devices = page.rows.map(deviceView);
  const matching = (shownSummary || summary).total;
  const switches = events;
  const active = rollouts.find(r => ["running", "paused"].includes(r.state)) || rollouts[0];
  const first = paging.page * PAGE;
  const go = step => {
    if (step > 0) paging.cursors[paging.page + 1] = page.next;
    paging.page += step;
    refresh();
  };

  const tableBox = h("div", { class: "card" },
    filterBar(summary),
    h("table", { class: "fleet", id: "fleet-table" },
      h("thead", {}, h("tr", {}, ["device", "status", "hardware", "power", "variant", "fps", "p99 ms",
        "battery", "accuracy (last s)", "last seen"].map(t => h("th", {}, t)))),
      h("tbody", {}, devices.map(d => h("tr", { "data-device": d.id, class: d.online ? "" : "offline" },
        h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id)),
        h("td", {}, h("span", { class: `dot ${d.online ? "on" : "off"}` }), d.online ? "online" : "offline"),
        h("td", { class: "hw" }, `${d.arch}`, d.gpu ? h("span", { class: "muted" }, ` · ${d.gpu}`) : null),
        h("td", {}, levelBadge(d.level)),
        h("td", { class: "variant", "data-precision": d.precision || "" }, d.variant || "–"),
        h("td", { class: "num" }, fmt.num(d.fps)),
        h("td", { class: "num" }, fmt.num(d.p99, 2)),
        h("td", {}, batteryCell(d.battery)),
        h("td", { class: "num" }, fmt.pct(d.accuracy)),
        h("td", { class: "muted" }, fmt.ago(d.lastSeen)))))),
    h("div", { class: "pager" },
      h("button", { id: "page-prev", disabled: paging.page === 0, onclick: () => go(-1) }, "‹ prev"),
      h("span", { class: "muted", id: "page-info" },
        devices.length ? ` ${first + 1}–${first + devices.length} of ${matching} devices ` : ` 0 of ${matching} devices `),
      h("button", { id: "page-next", disabled: !page.next, onclick: () => go(1) }, "next ›")));

  fill(root,
    h("section", { class: "stats" },
      stat("devices", summary.total),
      stat("online", `${summary.online.online} / ${summary.total}`),
      stat("precision switches", switches.length),
      active ? stat("rollout", `${rolloutPercent(active)} %`, active.state, `#/rollout/${active.id}`) : stat("rollout", "none")),
    h("section", { class: "card mixes", id: "fleet-mix" },
      mixBars("power level", summary.power_level, [...LEVELS].reverse().concat(["none"])),
      mixBars("variant", summary.variant)),
    tableBox,
    h("section", { class: "card", id: "switches" }, h("h2", {}, "Recent precision switches"), eventList(switches.slice(0, 12), true)));
}

function stat(label, value, sub, href) {
  const inner = [h("div", { class: "value" }, String(value)), h("div", { class: "label" }, label, sub ? h("span", { class: "muted" }, ` · ${sub}`) : null)];
  return href ? h("a", { class: "stat", href }, inner) : h("div", { class: "stat" }, inner);
}

/* A policy event for a power-level change that kept the variant (a policy set by command has no levels). */
function isLevelChange(e) {
  return e.kind === "policy" && !!(e.data && e.data.to_level);
}

function eventList(events, withDevice) {
  if (!events.length) return h("p", { class: "muted", id: "no-events" }, "none yet");
  return h("ul", { class: "events" }, events.map(e => h("li", {
    class: `event kind-${e.kind}`,
    "data-kind": e.kind,
  },
    h("span", { class: "muted" }, fmt.time(e.ts)), " ",
    withDevice ? h("a", { href: `#/device/${encodeURIComponent(e.device_id)}` }, e.device_id) : null,
    withDevice ? " " : null,
    isLevelChange(e) ? badge("power level", "kind-level")
      : badge(e.kind.replace("_", " "), `kind-${e.kind}`), " ",
    e.kind === "precision_switch" && e.data ? h("b", {}, `${e.data.from_variant || "–"} → ${e.data.to_variant}`) : null,
    e.data && e.data.to_level ? h("span", { class: "muted" }, ` ${e.data.from_level || "–"} → ${e.data.to_level} `) : " ",
    h("span", {}, e.reason))));
}

async function devicePage(root, id) {
  const d = await api(`/devices/${encodeURIComponent(id)}`);
  const v = deviceView(d);
  const history = d.history;
  const events = d.events;
  let ladder = null;
  if (v.bundle) ladder = await api(`/devices/${encodeURIComponent(id)}/ladder?bundle_id=${encodeURIComponent(v.bundle)}`).catch(() => null);
  const results = await api(`/devices/${encodeURIComponent(id)}/results`).catch(() => null);

  const series = (f) => history.map(s => [s.ts, f(s)]);
  const charts = [
    ["Battery %", [{ name: "battery", color: COLORS[2], points: series(s => s.battery ? s.battery.percent : null) }], { yMax: 100, unit: "%" }],
    ["Power level", [{ name: "level", color: COLORS[3], points: series(s => s.power_level ? LEVELS.indexOf(s.power_level) : null) }], { categories: LEVELS }],
    ["Active precision", [{ name: "precision", color: COLORS[4], points: series(s => { const p = precisionOf(s.active_variant); return p ? PRECISIONS.indexOf(p) : null; }) }], { categories: PRECISIONS }],
    ["Latency (ms)", [
      { name: "p50", color: COLORS[0], points: series(s => s.inference ? s.inference.latency_p50_ms : null) },
      { name: "p99", color: COLORS[1], points: series(s => s.inference ? s.inference.latency_p99_ms : null) }], {}],
    ["Frames per second", [{ name: "fps", color: COLORS[0], points: series(s => s.inference ? s.inference.fps : null) }], {}],
  ];
  const hw = d.hardware || { features: [], runtimes: {} };
  fill(root, 
    h("p", {}, h("a", { href: "#/" }, "← fleet")),
    h("section", { class: "card device-head" },
      h("h1", { id: "device-id" }, v.id, " ", h("span", { class: `dot ${v.online ? "on" : "off"}` })),
      h("dl", { class: "facts" },
        fact("status", v.online ? "online" : "offline"),
        fact("hardware", `${hw.arch || "?"} · ${hw.cpu_model || "?"} · ${hw.cores || "?"} cores · ${hw.memory_mb || "?"} MB`),
        fact("features", hw.features.join(", ") || "–"),
        fact("runtimes", Object.keys(hw.runtimes).join(", ") || "–"),
        fact("gpu", hw.gpu ? `${hw.gpu.vendor} ${hw.gpu.name}` : "none"),
        fact("tags", v.tags.join(", ") || "–"),
        fact("power level", levelBadge(v.level)),
        fact("variant", h("span", { id: "device-variant" }, v.variant || "–")),
        fact("bundle", v.bundle || "–"),
        fact("battery", batteryCell(v.battery)),
        fact("fps / p99", `${fmt.num(v.fps)} fps · ${fmt.num(v.p99, 2)} ms`),
        fact("live accuracy", h("span", { title: "frames-weighted over the telemetry history shown below" },
          `${fmt.pct(historyAccuracy(history))} over ${historyFrames(history)} frames`)))),
    results && results.latest ? resultCard(results.latest, results.snapshot) : null,
    ladder ? ladderCard(ladder) : null,
    h("section", { class: "charts" }, charts.map(([title, s, o]) => {
      const box = h("div", { class: "chart-box" });
      Charts.render(box, s, o);
      return h("div", { class: "card" }, h("h3", {}, title), box);
    })),
    h("section", { class: "card" }, h("h2", {}, "Events"), eventList(events, false)));
}

/* The newest result from …/result: what the model sees now; beside it the newest frame
   sent as a thumbnail, with its boxes drawn by the device. */
function answerLines(r) {
  return (r.detections || []).map(d => `${d.label} ${fmt.num(d.score * 100, 0)} % at ${d.box.map(v => Math.round(v)).join(",")}`)
    .concat((r.top || []).map(t => `${t.label} ${fmt.num(t.score, 3)}`))
    .concat((r.areas || []).map(a => `${a.label} ${fmt.num(a.fraction * 100, 1)} %`))
    .concat((r.values || []).slice(0, 8).map(v => fmt.num(v, 4)))
    .concat((r.tensors || []).map(t => `${t.name} [${t.shape.join("×")}] ${fmt.num(t.min, 3)}…${fmt.num(t.max, 3)}`));
}

function resultCard(r, shot) {
  const rows = answerLines(r);
  return h("section", { class: "card", id: "latest-result" },
    h("h2", {}, "Latest result"),
    h("p", { class: "muted" }, `${r.task} · ${r.source} · frame ${r.frame} · ${r.variant || "–"} · ${fmt.num(r.latency_ms, 2)} ms`),
    h("ul", { id: "result-items" }, (rows.length ? rows : ["nothing found"]).map(t => h("li", {}, t))),
    shot ? h("figure", {},
      h("img", { id: "result-thumbnail", alt: "a recent frame with its detections", src: `data:image/jpeg;base64,${shot.thumbnail_jpeg}` }),
      h("figcaption", { class: "muted" }, `frame ${shot.frame}: ${answerLines(shot).join(" · ") || "nothing found"}`)) : null);
}

function historyFrames(history) {
  return history.reduce((n, s) => n + ((s.inference || {}).frames || 0), 0);
}

/* Accuracy over the whole history, each interval weighted by its frames. */
function historyAccuracy(history) {
  let right = 0, frames = 0;
  for (const s of history) {
    const inf = s.inference || {};
    if (inf.accuracy !== undefined && inf.accuracy !== null && inf.frames) {
      right += inf.accuracy * inf.frames;
      frames += inf.frames;
    }
  }
  return frames ? right / frames : null;
}

function fact(k, v) {
  return [h("dt", {}, k), h("dd", {}, v)];
}

/* `view` is the API's LadderOut; `view.ladder` the shared Ladder. */
function ladderCard(view) {
  const { steps, rejected } = view.ladder;
  return h("section", { class: "card" }, h("h2", {}, "Ladder"),
    h("table", { class: "ladder" }, h("tbody", {},
      h("tr", {}, ["level", "variant", "model", "precision", "M MACs", "why"].map(c => h("th", {}, c))),
      steps.map(s => {
        const v = view.variants[s.variant_id] || {};
        return h("tr", {}, h("td", {}, levelBadge(s.level)), h("td", { class: "variant" }, s.variant_id),
          h("td", { class: "architecture" }, v.architecture || "–"), h("td", { "data-precision": v.precision || "" }, v.precision || "–"),
          h("td", {}, v.macs != null ? (v.macs / 1e6).toFixed(1) : "–"), h("td", { class: "muted" }, s.why));
      }))),
    Object.keys(rejected).length ? h("details", {}, h("summary", {}, `${Object.keys(rejected).length} variants not chosen`),
      h("ul", {}, Object.entries(rejected).map(([k, why]) => h("li", {}, h("code", {}, k), ` — ${why}`)))) : null);
}

const DONE_STATES = ["healthy", "skipped"];

/* Share of the rollout's devices that are healthy (or skipped), in percent. */
function rolloutPercent(r) {
  const devs = r.devices || [];
  if (!devs.length) return r.state === "completed" ? 100 : 0;
  return Math.round(100 * devs.filter(d => DONE_STATES.includes(d.state)).length / devs.length);
}

async function rolloutsPage(root) {
  const rollouts = await api("/rollouts");
  fill(root, h("section", { class: "card" }, h("h1", {}, "Rollouts"),
    rollouts.length ? h("table", { class: "fleet" },
      h("thead", {}, h("tr", {}, ["rollout", "bundle", "status", "progress", "created"].map(t => h("th", {}, t)))),
      h("tbody", {}, rollouts.map(r => h("tr", {},
        h("td", {}, h("a", { href: `#/rollout/${r.id}` }, r.id)),
        h("td", {}, r.bundle_id), h("td", {}, badge(r.state, `status-${r.state}`)),
        h("td", {}, progressBar(rolloutPercent(r))), h("td", { class: "muted" }, fmt.time(r.created_at))))))
      : h("p", { class: "muted" }, "no rollouts yet")));
}

function progressBar(pct, cls) {
  return h("span", { class: `progress ${cls || ""}` }, h("span", { style: `width:${pct}%` }), h("em", {}, `${pct} %`));
}

function targetText(t) {
  if (!t || t.all) return "all devices";
  const parts = [];
  if ((t.tags || []).length) parts.push(`tags ${t.tags.join(", ")}`);
  if ((t.device_ids || []).length) parts.push(`devices ${t.device_ids.join(", ")}`);
  return parts.join(" and ");
}

async function rolloutPage(root, id) {
  const r = await api(`/rollouts/${encodeURIComponent(id)}`);
  const devs = r.devices || [];
  fill(root,
    h("p", {}, h("a", { href: "#/rollouts" }, "← rollouts")),
    h("section", { class: "card" },
      h("h1", {}, `Rollout ${r.id} `, badge(r.state, `status-${r.state}`)),
      h("p", {}, `bundle ${r.bundle_id} · target ${targetText(r.target)} · wave ${Math.min(r.current_wave + 1, r.waves.length)} of ${r.waves.length} · overall `,
        progressBar(rolloutPercent(r))),
      r.reason ? h("p", { class: "muted" }, r.reason) : null),
    h("section", { class: "waves", id: "waves" }, (r.waves || []).map(w => {
      const members = devs.filter(d => d.wave === w.index);
      const ok = members.filter(d => DONE_STATES.includes(d.state)).length;
      const pct = members.length ? Math.round(100 * ok / members.length) : 0;
      const status = w.index < r.current_wave || (pct === 100 && members.length) ? "done"
        : w.index === r.current_wave ? (r.state === "running" ? "running" : r.state) : "waiting";
      return h("div", { class: "card wave", "data-wave": w.index },
        h("h3", {}, `Wave ${w.index + 1} · ${w.devices} device(s), ${w.cumulative_devices} in all `, badge(status, `status-${status}`)),
        progressBar(pct),
        h("ul", { class: "wave-devices" }, members.map(d => h("li", {},
          h("a", { href: `#/device/${encodeURIComponent(d.device_id)}` }, d.device_id), " ",
          badge(d.state, `status-${d.state}`),
          d.ladder ? h("span", { class: "muted" }, ` ${[...new Set(Object.values(d.ladder))].join(" / ")}`) : null,
          d.detail ? h("div", { class: "muted small" }, d.detail) : null))));
    })));
}

async function eventsPage(root) {
  const events = await api("/events?limit=200");
  fill(root, h("section", { class: "card" }, h("h1", {}, "Fleet events"), eventList(events, true)));
}

/* --- router and polling -------------------------------------------------------------------- */

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/").map(decodeURIComponent);
  switch (parts[0]) {
    case "device": return { nav: "fleet", render: root => devicePage(root, parts[1]) };
    case "rollouts": return { nav: "rollouts", render: rolloutsPage };
    case "rollout": return { nav: "rollouts", render: root => rolloutPage(root, parts[1]) };
    case "events": return { nav: "events", render: eventsPage };
    default: return { nav: "fleet", render: fleetPage };
  }
}

let timer = null;
let busy = false;

async function refresh() {
  if (busy) return;
  busy = true;
  const live = document.getElementById("live");
  const r = route();
  document.querySelectorAll("[data-nav]").forEach(a => a.classList.toggle("active", a.dataset.nav === r.nav));
  const root = document.getElementById("view");
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.filter : null;
  try {
    const scratch = h("div");
    await r.render(scratch);
    fill(root, ...scratch.childNodes);
    if (focused) { const f = root.querySelector(`[data-filter="${focused}"]`); if (f) f.focus(); }
    live.textContent = `live · ${fmt.time(Date.now() / 1000)}`;
    live.className = "live ok";
  } catch (err) {
    live.textContent = `offline: ${err.message}`;
    live.className = "live err";
  } finally {
    busy = false;
  }
}

window.addEventListener("hashchange", () => { refresh(); });
refresh();
timer = setInterval(refresh, POLL_MS);
