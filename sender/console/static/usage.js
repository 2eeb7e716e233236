// Usage: charts over time (requests by token, tokens by model, latency), a table by token and model,
// the latest records, and the CSV of the same query. All from GET /admin/v1/usage[/records].
import { $, ADMIN, api, clear, el, fmtNumber, fmtSeconds, fmtTime, PALETTE, showError } from "./common.js";

const filter = $("#usage-filter");
const charts = {};
let recordsAfter = null;

function params(extra = {}) {
  const f = filter.elements;
  const query = new URLSearchParams({ since: f.since.value });
  if (f.token.value.trim()) query.set("token", f.token.value.trim());
  if (f.model.value.trim()) query.set("model", f.model.value.trim());
  for (const [k, v] of Object.entries(extra)) query.set(k, v);
  return query;
}

// Hours for ranges up to two days, days beyond.
function bucket() {
  return ["1h", "6h", "24h"].includes(filter.elements.since.value) ? "hour" : "day";
}

const seconds = (iso) => Math.floor(new Date(iso).getTime() / 1000);

const STEP = { hour: 3600, day: 86400 };

// Every bucket start from `since` to `until` (uPlot wants one x column; empty buckets are zeros).
function buckets(result) {
  const step = STEP[bucket()];
  const first = Math.floor(seconds(result.since) / step) * step;
  const last = seconds(result.until);
  const times = [];
  for (let t = first; t <= last; t += step) times.push(t);
  return times;
}

// rows grouped by (time, key) -> uPlot data: [times, one series per key]
function series(result, keyOf, valueOf) {
  const b = bucket();
  const times = buckets(result);
  const index = new Map(times.map((t, i) => [t, i]));
  const keys = [...new Set(result.data.map(keyOf))].sort();
  const values = keys.map(() => times.map(() => 0));
  for (const r of result.data) {
    const i = index.get(seconds(r[b]));
    if (i !== undefined) values[keys.indexOf(keyOf(r))][i] += valueOf(r);
  }
  return { keys, data: [times, ...values] };
}

const COUNT_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8];
const format = (unit, v) => (v === null || v === undefined ? "–" : unit === "s" ? fmtSeconds(v) : fmtNumber(v));

function draw(id, keys, data, unit, range) {
  const target = $(`#${id}`);
  if (charts[id]) charts[id].destroy();
  clear(target);
  if (keys.length === 0) {
    target.append(el("p", { class: "muted empty-chart" }, "No requests in this range."));
    charts[id] = null;
    return;
  }
  const width = Math.max(280, target.clientWidth || 480);
  charts[id] = new window.uPlot(
    {
      width,
      height: 220,
      scales: { x: { time: true, range: () => range }, y: { range: (u, min, max) => [0, Math.max(max, unit === "s" ? 0.01 : 1) * 1.1] } },
      axes: [
        {},
        {
          size: 72,
          incrs: unit === "s" ? undefined : COUNT_INCRS,
          values: (u, ticks) => ticks.map((v) => format(unit, v)),
        },
      ],
      series: [
        {},
        ...keys.map((key, i) => ({
          label: key,
          stroke: PALETTE[i % PALETTE.length],
          width: 2,
          spanGaps: true,
          points: { show: true, size: 5 },
          value: (u, v) => format(unit, v),
        })),
      ],
    },
    data,
    target,
  );
}

const latency = (stats, which) => {
  if (!stats) return null;
  return stats[which] ?? stats.mean ?? null;
};
const latencyText = (stats, percentiles) => {
  if (!stats || stats.mean === null || stats.mean === undefined) return "–";
  return percentiles && stats.p50 !== undefined
    ? `${fmtSeconds(stats.p50)} / ${fmtSeconds(stats.p95)}`
    : `${fmtSeconds(stats.mean)} (max ${fmtSeconds(stats.max)})`;
};

async function loadCharts() {
  const b = bucket();
  const [byToken, byModel, overall] = await Promise.all([
    api(`${ADMIN}/usage?${params({ group_by: `token,${b}` })}`),
    api(`${ADMIN}/usage?${params({ group_by: `model,${b}` })}`),
    api(`${ADMIN}/usage?${params({ group_by: b })}`),
  ]);
  const range = [seconds(overall.since), seconds(overall.until)];
  const requests = series(byToken, (r) => r.token, (r) => r.requests);
  draw("chart-requests", requests.keys, requests.data, "", range);
  const tokens = series(byModel, (r) => r.model, (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0));
  draw("chart-tokens", tokens.keys, tokens.data, "", range);
  // Latency: one point per bucket that had requests (none where there were none: null, a gap).
  const p = overall.percentiles;
  const picks = p
    ? [["TTFT p50", "ttfb_s", "p50"], ["TTFT p95", "ttfb_s", "p95"], ["total p50", "total_s", "p50"],
       ["total p95", "total_s", "p95"]]
    : [["TTFT mean", "ttfb_s", "mean"], ["total mean", "total_s", "mean"], ["total max", "total_s", "max"]];
  const times = buckets(overall);
  const byTime = new Map(overall.data.map((r) => [seconds(r[b]), r]));
  const data = [times, ...picks.map(([, k, w]) => times.map((t) => latency(byTime.get(t) && byTime.get(t)[k], w)))];
  $("#latency-title").textContent = p ? "Latency (p50 / p95)" : "Latency (means)";
  draw("chart-latency", overall.data.length ? picks.map(([name]) => name) : [], data, "s", range);
  return overall;
}

async function loadTable() {
  const result = await api(`${ADMIN}/usage?${params({ group_by: "token,model" })}`);
  const p = result.percentiles;
  const rows = [...result.data].sort((a, c) => c.requests - a.requests);
  clear(
    $("#usage-table tbody"),
    rows.length
      ? rows.map((r) =>
          el(
            "tr",
            { dataset: { token: r.token, model: r.model } },
            el("td", {}, el("code", {}, r.token ?? "–")),
            el("td", {}, r.model ?? "–"),
            el("td", { class: "num" }, fmtNumber(r.requests)),
            el("td", { class: "num" }, fmtNumber(r.errors)),
            el("td", {}, Object.entries(r.by_status || {}).map(([s, n]) => `${s}: ${n}`).join(", ")),
            el("td", { class: "num" }, fmtNumber(r.prompt_tokens)),
            el("td", { class: "num" }, fmtNumber(r.completion_tokens)),
            el("td", {}, latencyText(r.queue_wait_s, p)),
            el("td", {}, latencyText(r.ttfb_s, p)),
            el("td", {}, latencyText(r.total_s, p)),
          ),
        )
      : el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No requests in this range.")),
  );
  $("#usage-note").textContent =
    `${fmtTime(result.since)} – ${fmtTime(result.until)}. Latencies: ` +
    (p ? "p50 / p95 (computed by the database)." : "means and maxima (this database computes no percentiles).");
  $("#csv").href = `${ADMIN}/usage?${params({ group_by: `token,model,${bucket()}`, format: "csv" })}`;
}

function recordRow(r) {
  return el(
    "tr",
    { dataset: { id: r.id, token: r.token } },
    el("td", {}, fmtTime(r.created_at)),
    el("td", {}, el("code", {}, r.token ?? "–")),
    el("td", {}, r.model ?? "–"),
    el("td", {}, r.replica || "–"),
    el("td", { class: "num" }, r.status),
    el("td", { class: "num" }, fmtNumber(r.prompt_tokens)),
    el("td", { class: "num" }, fmtNumber(r.completion_tokens)),
    el("td", {}, fmtSeconds(r.queue_wait_s)),
    el("td", {}, fmtSeconds(r.ttfb_s)),
    el("td", {}, fmtSeconds(r.total_s)),
    el("td", {}, el("code", { class: "small" }, r.request_id || "–")),
  );
}

async function loadRecords(reset = true) {
  const query = params({ limit: "25" });
  if (!reset && recordsAfter !== null) query.set("after", recordsAfter);
  const page = await api(`${ADMIN}/usage/records?${query}`);
  if (reset) clear($("#records tbody"));
  $("#records tbody").append(...page.data.map(recordRow));
  recordsAfter = page.last_id;
  $("#records-more").hidden = !page.has_more;
}

async function loadAll() {
  clear($("#usage-error"));
  try {
    await Promise.all([loadCharts(), loadTable(), loadRecords()]);
  } catch (err) {
    showError($("#usage-error"), err);
  }
}

filter.addEventListener("submit", (event) => {
  event.preventDefault();
  loadAll();
});
filter.elements.since.addEventListener("change", loadAll);
$("#records-more").addEventListener("click", () =>
  loadRecords(false).catch((err) => showError($("#usage-error"), err)),
);
loadAll();
