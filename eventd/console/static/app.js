// eventd console: plain JavaScript, no library. Every value from the server is set with
// textContent (never parsed as markup), so an event's fields, a container's name, a rule name or a
// silence comment are always shown as text, whatever they hold.
"use strict";

const API = "/api/v1";
const MAX_ROWS = 500;
const state = { tab: "live", source: null, last: 0, token: sessionStorage.getItem("eventd-token") || "" };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function cell(row, text, cls) { const td = el("td", text, cls); row.appendChild(td); return td; }

function when(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const d = new Date(seconds * 1000);
  const today = new Date().toISOString().slice(0, 10);
  const text = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  return text.startsWith(today) ? text.slice(11) : text;
}

function ago(seconds) {
  if (!seconds) return "-";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function say(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = bad ? "bad" : "";
}

async function getJSON(path) {
  const answer = await fetch(API + path, { credentials: "omit", cache: "no-store" });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error || answer.statusText);
  return body;
}

async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const answer = await fetch(API + path, {
    method: "POST", headers, credentials: "omit", cache: "no-store", body: JSON.stringify(body || {}) });
  let data = {};
  try { data = await answer.json(); } catch (e) { data = {}; }
  if (!answer.ok) throw new Error(`refused (${answer.status}): ${data.error || answer.statusText}`);
  return data;
}

function button(text, onClick, cls) {
  const b = el("button", text, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

// -- tabs --------------------------------------------------------------------------------------
function show(tab) {
  state.tab = ["live", "rules", "dead", "silences", "cluster"].includes(tab) ? tab : "live";
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== state.tab;
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("on", link.dataset.tab === state.tab);
  refresh();
}

function refresh() {
  const load = { rules: loadRules, dead: loadDead, silences: loadSilences, cluster: loadCluster }[state.tab];
  if (load) load().catch((e) => say(e.message, true));
}

// -- token -----------------------------------------------------------------------------------------
function showMode(writable) {
  const mode = document.getElementById("mode");
  if (!writable) { mode.textContent = "read-only"; mode.className = "badge"; return; }
  mode.textContent = state.token ? "token set" : "no token";
  mode.className = state.token ? "badge ok" : "badge";
}

// -- live ------------------------------------------------------------------------------------------
function filters() {
  const form = document.getElementById("filters");
  const query = new URLSearchParams();
  for (const input of form.querySelectorAll("input")) if (input.value.trim()) query.set(input.name, input.value.trim());
  return query;
}

function eventRow(entry) {
  const row = el("tr");
  row.dataset.seq = entry.seq;
  row.dataset.uuid = entry.uuid;
  cell(row, when(entry.at));
  cell(row, [entry.type, entry.action, entry.state].filter(Boolean).join(" / "));
  cell(row, entry.namespace);
  cell(row, entry.name || entry.resource_uri, "object");
  cell(row, entry.rules.length ? entry.rules.join(", ") : "no rule", entry.rules.length ? "" : "muted");
  const actions = cell(row, "", "actions");
  for (const action of entry.actions) {
    const line = el("div");
    line.appendChild(el("span", `${action.rule}: ${action.kind} `));
    line.appendChild(el("span", action.status, "s-" + action.status));
    if (action.result) line.appendChild(el("span", ` → ${action.result.status}: ${action.result.detail}`, "s-" + action.result.status));
    else if (action.reason) line.appendChild(el("span", ` (${action.reason})`, "muted"));
    actions.appendChild(line);
  }
  const tools = cell(row, "");
  if (entry.rules.length) tools.appendChild(button("Silence 2 h", () => silenceFrom(entry), "silence-this"));
  // an accepted action's outcome (delivered, dead letter) comes later: looked up again
  if (entry.actions.some((a) => a.status === "accepted" && !a.result)) row.dataset.pending = "1";
  return row;
}

async function updatePending() {
  const pending = document.querySelectorAll("#events tr[data-pending]");
  if (!pending.length || state.tab !== "live") return;
  const oldest = Math.min(...Array.from(pending, (row) => Number(row.dataset.seq)));
  const query = filters();
  query.set("after", String(oldest - 1));
  query.set("limit", "500");
  const data = await getJSON("/events?" + query.toString());
  for (const entry of data.events) {
    const row = document.querySelector(`#events tr[data-seq="${entry.seq}"][data-pending]`);
    if (row) row.replaceWith(eventRow(entry));
  }
}

function addEvents(entries, newestFirst) {
  const body = document.querySelector("#events tbody");
  const rows = entries.map(eventRow);
  if (newestFirst) for (const row of rows) body.appendChild(row);
  else for (const row of rows) body.insertBefore(row, body.firstChild);
  while (body.children.length > MAX_ROWS) body.removeChild(body.lastChild);
}

async function startLive() {
  if (state.source) state.source.close();
  document.querySelector("#events tbody").replaceChildren();
  const query = filters();
  const badge = document.getElementById("live-state");
  try {
    const backlog = await getJSON("/events?" + query.toString() + "&limit=100");
    addEvents(backlog.events, true);
    query.set("after", backlog.last);
  } catch (e) { say(e.message, true); }
  const source = new EventSource(API + "/events/stream?" + query.toString());
  state.source = source;
  source.onopen = () => { badge.textContent = "live"; badge.className = "badge ok"; };
  source.onerror = () => { badge.textContent = "reconnecting"; badge.className = "badge bad"; };
  source.onmessage = (message) => { addEvents([JSON.parse(message.data)], false); };
}

function silenceFrom(entry) {
  const matchers = [`rule=${entry.rules[0]}`];
  if (entry.type) matchers.push(`type=${entry.type}`);
  if (entry.state) matchers.push(`state=${entry.state}`);
  document.getElementById("silence-matchers").value = matchers.join("\n");
  document.getElementById("silence-duration").value = "2h";
  document.getElementById("silence-comment").focus();
  location.hash = "#silences";
  say("check the matchers, say why, and create the silence");
}

// -- rules -----------------------------------------------------------------------------------------
async function loadRules() {
  const data = await getJSON("/rules");
  const reload = document.getElementById("reload");
  reload.replaceChildren(el("strong", data.reload.ok ? "last (re)load: ok" : "last reload failed: the previous rules stay in force",
                            data.reload.ok ? "s-accepted" : "s-failed"), el("span", " " + when(data.reload.at), "muted"));
  for (const problem of data.reload.problems) reload.appendChild(el("pre", problem));
  const body = document.querySelector("#rules-table tbody");
  body.replaceChildren();
  for (const rule of data.rules) {
    const row = el("tr");
    cell(row, rule.name);
    cell(row, rule.enabled ? rule.mode : "disabled", rule.mode === "shadow" ? "s-shadow" : "");
    cell(row, rule.kinds.join(", "));
    cell(row, rule.matches);
    cell(row, ago(rule.last_match));
    cell(row, `${rule.file}:${rule.line}`, "muted");
    body.appendChild(row);
  }
}

// -- dead letters ------------------------------------------------------------------------------
async function loadDead() {
  const data = await getJSON("/deadletters");
  document.getElementById("dead-total").textContent = `${data.total} dead letter(s)`;
  const body = document.querySelector("#dead-table tbody");
  body.replaceChildren();
  for (const letter of data.deadletters) {
    const row = el("tr");
    row.dataset.id = letter.id;
    cell(row, when(letter.at));
    cell(row, letter.rule);
    cell(row, letter.kind);
    cell(row, letter.target);
    cell(row, letter.attempts);
    cell(row, letter.reason);
    const tools = cell(row, "");
    tools.appendChild(button("Inspect", () => inspect(letter.id), "inspect"));
    tools.appendChild(button("Retry", () => act(`/deadletters/${encodeURIComponent(letter.id)}/retry`, "retried"), "retry"));
    tools.appendChild(button("Discard", () => act(`/deadletters/${encodeURIComponent(letter.id)}/discard`, "discarded"), "discard danger"));
    body.appendChild(row);
  }
}

async function inspect(id) {
  const detail = document.getElementById("dead-detail");
  try {
    detail.textContent = JSON.stringify(await getJSON(`/deadletters/${encodeURIComponent(id)}`), null, 2);
    detail.hidden = false;
  } catch (e) { say(e.message, true); }
}

async function act(path, done) {
  try {
    await post(path);
    say(done);
  } catch (e) { say(e.message, true); }
  refresh();
}

// -- silences --------------------------------------------------------------------------------------
async function loadSilences() {
  const data = await getJSON("/silences");
  const body = document.querySelector("#silences-table tbody");
  body.replaceChildren();
  for (const silence of data.silences) {
    const row = el("tr");
    row.dataset.id = silence.id;
    cell(row, silence.state, "s-" + silence.state);
    cell(row, silence.matchers.map((m) => m.name + m.op + m.value).join(", "));
    cell(row, when(silence.starts_at));
    cell(row, when(silence.ends_at));
    cell(row, silence.created_by);
    cell(row, silence.comment, "comment");
    const tools = cell(row, "");
    if (silence.state !== "expired") tools.appendChild(button("Expire", () => act(`/silences/${encodeURIComponent(silence.id)}/expire`, "expired"), "expire danger"));
    body.appendChild(row);
  }
}

async function createSilence(event) {
  event.preventDefault();
  const matchers = document.getElementById("silence-matchers").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const author = document.getElementById("silence-author");
  localStorage.setItem("eventd-author", author.value);
  try {
    const created = await post("/silences", { matchers, duration: document.getElementById("silence-duration").value.trim(),
                                              created_by: author.value, comment: document.getElementById("silence-comment").value });
    say(`silence ${created.id} created until ${when(created.ends_at)}`);
    document.getElementById("silence-comment").value = "";
  } catch (e) { say(e.message, true); }
  refresh();
}

// -- cluster ---------------------------------------------------------------------------------------
async function loadCluster() {
  const data = await getJSON("/cluster");
  document.getElementById("cluster-summary").textContent =
    `${data.shared ? "cluster " + data.cluster : "a single eventd"}: ${data.replicas.length} replica(s); spool ${data.spool.pending} pending, ${data.spool.deadletters} dead letter(s)`;
  const replicas = document.querySelector("#replicas-table tbody");
  replicas.replaceChildren();
  for (const replica of data.replicas) {
    const row = el("tr");
    cell(row, replica.id + (replica.this ? " (this one)" : ""));
    cell(row, replica.host);
    cell(row, replica.pid === null ? "?" : replica.pid);
    cell(row, replica.ready ? "yes" : "no", replica.ready ? "s-accepted" : "s-failed");
    cell(row, replica.namespaces.length ? replica.namespaces.join(", ") : "(standby)");
    replicas.appendChild(row);
  }
  const streams = document.querySelector("#streams-table tbody");
  streams.replaceChildren();
  for (const stream of data.streams) {
    const row = el("tr");
    cell(row, stream.namespace);
    cell(row, stream.holder || "(free)");
    cell(row, stream.ttl_left === null ? "-" : `${stream.ttl_left.toFixed(1)} s`);
    cell(row, ago(stream.last_event));
    streams.appendChild(row);
  }
}

// -- start -----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("token").value = state.token;
  document.getElementById("silence-author").value = localStorage.getItem("eventd-author") || "";
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = document.getElementById("token").value.trim();
    if (state.token) sessionStorage.setItem("eventd-token", state.token); else sessionStorage.removeItem("eventd-token");
    getJSON("/info").then((info) => showMode(info.writable)).catch(() => {});
    say(state.token ? "token set for this tab" : "token cleared");
  });
  document.getElementById("silence-form").addEventListener("submit", createSilence);
  let pending = null;
  document.getElementById("filters").addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(startLive, 300); });
  document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  try { showMode((await getJSON("/info")).writable); } catch (e) { say(e.message, true); }
  show(location.hash.slice(1) || "live");
  startLive();
  setInterval(() => { if (state.tab !== "live" && state.tab !== "silences") refresh(); }, 5000);
  setInterval(() => { updatePending().catch(() => {}); }, 1000);
});
