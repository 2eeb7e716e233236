// What every console page shares: calls to the admin API with the session cookie, DOM building with
// textContent only (no markup is ever made from data), formatting, and the navigation bar.

export const ADMIN = "/admin/v1";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A JSON call. The cookie goes along by itself (same origin); calls that change state carry the
// console's header, without which the sender refuses a cookie-authenticated call (CSRF rule).
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-LLMD-Console"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  });
  if (response.status === 401 && !path.startsWith("/console/login")) {
    window.location.assign("/console/login");
    throw new ApiError(401, "signed out", "invalid_api_key");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const err = data && data.error ? data.error : {};
    throw new ApiError(response.status, err.message || `HTTP ${response.status}`, err.code);
  }
  return data;
}

// el("td", {class: "num"}, "text", childNode, ...): attributes as attributes, children as text nodes
// or nodes. Strings always become text (textContent), never markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function fmtNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtSeconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return `${fmtNumber(value * 1000, 0)} ms`;
  return `${fmtNumber(value, 2)} s`;
}

export function fmtPercent(value) {
  if (value === null || value === undefined) return "–";
  return `${fmtNumber(value * 100, 1)} %`;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/:00Z$/, "Z");
}

// A bar showing used of total (in-flight of capacity, KV cache use).
export function meter(used, total, label) {
  const fraction = total > 0 ? Math.min(1, used / total) : 0;
  const bar = el("span", { class: "meter-fill" });
  bar.style.width = `${(fraction * 100).toFixed(1)}%`; // CSSOM, allowed by the CSP (no inline style markup)
  if (fraction >= 0.9) bar.classList.add("hot");
  return el("span", { class: "meter", title: label }, bar, el("span", { class: "meter-text" }, label));
}

export function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}` }, text);
}

export function showError(target, err) {
  clear(target, el("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err)));
}

// Runs fn now and every `ms` while the page is visible; returns a stop function.
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (document.visibilityState === "visible") {
      try {
        await fn();
      } catch (err) {
        console.error(err);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

// The navigation bar: who is signed in, and signing out.
async function initNav() {
  const who = $("#who");
  const logout = $("#logout");
  if (!who || !logout) return;
  logout.addEventListener("click", async () => {
    try {
      await api("/console/logout", { method: "POST" });
    } finally {
      window.location.assign("/console/login");
    }
  });
  try {
    const me = await api("/console/session");
    who.textContent = `signed in as ${me.name}`;
  } catch (err) {
    console.error(err);
  }
}

initNav();
