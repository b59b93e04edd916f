// Cove dashboard: confirmations for actions, and the live log view (Server-Sent Events).
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// The log filter's app select carries the app's kind (deployed or ephemeral) along.
const appSelect = document.getElementById("f-app");
if (appSelect) {
  appSelect.addEventListener("change", () => {
    const kind = appSelect.selectedOptions[0] ? appSelect.selectedOptions[0].dataset.kind : "";
    document.getElementById("f-kind").value = kind || "";
    document.getElementById("f-function").value = "";
    document.getElementById("f-container").value = "";
  });
}

const MAX_LINES = 2000;
const logBox = document.getElementById("log");
if (logBox) {
  const status = document.getElementById("log-status");
  const source = new EventSource(logBox.dataset.stream);
  const atBottom = () => logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 40;
  source.onopen = () => { status.textContent = "Live: new lines appear as they are written."; };
  source.onerror = () => { status.textContent = "Disconnected; reconnecting…"; };
  source.addEventListener("end", () => { status.textContent = "The app stopped; no more lines."; source.close(); });
  source.onmessage = (event) => {
    const record = JSON.parse(event.data);
    const follow = atBottom();
    const line = document.createElement("div");
    line.className = "line " + record.stream;
    const meta = document.createElement("span");
    meta.className = "meta";
    const when = new Date(record.ts * 1000).toLocaleTimeString();
    meta.textContent = `${when} ${record.function} ${record.container} `;
    const text = document.createElement("span");
    text.textContent = record.line;
    line.append(meta, text);
    logBox.append(line);
    while (logBox.childElementCount > MAX_LINES) logBox.firstElementChild.remove();
    if (follow) logBox.scrollTop = logBox.scrollHeight;
  };
}
