// Bastion dashboard: renders the snapshots the server pushes over server-sent events.
"use strict";

const state = { selected: null, chart: null, chartKeys: "" , data: null };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ago(seconds) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
}

function attestation(value) {
  if (!value) return "–";
  if (value.devices) return value.devices.length ? value.devices.join(", ") : "none";
  const verdict = value.accepted === undefined ? JSON.stringify(value)
    : value.accepted ? "ok" + (value.tcb_status ? ", TCB " + value.tcb_status : "") : "refused: " + (value.reason || "");
  return value.simulated ? "SIMULATED " + verdict : verdict;
}

function renderSites(sites) {
  const body = document.querySelector("#sites tbody");
  body.replaceChildren();
  for (const site of sites) {
    const row = el("tr");
    row.dataset.site = site.name;
    row.append(el("td", site.name));
    const status = el("td");
    status.append(el("span", site.online ? "online" : "offline",
      "badge site-status " + (site.online ? "online" : "offline")));
    row.append(status, el("td", ago(site.last_seen)), el("td", site.datasets.join(", ") || "–"),
      el("td", attestation(site.attestation)), el("td", site.certificate_expiry || "–"));
    body.append(row);
  }
}

function renderJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  if (!state.selected && jobs.length) state.selected = jobs[jobs.length - 1].id;
  for (const job of jobs) {
    const row = el("tr", null, "job" + (job.id === state.selected ? " selected" : ""));
    row.dataset.job = job.id;
    const st = el("td");
    st.append(el("span", job.state, "badge " + job.state));
    const p = job.progress;
    row.append(el("td", job.id), el("td", job.owner), el("td", job.plan_name), st,
      el("td", p.rounds_done + " / " + p.rounds_total), el("td", duration(p.eta_seconds)));
    row.addEventListener("click", () => { state.selected = job.id; render(state.data); });
    body.append(row);
  }
}

function renderChart(progress) {
  const series = progress.series;
  const keys = Object.keys(series).filter((k) => k !== "round").sort();
  const container = document.getElementById("chart");
  const data = [series.round, ...keys.map((k) => series[k])];
  const signature = state.selected + "|" + keys.join(",");
  if (!state.chart || state.chartKeys !== signature) {
    if (state.chart) state.chart.destroy();
    container.replaceChildren();
    const colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    state.chart = new uPlot({
      width: Math.max(320, container.clientWidth || 640), height: 300,
      scales: { x: { time: false } },
      axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
      series: [{ label: "round" }, ...keys.map((k, i) => ({ label: k, stroke: colors[i % colors.length], width: 2, points: { show: true } }))],
    }, data, container);
    state.chartKeys = signature;
  } else {
    state.chart.setData(data);
  }
  container.dataset.points = String(series.round.length);
}

function renderDetail(job) {
  const detail = document.getElementById("job-detail");
  if (!job) { detail.hidden = true; return; }
  detail.hidden = false;
  const p = job.progress;
  document.getElementById("job-id").textContent = job.id;
  document.getElementById("round-counter").textContent = String(p.rounds_done);
  document.getElementById("round-total").textContent = String(p.rounds_total);
  renderChart(p);
  const body = document.querySelector("#participation tbody");
  body.replaceChildren();
  for (const [site, n] of Object.entries(p.participation)) {
    const row = el("tr");
    row.append(el("td", site), el("td", n.results), el("td", n.failed), el("td", n.lost));
    body.append(row);
  }
  const drops = document.getElementById("dropouts");
  drops.replaceChildren(...(p.dropouts.length ? p.dropouts.map((d) => el("li", "round " + d.round + ": " + d.sites.join(", ") + " (" + d.why + ")")) : [el("li", "none")]));
  const priv = p.privacy;
  document.getElementById("privacy").textContent = priv
    ? "ε = " + Number(priv.epsilon).toFixed(3) + " at δ = " + priv.delta + (priv.epsilon_budget !== undefined && priv.epsilon_budget !== null ? " of a budget of ε = " + priv.epsilon_budget : "") + (priv.stopped ? "; stopped: " + priv.stopped : "")
    : "no differential privacy";
  document.getElementById("final").textContent = p.final_metrics
    ? Object.entries(p.final_metrics).map(([t, m]) => t + ": " + Object.entries(m).map(([k, v]) => k + "=" + Number(v).toFixed(4)).join(" ")).join("; ")
    : "not yet evaluated";
  const log = document.getElementById("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = job.log.join("\n");
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function render(data) {
  if (!data) return;
  state.data = data;
  document.getElementById("viewer").textContent = data.viewer.name + " (" + data.viewer.role + ")";
  renderSites(data.sites);
  renderJobs(data.jobs);
  renderDetail(data.jobs.find((j) => j.id === state.selected));
}

function connect() {
  const source = new EventSource("/api/stream");
  const badge = document.getElementById("connection");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "badge online"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting"; badge.className = "badge offline"; });
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
}

document.addEventListener("DOMContentLoaded", connect);
