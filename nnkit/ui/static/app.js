// nnkit's web dashboard: the experiments, experiment, compare, sweeps and sweep pages, drawn from the JSON API.
// Every text that comes from a run (names, tags, notes, config, events) enters the page through
// textContent or an attribute, never as HTML. Charts are plain SVG drawn here.
"use strict";
(() => {
  const TOKEN = document.querySelector('meta[name="nnkit-token"]').content;
  const BODY = document.body;
  const MAIN = document.getElementById("main");
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6fb2", "#d9622b", "#2e9a48", "#b53a8c", "#7a5cc4", "#8c6d1f", "#168a8a", "#c0392b"];
  const STATUSES = ["queued", "running", "paused", "finished", "failed", "stopped", "interrupted"];

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the page's CSP
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value; else node.setAttribute(key, String(value));
    }
    return node;
  }
  async function api(path, options) {
    const response = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (response.ok || (body && body.answer)) return body;  // a run's refusal is an answer too
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential((digits || 4) - 1);
    return String(Number(v.toPrecision(digits || 4)));
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  function clock(t) {
    if (!t) return "–";
    const d = new Date(t * 1000);
    return d.toLocaleString(undefined, {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  }
  function badge(state) { return el("span", {class: `badge state-${String(state).replace(/[^a-z]/g, "")}`, text: state}); }
  function section(title, ...children) { return el("section", {class: "card"}, el("h2", {text: title}), ...children); }
  function replaceIfChanged(node, items, make) {
    const key = JSON.stringify(items);
    if (node.dataset.key === key) return false;  // unchanged: keep the nodes (focus, selection, clicks)
    node.dataset.key = key;
    node.replaceChildren(...items.map(make));
    return true;
  }
  function liveState(state) { return state === "started" || state === "resumed" ? "running" : state; }
  // A queue's run, in the words of its phase: requeued (back in the queue after an attempt),
  // claimed (a worker took it, training has not started yet); else the store's status.
  function phase(r) {
    const j = r.job;
    if (j && r.status === "queued" && j.attempts > 0) return "requeued";
    if (j && r.status === "running" && !r.started) return "claimed";
    return r.status;
  }
  // A sweep point as its overrides: "updater.lr=0.05 run.steps=20".
  function pointText(point) {
    const items = Object.entries(point || {});
    return items.length ? items.map(([k, v]) => `${k}=${typeof v === "number" ? num(v) : JSON.stringify(v)}`).join(" ") : "–";
  }
  function pointValue(v) { return typeof v === "number" ? num(v) : v === undefined ? "–" : JSON.stringify(v); }
  // The i-th line's colour: the palette, then golden-angle hues (a sweep overlays up to 20 runs).
  function lineColor(i) { return i < COLORS.length ? COLORS[i] : `hsl(${Math.round((i * 137.508) % 360)}, 60%, 40%)`; }
  function sweepLink(r) {
    if (!r.sweep_id) return null;
    return el("div", {class: "sub sweep-of"}, "sweep ", el("a", {href: "/sweep/" + encodeURIComponent(r.sweep_id), text: r.sweep_name || r.sweep_id}),
      r.point ? ` at ${pointText(r.point)}` : "");
  }
  function worker(r) { return r.host || r.pid ? `${r.host || "?"}/${r.pid ?? "–"}` : null; }
  function attempts(j) {
    if (!j) return "";
    const of = `of ${1 + j.retries}`;
    return j.attempts ? `attempt ${j.attempts} ${of}` : `no attempt yet (${j.retries} ${j.retries === 1 ? "retry" : "retries"})`;
  }
  // The queue and worker cell of a run: its place in the queue or the worker running it, and its attempts.
  function queueFacts(r) {
    const j = r.job;
    let main = "";
    if (r.status === "queued") main = j && j.position ? `#${j.position} in queue` : "queued";
    else if (r.status === "running" || r.status === "paused") main = worker(r) || "";
    else if (j) main = r.host || "";
    return [main, attempts(j)];
  }

  // ------------------------------------------------------------------ the chart
  function niceStep(range, count) {
    const raw = range / Math.max(count, 1);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / power;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * power;
  }
  function tickText(v) {  // short: 0.25, 1500, 3.5e-4, 2e+6
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 1e5 || a < 1e-2 ? Number(v.toPrecision(3)).toExponential() : String(Number(v.toPrecision(4)));
  }
  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }

  // One set of axes; lines = [{label, color, x: [], y: [], width, opacity}].
  class Chart {
    constructor(title, ylabel, logy) {
      this.title = title; this.ylabel = ylabel || ""; this.logy = !!logy;
      this.node = el("div", {class: "chart"});
      this.svg = svg("svg", {class: "plot", role: "img", "aria-label": title});
      this.legend = el("div", {class: "legend"});
      this.node.append(this.svg, this.legend);
      this.lines = [];
      this.pending = false;
    }
    set(lines) { this.lines = lines; this.schedule(); }
    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
    draw() {
      const W = Math.max(this.node.clientWidth || 520, 280), H = 240;
      const m = {l: 64, r: 14, t: 10, b: 30};
      const s = this.svg;
      s.replaceChildren();
      s.setAttribute("viewBox", `0 0 ${W} ${H}`);
      s.setAttribute("width", W); s.setAttribute("height", H);
      const ok = (v) => v !== null && Number.isFinite(v) && (!this.logy || v > 0);
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, count = 0;
      for (const line of this.lines) {
        for (let i = 0; i < line.x.length; i++) {
          const y = line.y[i];
          if (!ok(y)) continue;
          count++;
          const yv = this.logy ? Math.log10(y) : y;
          if (line.x[i] < x0) x0 = line.x[i];
          if (line.x[i] > x1) x1 = line.x[i];
          if (yv < y0) y0 = yv;
          if (yv > y1) y1 = yv;
        }
      }
      this.node.dataset.points = String(count);
      this.legend.replaceChildren(...this.lines.filter((l) => l.label).map((l) =>
        el("span", {class: "key"}, el("i", {style: {background: l.color}}), l.label)));
      if (!count) {
        s.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty", text: "no points yet"}));
        return;
      }
      if (x1 === x0) { x0 -= 1; x1 += 1; }
      if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
      const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
      const X = (x) => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
      const Y = (y) => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
      const grid = svg("g", {class: "grid"});
      const yt = this.logy ? ticks(Math.floor(y0), Math.ceil(y1), 5).filter((t) => Number.isInteger(t) && t >= y0 && t <= y1) : ticks(y0, y1, 5);
      for (const t of (yt.length ? yt : ticks(y0, y1, 5))) {
        grid.append(svg("line", {x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t)}));
        grid.append(svg("text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", text: tickText(this.logy ? Math.pow(10, t) : t)}));
      }
      for (const t of ticks(x0, x1, Math.max(2, Math.floor((W - m.l) / 90)))) {
        if (t < x0 || t > x1) continue;
        grid.append(svg("line", {x1: X(t), x2: X(t), y1: m.t, y2: H - m.b, class: "v"}));
        grid.append(svg("text", {x: X(t), y: H - m.b + 16, "text-anchor": "middle", text: Number.isInteger(t) ? String(t) : tickText(t)}));
      }
      s.append(grid);
      s.append(svg("text", {x: W - m.r, y: H - 2, "text-anchor": "end", class: "axis-label", text: "step"}));
      s.append(svg("text", {x: 12, y: m.t + (H - m.t - m.b) / 2, "text-anchor": "middle", class: "axis-label",
        transform: `rotate(-90 12 ${m.t + (H - m.t - m.b) / 2})`, text: this.ylabel + (this.logy ? " (log)" : "")}));
      s.append(svg("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, class: "frame"}));
      for (const line of this.lines) {
        let d = "", pen = false, dots = [];
        for (let i = 0; i < line.x.length; i++) {
          const y = line.y[i];
          if (!ok(y)) { pen = false; continue; }
          const px = X(line.x[i]).toFixed(1), py = Y(this.logy ? Math.log10(y) : y).toFixed(1);
          d += (pen ? "L" : "M") + px + " " + py;
          if (!pen && (i + 1 >= line.x.length || !ok(line.y[i + 1]))) dots.push([px, py]);
          pen = true;
        }
        if (d) s.append(svg("path", {d, fill: "none", stroke: line.color, "stroke-width": line.width || 1.6,
          "stroke-opacity": line.opacity || 1, "stroke-linejoin": "round"}));
        for (const [cx, cy] of dots) s.append(svg("circle", {cx, cy, r: 2.5, fill: line.color, "fill-opacity": line.opacity || 1}));
      }
    }
  }

  // ------------------------------------------------------------------ experiments page
  function experimentsPage() {
    const params = new URLSearchParams(location.search);
    const state = {owner: params.get("owner") || "", status: params.get("status") || "", tag: params.get("tag") || "",
      where: params.get("where") || "", sort: params.get("sort") || "created", desc: params.get("desc") !== "0",
      offset: Number(params.get("offset") || 0), limit: 50};
    const selected = new Set();
    const input = (name, placeholder, width) => el("input", {name, placeholder, value: state[name], size: width,
      on: {change: (e) => { state[name] = e.target.value.trim(); state.offset = 0; refresh(); }}});
    const status = el("select", {name: "status", on: {change: (e) => { state.status = e.target.value; state.offset = 0; refresh(); }}},
      el("option", {value: "", text: "any status"}), STATUSES.map((s) => el("option", {value: s, text: s, selected: s === state.status})));
    const sort = el("select", {name: "sort", on: {change: (e) => { state.sort = e.target.value; refresh(); }}},
      [["created", "newest"], ["name", "name"], ["status", "status"], ["duration", "duration"], ["test_error", "best test error"]]
        .map(([v, t]) => el("option", {value: v, text: `sort: ${t}`, selected: v === state.sort})));
    const desc = el("label", {class: "check"}, el("input", {type: "checkbox", name: "desc", checked: state.desc,
      on: {change: (e) => { state.desc = e.target.checked; refresh(); }}}), "descending");
    const message = el("div", {class: "message", id: "list-message"});
    const compare = el("button", {id: "compare", disabled: true, on: {click: () => {
      location.href = "/compare?runs=" + encodeURIComponent([...selected].join(","));
    }}}, "Compare selected");
    const tbody = el("tbody");
    const pager = el("div", {class: "pager"});
    const table = el("table", {class: "runs", id: "runs"},
      el("thead", {}, el("tr", {}, ["", "name", "status", "progress", "queue / worker", "best test error", "duration", "owner", "tags", "created"]
        .map((h) => el("th", {text: h})))), tbody);
    MAIN.append(el("div", {class: "toolbar"}, input("owner", "owner (everyone)", 14), status, input("tag", "tag", 10),
      input("where", "where, e.g. updater.lr<0.01 and test_error<0.05", 40), sort, desc, compare), message, table, pager);

    let busy = false;
    async function refresh() {
      if (busy) return;
      busy = true;
      const q = new URLSearchParams();
      for (const key of ["owner", "status", "tag", "where", "sort"]) if (state[key]) q.set(key, state[key]);
      if (!state.desc) q.set("desc", "0");
      if (state.offset) q.set("offset", state.offset);
      history.replaceState(null, "", q.toString() ? "?" + q : location.pathname);
      q.set("limit", state.limit);
      try {
        const data = await api("/api/runs?" + q);
        message.textContent = "";
        message.className = "message";
        if (!replaceIfChanged(tbody, data.runs, runRow)) return;
        if (!data.runs.length) tbody.append(el("tr", {}, el("td", {colspan: 10, class: "empty", text: "no runs recorded" + (data.total ? " on this page" : " that match")})));
        const last = Math.min(data.offset + data.runs.length, data.total);
        pager.replaceChildren(
          el("button", {disabled: state.offset === 0, on: {click: () => { state.offset = Math.max(0, state.offset - state.limit); refresh(); }}}, "‹ newer"),
          el("span", {text: ` ${data.total ? data.offset + 1 : 0}–${last} of ${data.total} runs `}),
          el("button", {disabled: last >= data.total, on: {click: () => { state.offset += state.limit; refresh(); }}}, "older ›"));
      } catch (e) {
        message.textContent = e.message;
        message.className = "message error";
      } finally { busy = false; }
    }
    function runRow(r) {
      const box = el("input", {type: "checkbox", checked: selected.has(r.id), "aria-label": "select " + r.name, on: {change: (e) => {
        if (e.target.checked) selected.add(r.id); else selected.delete(r.id);
        compare.disabled = selected.size < 1;
      }}});
      const pct = r.progress === null ? null : Math.round(r.progress * 100);
      return el("tr", {"data-run": r.id},
        el("td", {}, box),
        el("td", {class: "name"}, el("a", {href: "/run/" + encodeURIComponent(r.id), text: r.name || r.id}),
          el("div", {class: "sub", text: r.id}), sweepLink(r)),
        el("td", {class: "status", title: r.status}, badge(phase(r))),
        el("td", {class: "progress"}, el("div", {class: "bar"}, el("i", {style: {width: `${pct === null ? 0 : pct}%`}})),
          el("span", {class: "sub", text: `${r.step}${r.total_steps ? " / " + r.total_steps : ""}${pct === null ? "" : ` (${pct}%)`}`})),
        el("td", {class: "queue", "data-position": r.job && r.job.position ? r.job.position : null},
          el("div", {text: queueFacts(r)[0]}), el("div", {class: "sub", text: queueFacts(r)[1]})),
        el("td", {class: "num", text: num(r.best_test_error)}),
        el("td", {class: "num", text: duration(r.duration)}),
        el("td", {text: r.owner || ""}),
        el("td", {}, (r.tags || []).map((t) => el("span", {class: "tag", text: t}))),
        el("td", {class: "sub", text: clock(r.created)}));
    }
    refresh();
    setInterval(refresh, 3000);
  }

  // ------------------------------------------------------------------ experiment page
  function experimentPage() {
    const run = BODY.dataset.run;
    const windows = JSON.parse(BODY.dataset.windows || "{}");
    const hidden = new Set();
    const logy = {};
    let figures = [];     // the server's figures, points appended live
    let charts = {};      // title -> Chart
    let logCount = 0;
    let source = null;

    const head = el("section", {class: "card head"});
    const steer = el("section", {class: "card steer"}, el("h2", {text: "Steer"}));
    const figs = el("div", {class: "figures", id: "figures"});
    const progress = el("div", {class: "message", id: "progress"});
    const settings = el("details", {class: "card settings"}, el("summary", {text: "Channels and smoothing"}));
    const logBox = el("ol", {class: "log", id: "log"});
    const config = el("pre", {class: "config", id: "config"});
    const metrics = el("table", {class: "kv", id: "metrics"});
    const eventsCard = section("Events", logBox), configCard = section("Configuration", config, metrics);
    const lower = el("div", {class: "two"}, eventsCard, configCard);
    MAIN.append(el("div", {class: "top"}, head, steer), progress, figs, settings, lower);

    // Steering: each control sends exactly what `nnkit ctl RUN_DIR COMMAND key=value...` sends.
    const answers = el("ol", {class: "answers", id: "answers"});
    async function send(command, args) {
      const item = el("li", {class: "pending", "data-command": command, text: `${command}: sent, waiting for the answer…`});
      answers.prepend(item);
      try {
        const body = await api(`/api/runs/${encodeURIComponent(run)}/command`, {method: "POST",
          headers: {"content-type": "application/json", "x-nnkit-token": TOKEN}, body: JSON.stringify({command, args})});
        item.className = body.ok ? "ok" : "error";
        item.textContent = body.text || body.error;
        if (body.cancelled) poll().catch(showError);
        for (const line of body.lines || []) item.append(el("div", {class: "sub", text: line}));
      } catch (e) {
        item.className = "error";
        item.textContent = `${command}: ${e.message}`;
      }
    }
    const button = (command, label, args) => el("button", {"data-command": command, on: {click: () => send(command, args || {})}}, label);
    const field = (name, placeholder) => el("input", {name, placeholder, size: 9, autocomplete: "off",
      "aria-label": name, title: name});
    const setFields = ["lr", "momentum", "weight_decay", "batch_size"].map((n) => field(n, n));
    const untilBatches = field("batches", "batches"), untilEpochs = field("epochs", "epochs");
    const collect = (inputs) => Object.fromEntries(inputs.filter((i) => i.value.trim() !== "").map((i) => [i.name, i.value.trim()]));
    // A queued run takes no command but stop, which cancels it (as `nnkit ctl RUN stop` does).
    const queueText = el("p", {id: "queue-text"});
    const queueBox = el("div", {class: "queued", id: "queue-box", hidden: true}, queueText,
      el("div", {class: "row"}, el("button", {id: "cancel", on: {click: () => send("stop", {})}}, "Cancel (dequeue)")));
    const controls = el("div", {id: "controls"});
    steer.append(queueBox, controls, answers);
    controls.append(
      el("div", {class: "row"}, button("pause", "Pause"), button("resume", "Resume"), button("stop", "Stop"),
        button("checkpoint", "Checkpoint"), button("tell_state", "Tell state")),
      el("form", {class: "row", id: "set-form", on: {submit: (e) => { e.preventDefault(); send("set", collect(setFields)); }}},
        ...setFields, el("button", {type: "submit", id: "set-button"}, "Set")),
      el("form", {class: "row", id: "until-form", on: {submit: (e) => { e.preventDefault(); send("run_until", collect([untilBatches, untilEpochs])); }}},
        untilBatches, untilEpochs, el("button", {type: "submit", id: "until-button"}, "Run until")));

    // The head is built once and then updated in place (it changes with every live message).
    let headParts = null;
    function showHead(detail, live) {
      const p0 = headParts;
      const s = live || {};
      const state = live && detail.status !== "queued" ? liveState(s.state) : phase(detail);
      const queue = detail.job ? [["worker", worker(detail) || "–"], ["attempts", attempts(detail.job)]] : [];
      const waiting = detail.status === "queued" || (detail.job && !detail.run_dir);
      const facts = waiting ? [["run", detail.id], ["owner", detail.owner], ...queue, ["created", clock(detail.created)]] : [["run", detail.id], ["owner", detail.owner], ...queue, ["step", s.step ?? detail.step], ["epoch", String(s.epoch ?? "–").replace(/^epoch /, "")],
        ["loss", num(s.loss)], ["lr", num(s.lr)], ["test error", num(s.test_error)], ["images/s", num(s.images_per_s, 3)],
        ["duration", duration(detail.started && !detail.ended && (state === "running" || state === "paused")
          ? Date.now() / 1000 - detail.started : detail.duration)], ["last event", s.last_time ? clock(s.last_time) : "–"]];
      if (p0 && p0.waiting !== waiting) { p0.facts.replaceChildren(); p0.waiting = waiting; }  // another set of facts
      const notes = [detail.notes ? ["notes", detail.notes] : null,
        s.last_error ? ["message error", "last error: " + s.last_error] : null,
        detail.files_error && !(detail.job && !detail.run_dir) ? ["message error", detail.files_error] : null,
        detail.job && !detail.run_dir && detail.status === "stopped" ? ["sub", "cancelled before any worker took it"] : null,
      ].filter(Boolean);
      if (!headParts) {
        headParts = {status: el("span", {id: "status"}), facts: el("div", {class: "facts"}), tags: el("div"), notes: el("div")};
        head.replaceChildren(el("h1", {}, el("span", {class: "run-name", id: "run-name", text: detail.name || detail.id}), " ",
          headParts.status), headParts.facts, sweepLink(detail) || "", headParts.tags, headParts.notes);
      }
      const p = headParts;
      p.waiting = waiting;
      if (p.status.dataset.state !== state) { p.status.dataset.state = state; p.status.replaceChildren(badge(state)); }
      facts.forEach(([label, value], i) => {
        let node = p.facts.children[i];
        if (!node) { node = el("span", {class: "fact"}, el("b", {text: label}), " ", el("span")); p.facts.append(node); }
        node.lastChild.textContent = String(value ?? "–");
      });
      replaceIfChanged(p.tags, detail.tags || [], (t) => el("span", {class: "tag", text: t}));
      replaceIfChanged(p.notes, notes, ([cls, text]) => el("p", {class: cls, text}));
    }
    let detail = null;
    async function loadDetail() {
      detail = await api(`/api/runs/${encodeURIComponent(run)}`);
      showHead(detail, detail.live);
      config.textContent = detail.config_text || "(no configuration recorded)";
      const rows = Object.entries(detail.best || {}).map(([k, v]) => el("tr", {}, el("th", {text: "best " + k}), el("td", {text: num(v)})));
      metrics.replaceChildren(...rows);
    }

    function windowQuery() {
      const q = new URLSearchParams();
      for (const [name, w] of Object.entries(windows)) q.set("window." + name, w);
      return q;
    }
    async function loadSeries() {
      if (source) { source.close(); source = null; }
      const data = await api(`/api/runs/${encodeURIComponent(run)}/series?` + windowQuery());
      figures = data.figures;
      buildFigures();
      if (data.status.loaded < 1) {  // a long run's file is read over several requests
        progress.textContent = `reading events.jsonl: ${Math.floor(data.status.loaded * 100)}% of ${(data.status.size / 2 ** 20).toFixed(0)} MB`;
        setTimeout(() => loadSeries().catch(showError), 50);
        return;
      }
      progress.textContent = "";
      const log = await api(`/api/runs/${encodeURIComponent(run)}/log`);
      logBox.replaceChildren(...log.entries.map(logItem));
      logCount = log.count;
      logBox.scrollTop = logBox.scrollHeight;
      openStream();
    }
    function buildFigures() {
      charts = {};
      figs.replaceChildren();
      for (const f of figures) {
        const chart = new Chart(f.title, f.ylabel, logy[f.title] ?? f.logy);
        charts[f.title] = chart;
        const toggle = el("label", {class: "check"}, el("input", {type: "checkbox", checked: chart.logy, on: {change: (e) => {
          logy[f.title] = e.target.checked; chart.logy = e.target.checked; chart.schedule();
        }}}), "log");
        figs.append(el("div", {class: "card figure", "data-figure": f.title}, el("div", {class: "fig-head"}, el("h3", {text: f.title}), toggle), chart.node));
        drawFigure(f);
      }
      buildSettings();
    }
    function drawFigure(f) {
      const lines = [];
      f.channels.forEach((c, i) => {
        if (hidden.has(c.name) || !c.count) return;
        const color = COLORS[i % COLORS.length];
        const smoothed = c.window > 1;
        if (smoothed) lines.push({x: c.steps, y: c.values, color, width: 1, opacity: 0.25});
        lines.push({x: smoothed ? c.avg_steps : c.steps, y: smoothed ? c.averages : c.values, color,
          label: `${c.name}${smoothed ? ` (mean of ${c.window})` : ""}`, width: 1.8});
      });
      charts[f.title].set(lines);
    }
    function buildSettings() {
      const rows = [];
      for (const f of figures) for (const c of f.channels) {
        rows.push(el("tr", {},
          el("td", {}, el("label", {class: "check"}, el("input", {type: "checkbox", checked: !hidden.has(c.name), on: {change: (e) => {
            if (e.target.checked) hidden.delete(c.name); else hidden.add(c.name);
            drawFigure(f);
          }}}), c.name)),
          el("td", {class: "sub", text: f.title}),
          el("td", {}, el("input", {type: "number", min: 1, max: 100000, value: c.window, name: "window." + c.name, size: 6,
            on: {change: (e) => { const w = Math.max(1, Math.floor(Number(e.target.value) || 1)); windows[c.name] = w; loadSeries().catch(showError); }}})),
          el("td", {class: "sub", text: `${c.count} points`})));
      }
      settings.replaceChildren(settings.firstChild, el("table", {class: "kv"},
        el("thead", {}, el("tr", {}, ["channel", "figure", "smoothing window (points)", ""].map((h) => el("th", {text: h})))),
        el("tbody", {}, rows)));
    }
    function logItem(e) {
      return el("li", {class: "log-" + e.type}, e.text);
    }
    function openStream() {
      const q = windowQuery();
      for (const f of figures) for (const c of f.channels) q.set("count." + c.name, c.count);
      q.set("log", logCount);
      source = new EventSource(`/api/runs/${encodeURIComponent(run)}/stream?` + q);
      source.onmessage = (message) => {
        const data = JSON.parse(message.data);
        let refetch = false;
        for (const f of figures) {
          let changed = false;
          for (const c of f.channels) {
            const p = data.points[c.name];
            if (!p) continue;
            c.steps.push(...p.steps); c.values.push(...p.values);
            c.avg_steps.push(...p.steps); c.averages.push(...p.averages);
            c.count = p.count; changed = true;
            if (c.steps.length > 4000) refetch = true;  // downsample again on the server
          }
          if (changed) drawFigure(f);
        }
        if (data.log.length) {
          const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
          logBox.append(...data.log.map(logItem));
          while (logBox.children.length > 2000) logBox.firstChild.remove();
          if (atEnd) logBox.scrollTop = logBox.scrollHeight;
          logCount += data.log.length;
        }
        if (detail) showHead(detail, data.status);
        if (refetch) loadSeries().catch(showError);
      };
      source.onerror = () => {
        // The server went away or restarted: start again from a fresh copy in a moment.
        source.close(); source = null;
        setTimeout(() => loadSeries().catch(showError), 2000);
      };
    }
    function showError(e) { head.append(el("p", {class: "message error", text: e.message})); }
    // A queued run waits for a worker: its page looks again until one takes it, then goes live.
    let live = false;
    function showQueue() {
      const queued = detail.status === "queued";
      const waiting = queued || (!!detail.job && !detail.run_dir);  // queued, or cancelled before it ran
      settings.hidden = eventsCard.hidden = waiting;
      lower.classList.toggle("one", waiting);
      configCard.firstChild.textContent = waiting ? "Job" : "Configuration";
      queueBox.hidden = !queued;
      controls.hidden = queued || (!!detail.job && !detail.run_dir);
      if (queued) {
        const j = detail.job || {};
        queueText.textContent = `${j.position ? `#${j.position} in the queue` : "Queued"}: no worker has taken it yet` +
          `${j.attempts ? ` (requeued after attempt ${j.attempts} of ${1 + j.retries})` : ""}. Its job is below; ` +
          "cancelling takes it out of the queue (status stopped), as nnkit ctl RUN stop does.";
      }
    }
    function goLive() {
      showQueue();
      if (!live && !detail.files_error && detail.status !== "queued") { live = true; return loadSeries(); }
    }
    async function poll() {
      detail = await api(`/api/runs/${encodeURIComponent(run)}`);
      if (!live) showHead(detail, detail.live);
      const text = detail.config_text || "(no configuration recorded)";
      if (config.textContent !== text) config.textContent = text;  // keeps a selection
      await goLive();
    }
    loadDetail().then(goLive).catch(showError);
    setInterval(() => { if (detail) poll().catch(() => {}); }, 2000);
  }

  // ------------------------------------------------------------------ compare page
  function comparePage() {
    const runs = (BODY.dataset.runs || "").split(",").filter(Boolean);
    const channels = JSON.parse(BODY.dataset.channels || "[]");
    let channel = new URLSearchParams(location.search).get("channel") || "train cost";
    const message = el("div", {class: "message"});
    const select = el("select", {name: "channel", on: {change: (e) => { channel = e.target.value; load(); }}},
      channels.map((c) => el("option", {value: c, text: c, selected: c === channel})));
    const chart = new Chart("compare", channel, false);
    const logToggle = el("label", {class: "check"}, el("input", {type: "checkbox", on: {change: (e) => { chart.logy = e.target.checked; chart.schedule(); }}}), "log");
    const diff = el("table", {class: "kv diff", id: "differences"});
    const best = el("table", {class: "kv", id: "best"});
    MAIN.append(el("div", {class: "toolbar"}, select, logToggle), message,
      el("section", {class: "card figure"}, chart.node),
      el("div", {class: "two"}, section("Configuration differences", diff), section("Best metrics", best)));
    async function load() {
      if (!runs.length) { message.textContent = "Pick runs on the experiments page, then Compare selected."; return; }
      try {
        const data = await api(`/api/compare?runs=${encodeURIComponent(runs.join(","))}&channel=${encodeURIComponent(channel)}`);
        message.textContent = "";
        chart.ylabel = channel;
        chart.set(data.runs.filter((r) => r.series).map((r, i) => {
          const c = r.series, smooth = c.window > 1;
          return {x: smooth ? c.avg_steps : c.steps, y: smooth ? c.averages : c.values, color: COLORS[i % COLORS.length],
            label: r.name || r.id, width: 1.8};
        }));
        const names = data.runs.map((r) => el("th", {}, el("a", {href: "/run/" + encodeURIComponent(r.id), text: r.name || r.id})));
        diff.replaceChildren(el("thead", {}, el("tr", {}, el("th", {text: "config key"}), names)),
          el("tbody", {}, data.differences.length ? data.differences.map((d) => el("tr", {}, el("th", {text: d.key}),
            data.runs.map((r) => el("td", {text: d.values[r.id] ?? "–"})))) : el("tr", {}, el("td", {colspan: names.length + 1, class: "empty", text: "the configurations are the same"}))));
        const keys = [...new Set(data.runs.flatMap((r) => Object.keys(r.best || {})))].sort();
        best.replaceChildren(el("thead", {}, el("tr", {}, el("th", {text: "metric"}), data.runs.map((r) => el("th", {text: r.name || r.id})))),
          el("tbody", {}, keys.map((k) => el("tr", {}, el("th", {text: k}), data.runs.map((r) => el("td", {class: "num", text: num((r.best || {})[k])}))))));
      } catch (e) {
        message.textContent = e.message; message.className = "message error";
      }
    }
    load();
    setInterval(load, 5000);
  }


  // ------------------------------------------------------------------ sweeps page
  function sweepsPage() {
    const message = el("div", {class: "message", id: "sweeps-message"});
    const tbody = el("tbody");
    MAIN.append(message, el("table", {class: "runs", id: "sweeps"},
      el("thead", {}, el("tr", {}, ["name", "kind", "status", "runs", "finished", "failed", "best test error", "created"]
        .map((h) => el("th", {text: h})))), tbody));
    function sweepRow(w) {
      return el("tr", {"data-sweep": w.id},
        el("td", {class: "name"}, el("a", {href: "/sweep/" + encodeURIComponent(w.id), text: w.name || w.id}), el("div", {class: "sub", text: w.id})),
        el("td", {text: w.kind}),
        el("td", {}, badge(w.status)),
        el("td", {class: "num", text: `${w.runs}${w.live ? ` (${w.live} queued or running)` : ""}`}),
        el("td", {class: "num", text: String(w.finished)}),
        el("td", {class: "num", text: String(w.failed)}),
        el("td", {class: "num"}, w.best_run ? el("a", {href: "/run/" + encodeURIComponent(w.best_run), text: num(w.best_test_error)}) : "–"),
        el("td", {class: "sub", text: clock(w.created)}));
    }
    async function refresh() {
      try {
        const data = await api("/api/sweeps?limit=100");
        message.textContent = data.total > data.sweeps.length ? `the newest ${data.sweeps.length} of ${data.total} sweeps` : "";
        message.className = "message";
        if (replaceIfChanged(tbody, data.sweeps, sweepRow) && !data.sweeps.length) {
          tbody.append(el("tr", {}, el("td", {colspan: 8, class: "empty", text: "no sweeps recorded"})));
        }
      } catch (e) { message.textContent = e.message; message.className = "message error"; }
    }
    refresh();
    setInterval(refresh, 5000);
  }

  // ------------------------------------------------------------------ sweep page
  function sweepPage() {
    const sweep = BODY.dataset.sweep;
    const head = el("section", {class: "card head", id: "sweep-head"});
    const message = el("div", {class: "message", id: "sweep-message"});
    const thead = el("thead"), tbody = el("tbody");
    const table = el("table", {class: "runs sortable", id: "sweep-runs"}, thead, tbody);
    const answers = el("ol", {class: "answers", id: "answers"});
    const charts = [["train cost", "loss", "train cost"], ["test error", "test error", "test error"]].map(([channel, ylabel, title]) => {
      const chart = new Chart(title, ylabel, false);
      return {channel, chart, node: el("div", {class: "card figure", "data-figure": channel}, el("div", {class: "fig-head"}, el("h3", {text: title})), chart.node)};
    });
    const figs = el("div", {class: "figures", id: "figures"}, charts.map((c) => c.node));
    const spec = el("pre", {class: "config", id: "spec"});
    let only = "";  // the status the table shows ("": any)
    const statusFilter = el("select", {name: "status", "aria-label": "status", on: {change: (e) => { only = e.target.value; draw(); }}},
      el("option", {value: "", text: "any status"}), STATUSES.map((s) => el("option", {value: s, text: s})));
    MAIN.append(head, message, figs, el("section", {class: "card"}, el("div", {class: "fig-head"}, el("h2", {text: "Runs"}), statusFilter),
        el("div", {class: "table-wrap"}, table), answers),
      el("details", {class: "card settings"}, el("summary", {text: "Sweep specification"}), spec));

    let data = null;
    const sort = {key: "created", desc: false};
    const METRICS = [["test_error", "best test error"], ["test_loss", "best test loss"], ["train_loss", "best train loss"]];
    let shown = null;     // the run ids drawn on the charts (null: the first 20)
    const colors = {};    // run id -> its colour, by its place in the sweep (stable under sorting)

    function value(r, key) {
      if (key.startsWith("point:")) return (r.point || {})[key.slice(6)];
      if (key.startsWith("best:")) return (r.best || {})[key.slice(5)];
      if (key === "status") return phase(r);
      if (key === "name") return r.name || r.id;
      return r[key];
    }
    function compare(a, b) {
      const x = value(a, sort.key), y = value(b, sort.key);
      const missing = (v) => v === null || v === undefined;
      if (missing(x) || missing(y)) return missing(x) - missing(y);  // no value: last, either way
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
      return sort.desc ? -order : order;
    }
    function columns() {
      // A field path may break after its dots (a zero-width space), never inside a name.
      return [["", null], ["run", "name"], ...data.keys.map((k) => [k.replace(/\./g, ".\u200b"), "point:" + k]), ["status", "status"], ["progress", "progress"],
        ["queue / worker", null], ...METRICS.map(([k, label]) => [label, "best:" + k]), ["duration", "duration"], ["", null]];
    }
    function header() {
      const key = JSON.stringify([data.keys, sort]);
      if (thead.dataset.key === key) return;
      thead.dataset.key = key;
      thead.replaceChildren(el("tr", {}, columns().map(([label, k]) => k === null ? el("th", {text: label}) :
        el("th", {class: "sort" + (sort.key === k ? (sort.desc ? " desc" : " asc") : ""), "data-sort": k, title: "sort by " + label,
          "aria-sort": sort.key === k ? (sort.desc ? "descending" : "ascending") : null,
          on: {click: () => { sort.desc = sort.key === k ? !sort.desc : false; sort.key = k; draw(); }}}, label))));
    }
    async function cancel(r, button) {
      button.disabled = true;
      const item = el("li", {class: "pending", text: `cancel ${r.name || r.id}: sent…`});
      answers.prepend(item);
      try {
        const body = await api(`/api/runs/${encodeURIComponent(r.id)}/command`, {method: "POST",
          headers: {"content-type": "application/json", "x-nnkit-token": TOKEN}, body: JSON.stringify({command: "stop", args: {}})});
        item.className = body.ok ? "ok" : "error";
        item.textContent = body.text || body.error;
      } catch (e) { item.className = "error"; item.textContent = `cancel ${r.name || r.id}: ${e.message}`; }
      load().catch(showError);
    }
    function runRow(r) {
      const pct = r.progress === null ? null : Math.round(r.progress * 100);
      const box = el("input", {type: "checkbox", checked: shown.has(r.id), "aria-label": "draw " + (r.name || r.id), title: "draw on the charts",
        on: {change: (e) => { if (e.target.checked) shown.add(r.id); else shown.delete(r.id); loadCurves().catch(showError); }}});
      const [where, tries] = queueFacts(r);
      return el("tr", {"data-run": r.id, "data-status": r.status},
        el("td", {}, el("i", {class: "swatch", style: {background: colors[r.id]}}), box),
        el("td", {class: "name"}, el("a", {href: "/run/" + encodeURIComponent(r.id), text: r.name || r.id}), el("div", {class: "sub", text: r.id})),
        data.keys.map((k) => el("td", {class: "num point", "data-key": k, text: pointValue((r.point || {})[k])})),
        el("td", {class: "status", title: r.status}, badge(phase(r))),
        el("td", {class: "progress"}, el("div", {class: "bar"}, el("i", {style: {width: `${pct === null ? 0 : pct}%`}})),
          el("span", {class: "sub", text: `${r.step}${r.total_steps ? " / " + r.total_steps : ""}`})),
        el("td", {class: "queue"}, el("div", {text: where}), el("div", {class: "sub", text: tries})),
        METRICS.map(([k]) => el("td", {class: "num best" + (k === "test_error" && r.id === data.sweep.best_run ? " winner" : ""),
          "data-metric": k, text: num((r.best || {})[k])})),
        el("td", {class: "num", text: duration(r.duration)}),
        el("td", {}, r.status === "queued" ? el("button", {class: "cancel", "data-run": r.id, title: "take it out of the queue (nnkit ctl RUN stop)",
          on: {click: (e) => cancel(r, e.target)}}, "Cancel") : ""));
    }
    function draw() {
      header();
      const rows = data.runs.filter((r) => !only || r.status === only).sort(compare);
      tbody.replaceChildren(...rows.map(runRow));
    }
    function showHead(w) {
      const facts = [["sweep", w.id], ["kind", w.kind], ["runs", w.runs], ["queued or running", w.live], ["finished", w.finished],
        ["failed", w.failed], ["best test error", num(w.best_test_error)], ["created", clock(w.created)]];
      head.replaceChildren(el("h1", {}, el("span", {id: "sweep-name", text: w.name || w.id}), " ", el("span", {id: "status", "data-state": w.status}, badge(w.status))),
        el("div", {class: "facts"}, facts.map(([label, v]) => el("span", {class: "fact"}, el("b", {text: label}), " ", el("span", {text: String(v ?? "–")})))));
      const text = JSON.stringify(w.spec, null, 2);
      if (spec.textContent !== text) spec.textContent = text;
    }
    async function load() {
      const fresh = await api(`/api/sweeps/${encodeURIComponent(sweep)}`);
      const first = data === null;
      data = fresh;
      data.runs.forEach((r, i) => { if (!(r.id in colors)) colors[r.id] = lineColor(i); });
      if (shown === null) shown = new Set(data.runs.slice(0, 20).map((r) => r.id));
      showHead(data.sweep);
      message.textContent = data.runs.length < data.sweep.runs ? `the first ${data.runs.length} of ${data.sweep.runs} runs` : "";
      const key = JSON.stringify([data.runs, data.keys]);
      if (tbody.dataset.runs !== key) { tbody.dataset.runs = key; draw(); }
      if (first) await loadCurves();
    }
    async function loadCurves() {
      const ids = data.runs.filter((r) => shown.has(r.id)).map((r) => r.id).slice(0, 20);
      for (const c of charts) {
        if (!ids.length) { c.chart.set([]); continue; }
        const got = await api(`/api/sweeps/${encodeURIComponent(sweep)}/compare?channel=${encodeURIComponent(c.channel)}&runs=${encodeURIComponent(ids.join(","))}`);
        c.chart.set(got.runs.filter((r) => r.series && r.series.count).map((r) => {
          const s = r.series, smooth = s.window > 1;
          return {x: smooth ? s.avg_steps : s.steps, y: smooth ? s.averages : s.values, color: colors[r.id], width: 1.8,
            label: r.point ? pointText(r.point) : (r.name || r.id)};
        }));
        c.node.dataset.runs = String(got.runs.filter((r) => r.series && r.series.count).length);
        const window = Math.max(1, ...got.runs.map((r) => (r.series ? r.series.window : 1)));
        c.node.querySelector("h3").textContent = window > 1 ? `${c.channel} (mean of ${window})` : c.channel;
      }
    }
    function showError(e) { message.textContent = e.message; message.className = "message error"; }
    load().catch(showError);
    setInterval(() => load().catch(showError), 3000);
    // The curves again only when a drawn run moved on (a step, a status): a finished sweep is read once.
    let drawnKey = null;
    setInterval(() => {
      if (!data) return;
      const key = JSON.stringify(data.runs.filter((r) => shown.has(r.id)).map((r) => [r.id, r.step, r.status]));
      if (key !== drawnKey) { drawnKey = key; loadCurves().catch(showError); }
    }, 5000);
  }

  const pages = {experiments: experimentsPage, experiment: experimentPage, compare: comparePage, sweeps: sweepsPage, sweep: sweepPage};
  (pages[BODY.dataset.page] || experimentsPage)();
})();
