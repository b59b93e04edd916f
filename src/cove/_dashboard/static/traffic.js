// Cove dashboard: the traffic charts of one function (uPlot), refreshed from its JSON every 2 s.
"use strict";

const figures = document.getElementById("figures");
const REFRESH_MS = 2000;
const COLORS = ["#0b57d0", "#b3261e", "#146c2e", "#8a5300", "#6a1b9a", "#5b6573"];
const charts = {};

function width(el) { return Math.max(320, el.clientWidth - 16); }

function chart(id, series, data, opts = {}) {
  const el = document.getElementById(id);
  if (charts[id]) { charts[id].setData(data); return; }
  charts[id] = new uPlot({
    width: width(el), height: 220,
    scales: { x: { time: true } },
    series: [{}, ...series.map((s, i) => ({ stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false, ...s }))],
    axes: [{}, { size: 60 }],
    ...opts,
  }, data, el);
}

function sum(list) { return list.reduce((a, b) => a + b, 0); }

async function refresh() {
  const response = await fetch(figures.dataset.source, { headers: { accept: "application/json" } });
  if (!response.ok) return;
  const d = await response.json();
  const ms = (v) => (v === null ? null : v * 1000);
  const lastMinute = d.requests.slice(-60);
  document.getElementById("requests-total").textContent = d.requests_total;
  document.getElementById("rps").textContent = (sum(lastMinute) / 60).toFixed(2);
  const p50 = d.p50_s[d.p50_s.length - 1], p99 = d.p99_s[d.p99_s.length - 1];
  document.getElementById("latency").textContent =
    p50 === null ? "—" : `${ms(p50).toFixed(1)} / ${ms(p99).toFixed(1)} ms`;
  document.getElementById("queue").textContent = d.queue_depth[d.queue_depth.length - 1];
  document.getElementById("cold-total").textContent = d.cold_starts_total;

  chart("chart-rps", [{ label: "requests/s" }], [d.seconds, d.requests]);
  const dots = { points: { show: true, size: 6 } };  // one point per minute: a lone minute still shows
  chart("chart-latency", [{ label: "p50 ms", ...dots }, { label: "p99 ms", ...dots }],
        [d.minutes, d.p50_s.map(ms), d.p99_s.map(ms)]);
  const byClass = d.status_classes.map((_, i) => d.status.map((row) => row[i]));
  chart("chart-status", d.status_classes.map((label) => ({ label })), [d.minutes, ...byClass]);
  chart("chart-queue", [{ label: "queued" }], [d.seconds, d.queue_depth]);
  chart("chart-cold", [{ label: "cold starts" }, { label: "mean s", scale: "s", ...dots }],
        [d.minutes, d.cold_starts, d.cold_start_avg_s],
        { axes: [{}, { size: 50 }, { side: 1, scale: "s", grid: { show: false } }] });
  // What the latency chart plots, for people and tests: how many requests its minutes hold.
  const latencyFigure = document.getElementById("chart-latency");
  latencyFigure.dataset.requests = String(sum(d.status.map(sum)));
  latencyFigure.dataset.updated = String(Date.now());
}

async function loop() {
  try { await refresh(); } catch (err) { console.error(err); }
  setTimeout(loop, REFRESH_MS);
}
if (figures && window.uPlot) loop();
else if (figures) window.addEventListener("load", loop);
