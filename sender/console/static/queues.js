// Queues: per model, the live depth (with its recent history), in-flight vs capacity, admission
// decisions and refusals by reason; refreshed every 2 s while "auto-refresh" is ticked.
import { $, ADMIN, api, badge, clear, el, every, fmtNumber, meter, PALETTE, showError } from "./common.js";

const root = $("#queues");
const auto = $("#auto");
const history = new Map(); // model -> [[times], [depths], [in flight], [capacity]]
const charts = new Map();
const HISTORY = 150; // points kept: 5 minutes at one every 2 s

function remember(q) {
  const now = Date.now() / 1000;
  const h = history.get(q.model) || [[], [], [], []];
  h[0].push(now);
  h[1].push(q.queue_depth);
  h[2].push(q.in_flight);
  h[3].push(q.capacity);
  for (const column of h) if (column.length > HISTORY) column.splice(0, column.length - HISTORY);
  history.set(q.model, h);
  return h;
}

// A small table of name -> number (refusals by reason).
function keyValues(title, object, empty) {
  const entries = Object.entries(object || {}).filter(([, v]) => typeof v !== "object" || v === null);
  return el(
    "div",
    { class: "kv" },
    el("h3", {}, title),
    entries.length
      ? el("table", { class: "grid compact" },
          el("tbody", {}, entries.map(([k, v]) =>
            el("tr", { dataset: { key: k } }, el("th", {}, k),
              el("td", { class: "num" }, typeof v === "number" ? fmtNumber(v, 2) : String(v))))))
      : el("p", { class: "muted" }, empty),
  );
}

function admission(q) {
  const entries = Object.entries(q.admission || {});
  return el(
    "div",
    { class: "kv" },
    el("h3", {}, `Admission (${q.replicas_ready ?? entries.length} ready)`),
    entries.length
      ? el("table", { class: "grid compact" },
          el("tbody", {}, entries.map(([replica, decision]) =>
            el("tr", { dataset: { replica } }, el("th", {}, replica),
              el("td", {}, badge(decision, decision === "admit" ? "ok" : "warn"))))))
      : el("p", { class: "muted" }, "No decision reported."),
  );
}

function card(q) {
  const chart = el("div", { class: "chart small-chart" });
  const node = el(
    "section",
    { class: "card queue", dataset: { model: q.model } },
    el(
      "header",
      { class: "card-head" },
      el("h2", {}, q.model),
      el("span", { class: "stat" }, "queue depth ", el("strong", { class: "depth" }, fmtNumber(q.queue_depth))),
      meter(q.in_flight, q.capacity, `${q.in_flight} / ${q.capacity} in flight`),
    ),
    el("div", { class: "queue-body" },
      chart,
      keyValues("Refusals", q.refusals, "No refusal."),
      admission(q)),
  );
  return { node, chart };
}

// From the first sample (at least a minute, at most five back) to now.
function xRange(times) {
  const now = Date.now() / 1000;
  const span = Math.min(300, Math.max(60, now - (times[0] ?? now)));
  return [now - span, now];
}

function plot(model, target, data, capacity) {
  const old = charts.get(model);
  if (old) old.destroy();
  if (!window.uPlot) return;
  charts.set(
    model,
    new window.uPlot(
      {
        width: Math.max(260, target.clientWidth || 360),
        height: 140,
        legend: { show: true },
        scales: {
          x: { time: true, range: (u) => xRange(u.data[0]) },
          y: { range: (u, min, max) => [0, Math.max(max, capacity, 1) * 1.1] },
        },
        series: [
          {},
          { label: "queue depth", stroke: PALETTE[0], width: 2 },
          { label: "in flight", stroke: PALETTE[2], width: 2 },
          { label: "capacity", stroke: PALETTE[7], width: 1, dash: [4, 4] },
        ],
      },
      data,
      target,
    ),
  );
}

async function refresh() {
  try {
    const { data, window_s, other_refusals } = await api(`${ADMIN}/queues?minutes=5`);
    $("#window").textContent = fmtNumber((window_s || 300) / 60);
    clear($("#queues-error"));
    const cards = data.map((q) => ({ q, h: remember(q), ...card(q) }));
    const other = el("section", { class: "card other", id: "other-refusals" },
      keyValues("Refusals not tied to a served model", other_refusals,
        "None (no bad or missing keys, unknown models or bad bodies)."));
    clear(root, cards.length ? cards.map((c) => c.node) : el("p", { class: "muted" }, "No queue yet."), other);
    for (const c of cards) plot(c.q.model, c.chart, c.h, c.q.capacity);
    $("#updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  } catch (err) {
    showError($("#queues-error"), err);
  }
}

let stop = every(2000, refresh);
auto.addEventListener("change", () => {
  stop();
  stop = auto.checked ? every(2000, refresh) : () => {};
});
