// The chat page of quantserve: plain JavaScript, no dependencies, no build step.
// It talks only to this server's OpenAI API: GET /v1/models for the picker, and POST /v1/chat/completions
// streamed (server-sent events read through fetch + ReadableStream, so a Stop button can abort it).
"use strict";

const STATE_KEY = "quantserve.chat.v1"; // conversation and settings: localStorage, survive a reload
const API_KEY_KEY = "quantserve.apiKey"; // the key only for this tab: sessionStorage

const $ = (id) => document.getElementById(id);

// --- Markdown: a small, safe subset (everything is escaped first; links only http/https) -----------------

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function inlineMarkdown(escaped) {
  // code spans first, so nothing inside them is formatted
  return escaped.split(/(`[^`\n]+`)/).map((part, i) => i % 2
    ? `<code>${part.slice(1, -1)}</code>`
    : part.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>")
      .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g,
        '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>')).join("");
}

const FENCE = /^\s*```\s*([\w+#.-]*)\s*$/;
const LIST_ITEM = /^\s*([-*+]|\d+[.)])\s+/;
const HEADING = /^(#{1,6})\s+(.*)$/;

function isBlockStart(line) {
  return FENCE.test(line) || LIST_ITEM.test(line) || HEADING.test(line);
}

function markdown(source) {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const html = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) { // an unclosed fence (still streaming) runs to the end
      const body = [];
      for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push(lines[i]);
      i++;
      const lang = fence[1] ? ` data-lang="${escapeHtml(fence[1])}"` : "";
      html.push(`<pre${lang}><code>${escapeHtml(body.join("\n"))}</code></pre>`);
    } else if (HEADING.test(line)) {
      const [, hashes, text] = line.match(HEADING);
      html.push(`<h${hashes.length}>${inlineMarkdown(escapeHtml(text))}</h${hashes.length}>`);
      i++;
    } else if (LIST_ITEM.test(line)) {
      const tag = /^\s*\d/.test(line) ? "ol" : "ul";
      const items = [];
      for (; i < lines.length && LIST_ITEM.test(lines[i]); i++) {
        items.push(`<li>${inlineMarkdown(escapeHtml(lines[i].replace(LIST_ITEM, "")))}</li>`);
      }
      html.push(`<${tag}>${items.join("")}</${tag}>`);
    } else if (!line.trim()) {
      i++;
    } else {
      const paragraph = [];
      for (; i < lines.length && lines[i].trim() && !isBlockStart(lines[i]); i++) {
        paragraph.push(inlineMarkdown(escapeHtml(lines[i])));
      }
      html.push(`<p>${paragraph.join("<br>")}</p>`);
    }
  }
  return html.join("");
}

// --- state: the conversation and settings in localStorage ------------------------------------------------

const state = loadState();
let controller = null; // the AbortController of the answer being streamed

function loadState() {
  const empty = { messages: [], settings: { model: "", system: "", temperature: 0.7, maxTokens: "" } };
  try {
    const saved = JSON.parse(localStorage.getItem(STATE_KEY) || "null");
    if (!saved || !Array.isArray(saved.messages)) return empty;
    // an answer still empty when the page was left (reloaded mid-stream) is dropped
    const messages = saved.messages.filter((message) => message.content || message.stats);
    return { ...empty, ...saved, messages, settings: { ...empty.settings, ...saved.settings } };
  } catch (error) {
    return empty; // unreadable (edited by hand): start over rather than break the page
  }
}

function saveState() {
  localStorage.setItem(STATE_KEY, JSON.stringify(state));
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// --- rendering -----------------------------------------------------------------------------------------

function formatStats(stats) {
  if (!stats) return "";
  const parts = [];
  if (stats.stopped) parts.push("stopped");
  if (stats.tokens !== undefined) parts.push(`${stats.approximate ? "~" : ""}${stats.tokens} tokens`);
  if (stats.tokensPerSecond !== undefined) parts.push(`${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (stats.ttftMs !== undefined) parts.push(`TTFT ${Math.round(stats.ttftMs)} ms`);
  if (stats.finishReason) parts.push(`finish: ${stats.finishReason}`);
  return parts.join(" · ");
}

function messageElement(message) {
  const element = document.createElement("article");
  element.className = `message ${message.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "error" ? "error" : message.role === "user" ? "you" : message.model || "assistant";
  const content = document.createElement("div");
  content.className = "content";
  const stats = document.createElement("div");
  stats.className = "stats";
  element.append(role, content, stats);
  updateMessageElement(element, message);
  return element;
}

function updateMessageElement(element, message) {
  const content = element.querySelector(".content");
  if (message.role === "assistant") content.innerHTML = markdown(message.content);
  else content.textContent = message.content;
  element.querySelector(".stats").textContent = formatStats(message.stats);
}

function renderConversation() {
  const list = $("messages");
  list.replaceChildren(...state.messages.map(messageElement));
  list.scrollTop = list.scrollHeight;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setStreaming(streaming) {
  $("send").hidden = streaming;
  $("stop").hidden = !streaming;
}

// --- models --------------------------------------------------------------------------------------------

async function loadModels() {
  const picker = $("model");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const ids = (await response.json()).data.map((model) => model.id);
    picker.replaceChildren(...ids.map((id) => new Option(id, id)));
    picker.value = ids.includes(state.settings.model) ? state.settings.model : ids[0] || "";
    setStatus(ids.length ? "" : "no models are loaded on this server");
  } catch (error) {
    picker.replaceChildren();
    setStatus(`cannot list models: ${error.message}`);
  }
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const message = typeof body.error === "string" ? body.error : body.error && body.error.message;
    if (message) return `${message} (HTTP ${response.status})`;
  } catch (error) { /* not JSON: use the text */ }
  return `HTTP ${response.status}: ${text.slice(0, 200)}`;
}

// --- one answer, streamed --------------------------------------------------------------------------------

function requestBody(model) {
  const messages = [];
  if (state.settings.system.trim()) messages.push({ role: "system", content: state.settings.system });
  for (const message of state.messages) {
    if (message.role === "user" || (message.role === "assistant" && message.content)) {
      messages.push({ role: message.role, content: message.content });
    }
  }
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  const temperature = parseFloat(state.settings.temperature);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt(state.settings.maxTokens, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

// Server-sent events from a fetch body: calls onEvent(parsed JSON) for each `data:` line but [DONE].
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && line !== "data: [DONE]") onEvent(JSON.parse(line.slice(6)));
      }
    }
  }
}

function streamTimings(sentAt) {
  return { sentAt, firstAt: null, lastAt: null, numChunks: 0 };
}

function finalStats(timings, usage, finishReason, stopped) {
  const stats = { stopped, finishReason };
  if (timings.firstAt !== null) {
    stats.ttftMs = timings.firstAt - timings.sentAt;
    // like llama-server's predicted_per_second: tokens after the first over the time since the first
    stats.tokens = usage ? usage.completion_tokens : timings.numChunks;
    stats.approximate = !usage; // a stopped stream has no usage chunk: one content chunk per token
    const seconds = (timings.lastAt - timings.firstAt) / 1000;
    if (stats.tokens > 1 && seconds > 0) stats.tokensPerSecond = (stats.tokens - 1) / seconds;
  }
  return stats;
}

async function streamAnswer(answer, element, signal) {
  const timings = streamTimings(performance.now());
  let usage = null;
  let finishReason = null;
  let stopped = false;
  let pending = false;
  const repaint = () => { pending = false; updateMessageElement(element, answer); $("messages").scrollTop = $("messages").scrollHeight; };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", signal, headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(requestBody(answer.model)),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    await readEvents(response.body, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message || "the server ended the answer with an error");
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.finish_reason) finishReason = choice.finish_reason;
      const text = choice.delta && choice.delta.content;
      if (!text) return;
      timings.lastAt = performance.now();
      if (timings.firstAt === null) timings.firstAt = timings.lastAt;
      timings.numChunks++;
      answer.content += text;
      if (!pending) { pending = true; requestAnimationFrame(repaint); }
    });
  } catch (error) {
    if (error.name !== "AbortError") throw error;
    stopped = true;
  }
  answer.stats = finalStats(timings, usage, finishReason, stopped);
}

async function send(text) {
  const model = $("model").value;
  if (!model) { setStatus("pick a model first (is the API key set?)"); return; }
  state.messages.push({ role: "user", content: text });
  const answer = { role: "assistant", content: "", model };
  state.messages.push(answer);
  saveState();
  renderConversation();
  const element = $("messages").lastElementChild;
  element.classList.add("streaming");
  controller = new AbortController();
  setStreaming(true);
  try {
    await streamAnswer(answer, element, controller.signal);
  } catch (error) {
    answer.role = "error";
    answer.content = (answer.content ? answer.content + "\n\n" : "") + error.message;
    element.className = "message error";
  } finally {
    controller = null;
    setStreaming(false);
    element.classList.remove("streaming");
    updateMessageElement(element, answer);
    saveState();
    $("input").focus();
  }
}

// --- wiring --------------------------------------------------------------------------------------------

function bindSetting(id, name) {
  const input = $(id);
  input.value = state.settings[name];
  input.addEventListener("input", () => { state.settings[name] = input.value; saveState(); });
}

function start() {
  bindSetting("system", "system");
  bindSetting("temperature", "temperature");
  bindSetting("max-tokens", "maxTokens");
  $("api-key").value = sessionStorage.getItem(API_KEY_KEY) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(API_KEY_KEY, $("api-key").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", () => { state.settings.model = $("model").value; saveState(); });
  $("toggle-settings").addEventListener("click", () => {
    const settings = $("settings");
    settings.hidden = !settings.hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!settings.hidden));
  });
  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    state.messages = [];
    saveState();
    renderConversation();
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  renderConversation();
  loadModels();
}

start();
