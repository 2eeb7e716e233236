// Keys: list (paged), create (the plaintext shown once, with a copy button), edit, revoke.
import { $, ADMIN, api, badge, clear, el, fmtNumber, fmtTime, showError } from "./common.js";

const tbody = $("#keys tbody");
const more = $("#more");
const dialog = $("#edit-dialog");
const editForm = $("#edit-key");
let lastId = null;
let editing = null;

// datetime-local <-> ISO 8601 (UTC)
const toLocalInput = (iso) => (iso ? new Date(iso).toISOString().slice(0, 16) : "");
const fromLocalInput = (value) => (value ? new Date(`${value}:00Z`).toISOString() : null);
const models = (value) => {
  const list = value.split(",").map((m) => m.trim()).filter(Boolean);
  return list.length ? list : null;
};
const optionalInt = (value) => (value === "" ? null : Number(value));

function row(t) {
  const status = t.status || (t.enabled ? "active" : "revoked");
  const roles = [t.inference !== false ? "inference" : null, t.admin ? "admin" : null].filter(Boolean);
  const actions = el("td", { class: "actions" },
    el("button", { type: "button", class: "link", onclick: () => openEdit(t) }, "Edit"),
    t.enabled
      ? el("button", { type: "button", class: "link danger", dataset: { revoke: t.name }, onclick: () => revoke(t) },
          "Revoke")
      : el("button", { type: "button", class: "link", onclick: () => enable(t) }, "Enable"),
  );
  return el(
    "tr",
    { dataset: { name: t.name, status } },
    el("td", {}, el("code", {}, t.name)),
    el("td", {}, badge(status, status === "active" ? "ok" : "warn")),
    el("td", {}, roles.join(", ") || "–"),
    el("td", { class: "num" }, fmtNumber(t.priority)),
    el("td", { class: "num" }, fmtNumber(t.threshold)),
    el("td", { class: "num" }, t.batch_priority === null || t.batch_priority === undefined ? "–" : t.batch_priority),
    el("td", {}, t.allowed_models ? t.allowed_models.join(", ") : "all"),
    el("td", {}, fmtTime(t.expires_at)),
    el("td", {}, fmtTime(t.created_at)),
    actions,
  );
}

async function load(reset = true) {
  try {
    const query = new URLSearchParams({ limit: "50" });
    if (!reset && lastId !== null) query.set("after", lastId);
    const page = await api(`${ADMIN}/tokens?${query}`);
    if (reset) clear(tbody);
    tbody.append(...page.data.map(row));
    lastId = page.last_id;
    more.hidden = !page.has_more;
  } catch (err) {
    showError($("#list-error"), err);
  }
}

function replaceRow(token) {
  const old = tbody.querySelector(`tr[data-name="${CSS.escape(token.name)}"]`);
  if (old) old.replaceWith(row(token));
  else tbody.prepend(row(token));
}

async function revoke(t) {
  if (!window.confirm(`Revoke ${t.name}? Clients using it get 401 from then on.`)) return;
  try {
    replaceRow(await api(`${ADMIN}/tokens/${encodeURIComponent(t.name)}`, { method: "DELETE" }));
  } catch (err) {
    showError($("#list-error"), err);
  }
}

async function enable(t) {
  try {
    replaceRow(await api(`${ADMIN}/tokens/${encodeURIComponent(t.name)}`, { method: "PATCH", body: { enabled: true } }));
  } catch (err) {
    showError($("#list-error"), err);
  }
}

function openEdit(t) {
  editing = t;
  $("#edit-name").textContent = t.name;
  clear($("#edit-error"));
  const f = editForm.elements;
  f.priority.value = t.priority;
  f.threshold.value = t.threshold;
  f.batch_priority.value = t.batch_priority ?? "";
  f.allowed_models.value = t.allowed_models ? t.allowed_models.join(", ") : "";
  f.expires_at.value = toLocalInput(t.expires_at);
  f.inference.checked = t.inference !== false;
  f.admin.checked = Boolean(t.admin);
  f.enabled.checked = Boolean(t.enabled);
  dialog.showModal();
}

editForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const f = editForm.elements;
  try {
    const token = await api(`${ADMIN}/tokens/${encodeURIComponent(editing.name)}`, {
      method: "PATCH",
      body: {
        priority: Number(f.priority.value),
        threshold: Number(f.threshold.value),
        batch_priority: optionalInt(f.batch_priority.value),
        allowed_models: models(f.allowed_models.value),
        expires_at: fromLocalInput(f.expires_at.value),
        inference: f.inference.checked,
        admin: f.admin.checked,
        enabled: f.enabled.checked,
      },
    });
    replaceRow(token);
    dialog.close();
  } catch (err) {
    showError($("#edit-error"), err);
  }
});
$("#edit-cancel").addEventListener("click", () => dialog.close());

$("#create-key").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const f = form.elements;
  clear($("#create-error"));
  const body = {
    name: f.name.value.trim(),
    priority: Number(f.priority.value),
    threshold: Number(f.threshold.value),
    allowed_models: models(f.allowed_models.value),
    expires_at: fromLocalInput(f.expires_at.value),
    batch_priority: optionalInt(f.batch_priority.value),
    inference: f.inference.checked,
    admin: f.admin.checked,
  };
  try {
    const created = await api(`${ADMIN}/tokens`, { method: "POST", body });
    showNewKey(created.token.name, created.key);
    replaceRow(created.token);
    form.reset();
  } catch (err) {
    showError($("#create-error"), err);
  }
});

function showNewKey(name, key) {
  $("#new-key-name").textContent = name;
  $("#new-key-value").value = key;
  $("#copy-status").textContent = "";
  $("#new-key").hidden = false;
  $("#new-key-value").select();
}

$("#copy-key").addEventListener("click", async () => {
  const field = $("#new-key-value");
  try {
    await navigator.clipboard.writeText(field.value);
    $("#copy-status").textContent = "Copied to the clipboard.";
  } catch {
    field.select();
    $("#copy-status").textContent = "Selected: press Ctrl+C to copy.";
  }
});
// Done: the plaintext leaves the page (it was never anywhere else).
$("#dismiss-key").addEventListener("click", () => {
  $("#new-key-value").value = "";
  $("#new-key").hidden = true;
});
more.addEventListener("click", () => load(false));

load();
