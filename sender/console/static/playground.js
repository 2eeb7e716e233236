// Playground: a streamed chat through POST /v1/chat/completions with the key pasted on the page
// (held in a variable: never in a URL, storage or the page), with TTFT and tokens/s measured here.
import { $, ADMIN, api, clear, el, fmtNumber, fmtSeconds, showError } from "./common.js";

const keyField = $("#api-key");
const modelSelect = $("#model");
const transcript = $("#transcript");
const prompt = $("#prompt");
const sendButton = $("#send");
const stopButton = $("#stop");
const errors = $("#chat-error");

let messages = [];
let controller = null;

async function loadModels() {
  try {
    const { data } = await api(`${ADMIN}/models`);
    const live = data.filter((m) => (m.replicas || []).some((r) => r.ready));
    const chosen = modelSelect.value;
    clear(modelSelect, (live.length ? live : data).map((m) => el("option", { value: m.model }, m.model)));
    if (chosen) modelSelect.value = chosen;
  } catch (err) {
    showError(errors, err);
  }
}

function bubble(role, text) {
  const body = el("div", { class: "text" }, text);
  const node = el("div", { class: `msg ${role}` }, el("span", { class: "role" }, role), body);
  transcript.append(node);
  transcript.scrollTop = transcript.scrollHeight;
  return body;
}

function setStats({ ttft, tps, tokens, total }) {
  $("#stat-ttft").textContent = ttft === undefined ? "–" : fmtSeconds(ttft);
  $("#stat-tps").textContent = tps === undefined ? "–" : fmtNumber(tps, 1);
  $("#stat-tokens").textContent = tokens === undefined ? "–" : fmtNumber(tokens);
  $("#stat-total").textContent = total === undefined ? "–" : fmtSeconds(total);
}

// Server-sent events from a fetch body: yields each `data:` payload (the OpenAI stream format).
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}

async function send(text) {
  const key = keyField.value.trim();
  if (!key) {
    showError(errors, new Error("Paste an API key first (a token with inference rights)."));
    keyField.focus();
    return;
  }
  clear(errors);
  const system = $("#system").value.trim();
  messages.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  answer.classList.add("pending");
  setStats({});
  controller = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let usage = null;
  let content = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json", Accept: "text/event-stream" },
      credentials: "omit",
      cache: "no-store",
      signal: controller.signal,
      body: JSON.stringify({
        model: modelSelect.value,
        messages: system ? [{ role: "system", content: system }, ...messages] : messages,
        max_tokens: Number($("#max-tokens").value) || undefined,
        temperature: Number($("#temperature").value),
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        message = (await response.json()).error.message || message;
      } catch {
        /* not JSON */
      }
      throw new Error(`${response.status}: ${message}`);
    }
    for await (const data of sse(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) {
          first = performance.now();
          answer.classList.remove("pending");
        }
        chunks += 1;
        content += delta.content;
        answer.textContent = content;
        transcript.scrollTop = transcript.scrollHeight;
        setStats({ ttft: (first - started) / 1000, tokens: chunks });
      }
    }
    const end = performance.now();
    const tokens = usage && usage.completion_tokens ? usage.completion_tokens : chunks;
    const generating = first === null ? 0 : (end - first) / 1000;
    setStats({
      ttft: first === null ? undefined : (first - started) / 1000,
      tps: generating > 0 && tokens > 1 ? (tokens - 1) / generating : undefined,
      tokens,
      total: (end - started) / 1000,
    });
    messages.push({ role: "assistant", content });
  } catch (err) {
    if (err.name === "AbortError") {
      messages.push({ role: "assistant", content });
    } else {
      messages.pop();
      showError(errors, err);
    }
  } finally {
    answer.classList.remove("pending");
    if (!content) answer.parentElement.classList.add("empty");
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
}

$("#composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text || controller) return;
  prompt.value = "";
  send(text);
});
prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("#composer").requestSubmit();
  }
});
stopButton.addEventListener("click", () => controller && controller.abort());
$("#reset").addEventListener("click", () => {
  if (controller) controller.abort();
  messages = [];
  clear(transcript);
  clear(errors);
  setStats({});
});
$("#chat-settings").addEventListener("submit", (event) => event.preventDefault());

loadModels();
setInterval(loadModels, 10000);
