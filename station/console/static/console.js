// dvsan web console: every datum comes from the station's REST API (/api/v1) with the user's
// session cookie; writes carry the session's CSRF token. No framework, nothing fetched elsewhere.
// Values from the API reach the page as text only (textContent), never as HTML.
"use strict";

const dv = { me: null, meReady: null, csrf: null, events: 0 };
window.dvsan = dv;                     // for the browser tests: who signed in, events received

class ApiError extends Error {
  constructor(status, body) {
    super(errorText(status, body));
    this.status = status;
    this.body = body;
  }
}

const REASONS = { 401: "not signed in", 403: "not permitted", 404: "not found", 409: "refused",
                  422: "invalid input", 503: "unit unavailable" };

function errorText(status, body) {
  let detail = body && body.detail;
  if (Array.isArray(detail)) {         // a validation error: each issue and where it is
    detail = detail.map((i) => `${(i.loc || []).filter((l) => l !== "body").join(".")}: ${i.msg}`).join("; ");
  }
  const kind = body && body.error ? `, ${body.error}` : "";
  return `${REASONS[status] || "error"} (${status}${kind}): ${detail || "no detail"}`;
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && dv.csrf) headers["X-CSRF-Token"] = dv.csrf;
  const r = await fetch(path, { method, headers, credentials: "same-origin",
                                body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text.slice(0, 200) }; }
  if (r.status === 401 && document.body.dataset.page !== "signin") toSignIn();
  if (!r.ok) throw new ApiError(r.status, data);
  return { status: r.status, data, headers: r.headers };
}

function toSignIn() {
  location.assign(`/console/signin?next=${encodeURIComponent(location.pathname)}`);
}

// --- little DOM helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    // NOTE: through the CSSOM: the Content-Security-Policy refuses style attributes in markup
    else if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const $ = (sel) => document.querySelector(sel);
const may = (perm) => !!dv.me && dv.me.permissions.includes(perm);
const stateTag = (s) => el("span", { class: `state ${s}` }, s);
// whether the host is logged in to the volume's target, as the unit said in the last minute
const sessionTag = (n) => n === null || n === undefined
  ? el("span", { class: "state unknown", "data-sessions": "unknown" }, "session unknown")
  : el("span", { class: `state ${n > 0 ? "online" : "offline"}`, "data-sessions": String(n) },
    n > 0 ? "logged in" : "not logged in");

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${u[i]}`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function notice(text, kind) {
  const n = $("#notice");
  n.textContent = text;
  n.className = kind || "error";
  n.hidden = !text;
}

// A button that runs `fn`, disabled while it runs; a refusal is shown in the notice.
function actionButton(label, fn, extra) {
  const b = el("button", { type: "button", class: `action ${extra || ""}` }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await fn(); } catch (e) { notice(e.message); } finally { b.disabled = false; }
  });
  return b;
}

function formJson(form) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) out[k] = typeof v === "string" ? v.trim() : v;
  return out;
}

function onSubmit(form, fn) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try { await fn(formJson(form)); } catch (e) { notice(e.message); } finally { if (button) button.disabled = false; }
  });
}

function fill(tbody, rows) {
  const frag = document.createDocumentFragment();
  for (const r of rows) frag.append(r);
  tbody.replaceChildren(frag);
}

// Reload a page's data at most every 300 ms, however many events ask for it.
function debounced(fn) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn().catch((e) => notice(e.message)); }, 300); };
}

// --- tasks, live ------------------------------------------------------------------------------------

const FINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

function taskProgress(t) {
  // NOTE: a task that has not reported progress yet gets an indeterminate bar (no value), never a
  // frozen 0 %.
  if (t.state === "succeeded") return el("progress", { max: 1, value: 1 });
  if (FINAL.has(t.state)) return el("progress", { max: t.total_steps, value: t.step });
  if (t.step <= 0) return el("progress", { "aria-label": "waiting for progress" });
  return el("progress", { max: t.total_steps, value: t.step });
}

function mayCancel(t) {
  return t.state === "queued" && (may("assignments.write") || t.requested_by === `user:${dv.me.name}`);
}

function taskRow(t) {
  const pct = t.step > 0 && t.total_steps > 0 ? `${Math.floor((100 * t.step) / t.total_steps)} %` : "";
  return el("div", { class: "task", "data-task": t.id, "data-state": t.state, "data-kind": t.kind },
    el("span", { class: "mono" }, `#${t.id}`), el("span", null, t.kind),
    el("span", { class: "mono" }, t.object), taskProgress(t),
    el("span", null, stateTag(t.state), " ", pct),
    mayCancel(t) ? actionButton("Cancel", () => api("POST", `/api/v1/tasks/${t.id}/cancel`), "danger") : el("span"),
    el("span", { class: `msg${t.error ? " error" : ""}` },
      `${t.requested_by} · ${t.error ? `${t.error_kind || "error"}: ${t.error}` : t.message}`));
}

// The live list of tasks in `box`: queued and running ones at load, then every change from the
// event stream (and those that end stay, with their end). `onEnd` runs when one ends.
const RANK = { queued: 0, running: 1 };
const further = (a, b) => (RANK[a.state] ?? 2) - (RANK[b.state] ?? 2) || a.step - b.step;

// The live list of tasks in `box`: the event stream opens first, then the queued and running
// tasks are read (a view never replaces a further one: an event may be newer than the list);
// every change follows, and the tasks that end stay with their end. `onEnd` runs when one ends.
async function liveTasks(box, onEnd) {
  const rows = new Map();
  const put = (t) => {
    const old = rows.get(t.id);
    if (old && further(old.view, t) > 0) return;
    const row = taskRow(t);
    row.view = t;
    if (old) old.replaceWith(row); else box.prepend(row);
    rows.set(t.id, row);
  };
  const load = async () => {
    const [running, queued] = await Promise.all([api("GET", "/api/v1/tasks?state=running&limit=1000"),
                                                 api("GET", "/api/v1/tasks?state=queued&limit=1000"), dv.meReady]);
    for (const t of [...running.data, ...queued.data].sort((a, b) => a.id - b.id)) put(t);
    if (!rows.size) box.replaceChildren(el("p", { class: "muted empty" }, "No task is running."));
  };
  const live = $("#live");
  const es = new EventSource("/api/v1/events");
  let lost = false;
  es.addEventListener("open", () => {
    live.textContent = "· live";
    live.classList.add("on");
    if (lost) load().catch((e) => notice(e.message));     // back after a break: read the list again
  });
  es.addEventListener("error", () => { lost = true; live.textContent = "· reconnecting…"; live.classList.remove("on"); });
  es.addEventListener("task", (ev) => {
    dv.events++;
    const t = JSON.parse(ev.data);
    const empty = box.querySelector(".empty");
    if (empty) empty.remove();
    put(t);
    if (FINAL.has(t.state) && onEnd) onEnd(t);
  });
  es.addEventListener("lagged", () => load().catch((e) => notice(e.message)));
  await load();
  return es;
}

// --- pages --------------------------------------------------------------------------------------------

const pages = {};

pages.signin = async () => {
  const next = new URLSearchParams(location.search).get("next") || "";
  const target = /^\/console\/[a-z]+$/.test(next) ? next : "/console/overview";
  onSubmit($("#signin-form"), async (body) => {
    try {
      await api("POST", "/api/v1/session", body);
    } catch (e) {
      // a wrong password is 401 and needs no status code in its message
      if (e.status === 401) throw new Error(`Sign-in refused: ${e.body && e.body.detail}`);
      throw e;
    }
    location.assign(target);
  });
};

function capacity(vols) {
  const c = { free: 0, assigned: 0, wiping: 0, offline: 0 };
  for (const v of vols) {
    if (v.state !== "online") c.offline += v.size_bytes;
    else if (v.assigned_to) c.assigned += v.size_bytes;
    else if (v.wipe_state !== "clean") c.wiping += v.size_bytes;
    else c.free += v.size_bytes;
  }
  return c;
}

function capacityBar(label, c) {
  const total = c.free + c.assigned + c.wiping + c.offline;
  const seg = (k) => el("span", { class: k, style: { width: `${total ? (100 * c[k]) / total : 0}%` },
                                  title: `${k}: ${bytes(c[k])}` });
  return el("div", { class: "bar-row", "data-unit": label },
    el("strong", null, label),
    el("div", { class: "bar" }, seg("free"), seg("assigned"), seg("wiping"), seg("offline")),
    el("span", { class: "muted" }, `${bytes(c.free)} free of ${bytes(total)}`,
      c.wiping ? ` · ${bytes(c.wiping)} wiping` : "", c.offline ? ` · ${bytes(c.offline)} offline` : ""));
}

pages.overview = async () => {
  const load = async () => {
    const [units, vols] = await Promise.all([api("GET", "/api/v1/units"), api("GET", "/api/v1/volumes")]);
    const byUnit = new Map(units.data.map((u) => [u.name, []]));
    for (const v of vols.data) (byUnit.get(v.unit_name) || byUnit.set(v.unit_name, []).get(v.unit_name)).push(v);
    const rows = [capacityBar("all units", capacity(vols.data))];
    for (const [name, vs] of byUnit) rows.push(capacityBar(name, capacity(vs)));
    $("#capacity").replaceChildren(...rows);
    const states = {};
    for (const u of units.data) states[u.state] = (states[u.state] || 0) + 1;
    $("#unit-states").replaceChildren(...(units.data.length
      ? Object.entries(states).map(([s, n]) => el("span", { "data-state": s }, stateTag(s), ` ${n}`))
      : [el("span", { class: "muted" }, "No unit has announced itself yet.")]));
  };
  await load();
  await liveTasks($("#live-tasks"), debounced(load));
};

function volumeRow(v) {
  const wipe = v.wipe_state === "running" && v.wipe_total_bytes
    ? el("span", null, stateTag("wiping"), ` ${Math.floor((100 * v.wipe_done_bytes) / v.wipe_total_bytes)} %`)
    : stateTag(v.wipe_state);
  const canWipe = may("volumes.wipe") && !v.assigned_to && (v.wipe_state === "needed" || v.wipe_state === "failed");
  return el("tr", { "data-volume": v.id },
    el("td", { class: "num" }, v.id), el("td", { class: "mono" }, v.device), el("td", { class: "num" }, v.start_lba),
    el("td", { class: "num" }, v.end_lba), el("td", { class: "num" }, bytes(v.size_bytes)),
    el("td", null, stateTag(v.state), v.detail ? ` ${v.detail}` : ""), el("td", null, v.assigned_to || ""),
    el("td", { title: v.wipe_detail || "" }, wipe),
    el("td", { class: "num io", "data-io": `${v.unit_name}/${v.device}` }, v.assigned_to ? "…" : ""),
    el("td", null, canWipe ? actionButton("Wipe", async () => {
      const r = await api("POST", `/api/v1/volumes/${v.id}/wipe`);
      notice(`Wipe of volume ${v.id} started: task #${r.data.id}`, "ok");
    }) : ""));
}

pages.units = async () => {
  const units = { data: [] };
  const load = async () => {
    const [u, vols] = await Promise.all([api("GET", "/api/v1/units"), api("GET", "/api/v1/volumes"), dv.meReady]);
    units.data = u.data;
    const byUnit = new Map(units.data.map((u) => [u.name, []]));
    for (const v of vols.data) if (byUnit.has(v.unit_name)) byUnit.get(v.unit_name).push(v);
    const out = units.data.map((u) => {
      const body = el("tbody");
      fill(body, byUnit.get(u.name).map(volumeRow));
      return el("section", { class: "card unit", "data-unit": u.name },
        el("h2", null, u.name, stateTag(u.state), u.health !== "ok" ? stateTag(u.health) : ""),
        el("p", { class: "muted" }, `portal ${u.portal_address}:${u.portal_port} · agent ${u.agent_version} · `,
          `last seen ${when(u.last_seen)} · ${byUnit.get(u.name).length} volumes`,
          u.health_detail ? ` · ${u.health_detail}` : ""),
        el("table", null, el("thead", null, el("tr", null, ...["#", "Device", "Start LBA", "End LBA", "Size",
          "State", "Assigned to", "Wipe", "I/O (read · write)", ""].map((h) => el("th", null, h)))), body));
    });
    $("#units").replaceChildren(...(out.length ? out : [el("p", { class: "muted" }, "No unit has announced itself yet.")]));
    // the volumes' I/O rates after the page is on screen: they never hold up its first paint
    volumeRates(units.data).catch((e) => notice(e.message));
  };
  await load();
  every(10_000, () => volumeRates(units.data));
  await liveTasks(el("div"), debounced(load));
};

// Who may use a host's storage: its users and groups (each holds operator on /hosts/NAME).
function mayUse(h) {
  const out = [...h.users.map((u) => el("div", { "data-user": u }, `user ${u}`)),
               ...h.groups.map((g) => el("div", { "data-group": g }, `group ${g}`))];
  return out.length ? out : [el("span", { class: "muted" }, "admins and operators only")];
}

pages.hosts = async () => {
  const load = async () => {
    const [hosts, assigns] = await Promise.all([api("GET", "/api/v1/hosts"), api("GET", "/api/v1/assignments"), dv.meReady]);
    fill($("#hosts tbody"), hosts.data.map((h) => {
      const held = assigns.data.filter((a) => a.host === h.name);
      return el("tr", { "data-host": h.name },
        el("td", null, h.name), el("td", { class: "mono" }, h.initiator_iqns.join("\n")), el("td", null, when(h.created_at)),
        el("td", { class: "users" }, ...mayUse(h)),
        el("td", null, held.length ? held.map((a) => el("div", null, `${a.unit}/${a.device} (${bytes(a.size_bytes)}) `,
          stateTag(a.export_state), " ", sessionTag(a.sessions))) : el("span", { class: "muted" }, "none")),
        el("td", null, may("hosts.write") ? actionButton("Forget", async () => {
          await api("DELETE", `/api/v1/hosts/${encodeURIComponent(h.name)}`);
          notice(`Host ${h.name} forgotten; its tokens are revoked.`, "ok");
          await load();
        }, "danger") : ""));
    }));
  };
  onSubmit($("#enrol-form"), async (f) => {
    const words = (v) => (v || "").split(/[\s,]+/).filter(Boolean);
    const r = await api("POST", "/api/v1/hosts", { name: f.name, initiator_iqns: words(f.iqns), users: words(f.users),
                                                   groups: words(f.groups) });
    const out = $("#enrolled-token");
    out.replaceChildren(`Host ${r.data.name} enrolled. Its token, shown this once: `,
      el("code", null, r.data.token.token), " (put it on the host, `dvsan-host-agent --token-file`).");
    out.hidden = false;
    await load();
  });
  await load();
};

pages.assignments = async () => {
  const form = $("#assign-form");
  const iqns = new Map();
  const load = async () => {
    await dv.meReady;
    const calls = [api("GET", "/api/v1/assignments"), api("GET", "/api/v1/volumes?state=online")];
    if (may("hosts.read")) calls.push(api("GET", "/api/v1/hosts"));
    const [assigns, vols, hosts] = await Promise.all(calls);
    if (hosts) {
      for (const h of hosts.data) iqns.set(h.name, h.initiator_iqns);
      $("#host-names").replaceChildren(...hosts.data.map((h) => el("option", { value: h.name })));
    }
    const free = vols.data.filter((v) => !v.assigned_to && v.wipe_state === "clean");
    const pick = form.volume_id;
    const chosen = pick.value;
    const options = free.map((v) => el("option", { value: v.id }, `#${v.id} ${v.unit_name}/${v.device} ${bytes(v.size_bytes)}`));
    // a choice the user made stays made when the volume stops being free: the station says why
    if (chosen && !free.some((v) => String(v.id) === chosen)) options.unshift(el("option", { value: chosen }, `#${chosen} (no longer free)`));
    pick.replaceChildren(el("option", { value: "" }, "best fit for the size"), ...options);
    pick.value = chosen;
    fill($("#assignments tbody"), assigns.data.map((a) => el("tr", { "data-assignment": a.id, "data-volume": a.volume_id },
      el("td", { class: "num" }, a.id), el("td", null, a.host), el("td", { class: "mono" }, a.initiator_iqn),
      el("td", null, `#${a.volume_id} ${a.unit}/${a.device}`), el("td", { class: "num" }, `${a.start_lba}–${a.end_lba}`),
      el("td", { class: "num" }, bytes(a.size_bytes)), el("td", { class: "mono" }, `${a.target_iqn} lun ${a.lun}`),
      el("td", { title: a.export_detail || "" }, stateTag(a.export_state)), el("td", null, when(a.created_at)),
      el("td", null, may("assignments.write") ? actionButton("Release", async () => {
        const r = await api("DELETE", `/api/v1/assignments/${a.id}?wait=30`);
        notice(r.status === 202 ? `Release of assignment ${a.id} is under way: task #${r.data.id}`
          : `Assignment ${a.id} released; volume ${r.data.volume_id} is being wiped (task #${r.data.wipe_task}).`, "ok");
        await load();
      }, "danger") : ""))));
  };
  form.host.addEventListener("change", () => {
    const known = iqns.get(form.host.value);
    if (known && !form.initiator_iqn.value) form.initiator_iqn.value = known[0];
  });
  onSubmit(form, async (f) => {
    const body = { host: f.host, initiator_iqn: f.initiator_iqn, host_address: f.host_address };
    if (f.volume_id) body.volume_id = Number(f.volume_id);
    else if (f.size) body.size = f.size;
    else throw new Error("Choose a volume, or give the size the host needs.");
    const r = await api("POST", "/api/v1/assignments?wait=30", body);
    notice(r.status === 202 ? `Assignment to ${f.host} is under way: task #${r.data.id}`
      : `Volume #${r.data.volume_id} (${r.data.unit}/${r.data.device}) assigned to ${r.data.host}.`, "ok");
    await load();
  });
  await load();
  await liveTasks(el("div"), debounced(load));
};

pages.tasks = async () => {
  const filter = $("#task-filter");
  const load = async () => {
    const q = new URLSearchParams(Object.entries(formJson(filter)).filter(([, v]) => v));
    const r = await api("GET", `/api/v1/tasks?${q}`);
    fill($("#history tbody"), r.data.map((t) => el("tr", { "data-task": t.id },
      el("td", { class: "num" }, t.id), el("td", null, t.kind), el("td", { class: "mono" }, t.object),
      el("td", null, t.requested_by), el("td", null, stateTag(t.state)),
      el("td", { class: t.error ? "msg error" : "msg" }, t.error ? `${t.error_kind}: ${t.error}` : t.message),
      el("td", null, when(t.created_at)), el("td", null, when(t.finished_at)))));
  };
  onSubmit(filter, load);
  await load();
  await liveTasks($("#live-tasks"), debounced(load));
};

pages.audit = async () => {
  const filter = $("#audit-filter");
  const load = async () => {
    const q = new URLSearchParams(Object.entries(formJson(filter)).filter(([, v]) => v));
    const r = await api("GET", `/api/v1/audit?${q}`);
    fill($("#audit tbody"), r.data.map((a) => el("tr", null,
      el("td", null, when(a.at)), el("td", null, a.principal), el("td", null, a.source), el("td", { class: "mono" }, a.action),
      el("td", { class: "mono" }, a.object), el("td", null, stateTag(String(a.outcome))), el("td", { class: "mono" }, a.detail || ""))));
  };
  onSubmit(filter, load);
  await load();
};

pages.users = async () => {
  const load = async () => {
    const [users, grants] = await Promise.all([api("GET", "/api/v1/users"), api("GET", "/api/v1/grants"), dv.meReady]);
    fill($("#users tbody"), users.data.map((u) => el("tr", { "data-user": u.name },
      el("td", null, u.name), el("td", null, u.role), el("td", null, when(u.created_at)), el("td", null, when(u.locked_until)),
      el("td", null, u.name === dv.me.name ? "" : actionButton("Delete", async () => {
        await api("DELETE", `/api/v1/users/${encodeURIComponent(u.name)}`);
        notice(`User ${u.name} deleted.`, "ok");
        await load();
      }, "danger")))));
    fill($("#grants tbody"), grants.data.map((g) => el("tr", { "data-grant": g.id },
      el("td", { class: "num" }, g.id), el("td", null, g.user_name), el("td", null, g.role), el("td", { class: "mono" }, g.object),
      el("td", null, g.propagate ? "yes" : "no"), el("td", null, g.created_by), el("td", null, when(g.created_at)),
      el("td", null, actionButton("Revoke", async () => {
        await api("DELETE", `/api/v1/grants/${g.id}`);
        notice(`Grant ${g.id} revoked.`, "ok");
        await load();
      }, "danger")))));
  };
  onSubmit($("#user-form"), async (f) => {
    await api("POST", "/api/v1/users", f);
    notice(`User ${f.name} created (${f.role}).`, "ok");
    $("#user-form").reset();
    await load();
  });
  onSubmit($("#grant-form"), async (f) => {
    await api("POST", "/api/v1/grants", { user: f.user, role: f.role, object: f.object, propagate: f.propagate === "on" });
    notice(`${f.user} is ${f.role} on ${f.object}.`, "ok");
    await load();
  });
  await load();
};

// --- disks: a unit's partition table and a new layout (a `partition` task) ------------------------------

const SIZE_UNITS = { "": 1, k: 1 << 10, m: 1 << 20, g: 1 << 30, t: 2 ** 40 };

// "8MiB", "1 GiB", "512M", "1048576": bytes (binary units); anything else is refused here.
function parseSize(text) {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not a size (e.g. 8MiB, 1GiB)`);
  return Math.ceil(Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()]);
}

function diskView(unit, d, onApply) {
  const mine = may("disks.write") && !d.system;
  const free = (p) => !p.in_use.length;
  const rows = d.partitions.map((p) => el("tr", { "data-partition": p.number, "data-device": p.device },
    el("td", { class: "num" }, p.number), el("td", { class: "mono" }, p.device), el("td", { class: "num" }, p.start_lba),
    el("td", { class: "num" }, p.end_lba), el("td", { class: "num" }, bytes(p.size_bytes)), el("td", null, p.name),
    el("td", null, p.volume_id !== null ? `#${p.volume_id}` : ""), el("td", null, p.assigned_to || ""),
    el("td", { class: p.in_use.length ? "in-use" : "muted" }, p.in_use.length ? p.in_use.join("; ") : "nothing"),
    el("td", null, mine && free(p) ? el("label", { class: "check" },
      el("input", { type: "checkbox", name: "delete", value: p.number }), "delete") : "")));
  const form = mine ? el("form", { class: "row layout", "data-disk": `${unit}/${d.name}` },
    d.partitions.every(free) ? el("label", { class: "check" }, el("input", { type: "checkbox", name: "label", value: "gpt" }),
      d.label ? "new empty GPT label (deletes every partition)" : "initialise with GPT") : "",
    el("label", { class: "grow" }, "Partitions to add, by size (in order)",
      el("input", { name: "create", placeholder: "8MiB 8MiB 1GiB" })),
    el("button", { type: "submit", class: "action" }, "Apply layout")) : null;
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        const body = {};
        const deleted = [...document.querySelectorAll("#disk input[name=delete]:checked")].map((c) => Number(c.value));
        if (form.label && form.label.checked) {
          body.label = "gpt";
          deleted.splice(0, deleted.length, ...d.partitions.map((p) => p.number));
        }
        if (deleted.length) body.delete = deleted;
        const sizes = form.create.value.split(/[\s,]+/).filter(Boolean);
        if (sizes.length) body.create = sizes.map((s) => ({ size_bytes: parseSize(s) }));
        if (!Object.keys(body).length) throw new Error("Nothing to change: add partitions, tick some to delete, or a new label.");
        const r = await api("POST", `/api/v1/units/${encodeURIComponent(unit)}/disks/${encodeURIComponent(d.name)}/layout`, body);
        notice(`Partitioning of ${unit}/${d.name} is under way: task #${r.data.id}`, "ok");
        form.reset();
        for (const c of document.querySelectorAll("#disk input[name=delete]:checked")) c.checked = false;
        onApply(r.data);
      } catch (e) { notice(e.message); } finally { button.disabled = false; }
    });
  }
  const facts = [`${bytes(d.size_bytes)}`, `${d.sector_size}-byte sectors`,
                 d.label ? `${d.label} label` : "no partition table", d.id ? `id ${d.id}` : "no stable id"];
  return el("section", { class: "card disk", "data-unit": unit, "data-disk": d.name },
    el("h2", null, `${unit} / ${d.name}`, d.system ? stateTag("system") : ""),
    el("p", { class: "muted" }, facts.join(" · ")),
    d.system ? el("p", { class: "in-use" }, `The unit's system disk (${d.system_detail || "in use"}): never changed.`) : "",
    d.in_use.length ? el("p", { class: "in-use" }, `In the way: ${d.in_use.join("; ")}`) : "",
    el("table", { class: "partitions" }, el("thead", null, el("tr", null, ...["#", "Device", "Start LBA", "End LBA", "Size",
      "Name", "Volume", "Assigned to", "In the way", ""].map((h) => el("th", null, h)))),
    el("tbody", null, rows.length ? rows : el("tr", null, el("td", { colspan: 10, class: "muted empty" }, "No partition.")))),
    el("p", { class: "muted free-regions" }, d.free.length ? `Free: ${d.free.map((f) => `LBA ${f.start_lba}–${f.end_lba} (${bytes(f.size_bytes)})`).join(", ")}`
      : "No free region."),
    form || "");
}

pages.disks = async () => {
  const pick = $("#disk-pick").disk;
  const state = { disks: new Map(), mine: new Set(), ended: new Map() };
  // a partitioning this page started: its end in the page's notice, in the unit's own words
  const told = (t) => {
    if (t.state === "succeeded") notice(`Task #${t.id}: ${t.message}`, "ok");
    else notice(`Task #${t.id} ${t.state}: ${t.error_kind ? `${t.error_kind}: ` : ""}${t.error || t.message}`);
  };
  const started = (t) => {            // its end may have come before the station's answer did
    if (state.ended.has(t.id)) told(state.ended.get(t.id)); else state.mine.add(t.id);
  };
  const show = () => {
    const [unit, name] = (pick.value || "/").split("/");
    const d = (state.disks.get(unit) || []).find((x) => x.name === name);
    // a refresh (a task ended, the unit reported) keeps what the user was typing on the same disk
    const old = $("#disk form.layout");
    const kept = old && old.dataset.disk === `${unit}/${name}` ? {
      create: old.create.value, label: !!(old.label && old.label.checked),
      del: new Set([...document.querySelectorAll("#disk input[name=delete]:checked")].map((c) => c.value)) } : null;
    $("#disk").replaceChildren(d ? diskView(unit, d, started)
      : el("p", { class: "muted" }, "No unit has reported a disk yet."));
    const form = $("#disk form.layout");
    if (kept && form) {
      form.create.value = kept.create;
      if (form.label) form.label.checked = kept.label;
      for (const c of document.querySelectorAll("#disk input[name=delete]")) c.checked = kept.del.has(c.value);
    }
  };
  const load = async () => {
    const [units] = await Promise.all([api("GET", "/api/v1/units"), dv.meReady]);
    const got = await Promise.all(units.data.map((u) =>
      api("GET", `/api/v1/units/${encodeURIComponent(u.name)}/disks`).then((r) => r.data, () => [])));
    state.disks = new Map(units.data.map((u, i) => [u.name, got[i]]));
    const chosen = pick.value;
    pick.replaceChildren(...units.data.flatMap((u, i) => got[i].map((d) =>
      el("option", { value: `${u.name}/${d.name}` }, `${u.name} / ${d.name} (${bytes(d.size_bytes)}${d.system ? ", system" : ""})`))));
    if (chosen && [...pick.options].some((o) => o.value === chosen)) pick.value = chosen;
    show();
  };
  pick.addEventListener("change", show);
  await load();
  const reload = debounced(load);
  await liveTasks($("#live-tasks"), (t) => {
    if (state.mine.delete(t.id)) told(t);
    else if (t.kind === "partition") state.ended.set(t.id, t);
    reload();
  });
};

// --- monitoring: charts drawn as inline SVG (attributes set from here: no style attribute) ------------

const SVGNS = "http://www.w3.org/2000/svg";
const HOUR = 3_600_000;
const CHART = { w: 600, h: 120, top: 6 };

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

const rate = (n) => `${bytes(n)}/s`;
const percent = (n) => `${n.toFixed(1)} %`;

// Run `fn` every `ms` after the previous run ended (never two at once); a failure is shown.
function every(ms, fn) {
  const run = async () => {
    try { await fn(); } catch (e) { notice(e.message); }
    setTimeout(run, ms);
  };
  setTimeout(run, ms);
}

// The newest sample's value of `key` that is not null (a rate is null for the first sample).
function newest(samples, key) {
  for (let i = samples.length - 1; i >= 0; i--) if (samples[i][key] !== null && samples[i][key] !== undefined) return samples[i][key];
  return null;
}

// A line chart of the last hour: `lines` are [{ name, cls, values: [[t, v|null], ...] }], `fmt`
// writes a value, `max` is the top of the scale (else the largest value). Each line's newest value
// is in the legend (text, and the API's own number in data-value).
function lineChart(key, title, lines, fmt, max, now) {
  const top = max || Math.max(0, ...lines.flatMap((l) => l.values.map(([, v]) => v ?? 0))) || 1;
  const x = (t) => Math.min(CHART.w, Math.max(0, (CHART.w * (t - (now - HOUR))) / HOUR)).toFixed(1);
  const y = (v) => (CHART.h - ((CHART.h - CHART.top) * Math.min(v, top)) / top).toFixed(1);
  const plot = svg("svg", { viewBox: `0 0 ${CHART.w} ${CHART.h}`, preserveAspectRatio: "none", class: "plot",
                            role: "img", "aria-label": title },
    svg("line", { x1: 0, y1: CHART.h, x2: CHART.w, y2: CHART.h, class: "axis" }),
    svg("line", { x1: 0, y1: CHART.top, x2: CHART.w, y2: CHART.top, class: "grid" }));
  for (const l of lines) {
    let d = "";
    let pen = "M";
    for (const [t, v] of l.values) {
      if (v === null || v === undefined) { pen = "M"; continue; }      // a gap: the next point starts anew
      d += `${pen}${x(t)} ${y(v)} `;
      pen = "L";
    }
    plot.append(svg("path", { d: d.trim(), class: `line ${l.cls}`, "data-series": l.name }));
    // the newest point as a dot: a few minutes of samples are a sliver of an hour
    const tail = d.trim().split(/[ML]/).pop();
    if (tail) plot.append(svg("path", { d: `M${tail.trim()} l0 0`, class: `dot ${l.cls}` }));
  }
  const legend = lines.map((l) => {
    const last = [...l.values].reverse().find(([, v]) => v !== null && v !== undefined);
    return el("span", { class: "legend", "data-series": l.name, "data-value": last ? last[1] : "" },
      el("span", { class: `sw ${l.cls}` }), `${l.name} `, el("strong", null, last ? fmt(last[1]) : "—"));
  });
  return el("figure", { class: "chart", "data-chart": key },
    el("figcaption", null, el("span", null, title), ...legend),
    plot,
    el("div", { class: "scale muted" }, el("span", null, "−60 min"), el("span", null, `top ${fmt(top)}`), el("span", null, "now")));
}

function unitCharts(u, st, now) {
  const s = st.samples;
  const head = el("h2", null, u.name, stateTag(u.state));
  if (!s.length) {
    return el("section", { class: "card unit-stats", "data-unit": u.name }, head,
      el("p", { class: "muted empty" }, "No samples yet: this unit has sent no monitoring sample in the last hour."));
  }
  const series = (key) => s.map((p) => [p.t, p[key]]);
  const l = st.latest;
  const charts = [
    lineChart("cpu", "CPU busy", [{ name: "cpu", cls: "s1", values: series("cpu_percent") }], percent, 100, now),
    lineChart("memory", "Memory in use", [{ name: "used", cls: "s1", values: s.map((p) => [p.t, p.mem_total - p.mem_available]) }],
      bytes, newest(s, "mem_total"), now),
    lineChart("network", `Storage network${l ? ` (${l.nic})` : ""}`, [
      { name: "rx", cls: "s1", values: series("net_rx_bytes_per_s") },
      { name: "tx", cls: "s2", values: series("net_tx_bytes_per_s") }], rate, null, now),
    ...st.volumes.map((v) => {
      const c = lineChart("volume", `${v.device}${v.volume_id !== null ? ` (volume #${v.volume_id})` : ""} I/O`, [
        { name: "read", cls: "s1", values: v.samples.map((p) => [p.t, p.read_bytes_per_s]) },
        { name: "write", cls: "s2", values: v.samples.map((p) => [p.t, p.write_bytes_per_s]) }], rate, null, now);
      c.dataset.device = v.device;
      return c;
    })];
  return el("section", { class: "card unit-stats", "data-unit": u.name }, head,
    el("p", { class: "muted" }, `newest sample ${when(s[s.length - 1].t)}`,
      l ? ` · ${l.cpus} CPUs · ${bytes(l.mem_total)} memory` : "",
      ` · ${st.volumes.length} exported volumes reporting · one point per ${st.resolution_s} s`),
    el("div", { class: "charts" }, ...charts));
}

pages.monitoring = async () => {
  const load = async () => {
    const units = await api("GET", "/api/v1/units");
    const stats = await Promise.all(units.data.map((u) => api("GET", `/api/v1/units/${encodeURIComponent(u.name)}/stats?minutes=60`)));
    const now = Date.now();
    $("#monitoring").replaceChildren(...(units.data.length ? units.data.map((u, i) => unitCharts(u, stats[i].data, now))
      : [el("p", { class: "muted" }, "No unit has announced itself yet.")]));
    $("#refreshed").textContent = `refreshed ${new Date(now).toLocaleTimeString()}`;
    dv.refreshes = (dv.refreshes || 0) + 1;
  };
  await load();
  every(10_000, load);
};

// The units page's I/O column: each exported volume's newest read and write rates.
async function volumeRates(units) {
  const got = await Promise.all(units.filter((u) => u.state === "online").map((u) =>
    api("GET", `/api/v1/units/${encodeURIComponent(u.name)}/stats?minutes=2`).then((r) => r.data)));
  const io = new Map();
  for (const st of got) {
    for (const v of st.volumes) io.set(`${st.unit}/${v.device}`, [newest(v.samples, "read_bytes_per_s"), newest(v.samples, "write_bytes_per_s")]);
  }
  for (const td of document.querySelectorAll("td[data-io]")) {
    const r = io.get(td.dataset.io);
    td.textContent = r && r[0] !== null ? `${rate(r[0])} · ${rate(r[1])}` : (td.textContent ? "—" : "");
  }
}

// --- start ------------------------------------------------------------------------------------------

async function start() {
  const page = document.body.dataset.page;
  if (page === "signin" || page === "missing") {
    if (pages[page]) await pages[page]();
    document.body.dataset.ready = "yes";
    return;
  }
  // who is calling, read while the page reads its data (each page waits for it before it offers
  // an action); a session that is gone sends the user to sign in
  dv.meReady = api("GET", "/api/v1/me").then((r) => {
    dv.me = r.data;
    dv.csrf = dv.me.csrf_token;
    $("#who").textContent = `${dv.me.name} (${dv.me.role})`;
    for (const e of document.querySelectorAll("[data-needs]")) e.hidden = !may(e.dataset.needs);
  });
  $("#signout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/v1/session"); } catch (e) { /* signed out already */ }
    location.assign("/console/signin");
  });
  await Promise.all([dv.meReady, pages[page]()]);
  performance.mark("dvsan-ready");    // bench/console_paint.py: the page's data is in the DOM
  document.body.dataset.ready = "yes";
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((e) => { notice(e.message); document.body.dataset.ready = "error"; });
});
