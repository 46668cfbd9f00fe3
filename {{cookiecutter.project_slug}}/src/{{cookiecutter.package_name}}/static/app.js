// The demo client: an echo socket and a chat socket, each reconnecting by
// itself with exponential backoff and full jitter (a random wait between 0
// and a ceiling that doubles with each failed attempt), unless the server
// closed it by policy (1008). Received text is written with textContent, never
// innerHTML: a message is data, not markup.
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

// The ceilings of the waits: 0.5 s, 1 s, 2 s ... then 30 s for every further
// attempt. The wait is drawn anywhere between 0 and the ceiling, so clients
// dropped together return spread over the whole of it, not in its upper half.
const RETRY_FIRST_CEILING_MS = 500;
const RETRY_MAX_CEILING_MS = 30_000;
// A 1001 ("going away": the server stops or reloads, as on every deploy)
// reaches all of its clients in the same moment, so it gets no quick first
// retry: a small first ceiling would bring them all back within the same half
// second, a storm of handshakes on a server that is just starting. Their first
// retry is spread over 4 s instead, the ceiling of the fourth retry (a
// restarted server needs a moment to boot anyway). A client dropped alone
// (1006, 1011) still tries again within 0.5 s.
const GOING_AWAY = 1001;
const GOING_AWAY_FIRST_ATTEMPT = 3;
// Refused by policy (revoked credentials, too slow, flooding): trying again
// would not help.
const POLICY_VIOLATION = 1008;

// The ceiling after `attempt` failed attempts in a row (0 for the first retry).
function retryCeiling(attempt) {
  return Math.min(RETRY_MAX_CEILING_MS, RETRY_FIRST_CEILING_MS * 2 ** attempt);
}

function retryDelay(attempt) {
  return Math.random() * retryCeiling(attempt);
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
      if (event.code === POLICY_VIOLATION) return;
      if (event.code === GOING_AWAY) {
        attempt = Math.max(attempt, GOING_AWAY_FIRST_ATTEMPT);
      }
      setTimeout(open, retryDelay(attempt++));
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
