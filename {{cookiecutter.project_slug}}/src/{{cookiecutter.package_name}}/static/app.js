// The demo client: an echo socket and a chat socket, each reconnecting by
// itself with jittered exponential backoff. Received text is written with
// textContent, never innerHTML: a message is data, not markup.
"use strict";

const MAX_MESSAGE_SIZE = Number(document.currentScript.dataset.maxMessageSize);
const statusEl = document.getElementById("status");
const sockets = {};

function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

function appendLine(logId, text, kind) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  const log = document.getElementById(logId);
  log.appendChild(item);
  item.scrollIntoView({ block: "nearest" });
}

function showStatus() {
  const open = Object.values(sockets).every(
    (ws) => ws && ws.readyState === WebSocket.OPEN,
  );
  statusEl.textContent = open ? "connected" : "disconnected";
  statusEl.classList.toggle("connected", open);
}

// 0.5 s, 1 s, 2 s ... up to 30 s, each drawn at random from its lower half to
// the full value, so that clients dropped together do not return together.
function backoff(attempt) {
  const ceiling = Math.min(30000, 500 * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function connect(name, path, onMessage) {
  let attempt = 0;
  const open = () => {
    const ws = new WebSocket(wsUrl(path));
    sockets[name] = ws;
    ws.addEventListener("open", () => {
      attempt = 0;
      showStatus();
    });
    ws.addEventListener("message", (event) => onMessage(event.data));
    ws.addEventListener("close", (event) => {
      showStatus();
      if (event.code === 1008) return; // refused by policy: retrying will not help
      setTimeout(open, backoff(attempt++));
    });
  };
  open();
}

function send(name, data, logId) {
  const ws = sockets[name];
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    appendLine(logId, "not connected; reconnecting", "error");
    return false;
  }
  if (new Blob([data]).size > MAX_MESSAGE_SIZE) {
    appendLine(logId, `too long: the limit is ${MAX_MESSAGE_SIZE} bytes`, "error");
    return false;
  }
  ws.send(data);
  return true;
}

connect("echo", "/ws/echo", (data) => appendLine("echo-log", `< ${data}`, "received"));
connect("chat", "/ws/chat", (data) => {
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return;
  }
  if (message.type === "message") {
    const time = new Date(message.ts * 1000).toLocaleTimeString();
    appendLine("chat-log", `${time} ${message.user}: ${message.text}`, "received");
  } else if (message.type === "error") {
    appendLine("chat-log", message.error, "error");
  }
});

document.getElementById("echo-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("echo-input");
  if (input.value && send("echo", input.value, "echo-log")) {
    appendLine("echo-log", `> ${input.value}`, "sent");
    input.value = "";
  }
});

document.getElementById("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  if (input.value.trim() && send("chat", JSON.stringify({ text: input.value }), "chat-log")) {
    input.value = "";
  }
});
