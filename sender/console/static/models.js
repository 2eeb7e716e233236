// Models: every model with its queue depth and its replicas' load, refreshed every 3 s.
import { $, ADMIN, api, badge, clear, el, every, fmtNumber, fmtPercent, meter, showError } from "./common.js";

const root = $("#models");
const updated = $("#updated");

function replicaRow(r) {
  return el(
    "tr",
    { dataset: { replica: r.replica } },
    el("td", {}, el("code", {}, r.replica)),
    el("td", {}, r.ready ? badge("ready", "ok") : badge("not ready", "warn")),
    el("td", {}, r.admission ? badge(r.admission, r.admission === "admit" ? "ok" : "warn") : "–"),
    el("td", {}, meter(r.in_flight, r.max_concurrency, `${r.in_flight} / ${r.max_concurrency}`)),
    el("td", { class: "num" }, fmtNumber(r.running)),
    el("td", { class: "num" }, fmtNumber(r.waiting)),
    el("td", {}, r.kv_cache_usage === null || r.kv_cache_usage === undefined
      ? "–" : meter(r.kv_cache_usage, 1, fmtPercent(r.kv_cache_usage))),
    el("td", { class: "num" }, fmtNumber(r.tokens_per_second, 1)),
    el("td", { class: "num" }, r.heartbeat_age_s === null || r.heartbeat_age_s === undefined
      ? "–" : `${fmtNumber(r.heartbeat_age_s, 1)} s`),
  );
}

function modelCard(m) {
  const replicas = m.replicas || [];
  const ready = replicas.filter((r) => r.ready).length;
  const inFlight = replicas.reduce((n, r) => n + (r.in_flight || 0), 0);
  const capacity = replicas.reduce((n, r) => n + (r.max_concurrency || 0), 0);
  return el(
    "section",
    { class: "card model", dataset: { model: m.model } },
    el(
      "header",
      { class: "card-head" },
      el("h2", {}, m.model),
      ready > 0 ? badge(`${ready} live`, "ok") : badge("no live replica", "warn"),
      el("span", { class: "stat" }, "queue ", el("strong", {}, fmtNumber(m.queue_depth))),
      el("span", { class: "stat" }, "in flight ", el("strong", {}, `${inFlight} / ${capacity}`)),
    ),
    replicas.length === 0
      ? el("p", { class: "muted" }, "No replica has sent a heartbeat recently.")
      : el(
          "table",
          { class: "grid" },
          el("thead", {}, el("tr", {},
            ["Replica", "State", "Admission", "In flight / capacity", "Running", "Waiting", "KV cache", "Tokens/s", "Heartbeat"]
              .map((h) => el("th", {}, h)))),
          el("tbody", {}, replicas.map(replicaRow)),
        ),
  );
}

every(3000, async () => {
  try {
    const { data } = await api(`${ADMIN}/models`);
    clear(root, data.length ? data.map(modelCard) : el("p", { class: "muted" }, "No model is known yet."));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  } catch (err) {
    showError(root, err);
  }
});
