// curator jobs dashboard: polls the JSON API every second and renders it.
// Every text from the job store goes through textContent (never innerHTML).
"use strict";

const POLL_MS = 1000;
let selected = null;          // job id shown in the detail panel
const rendered = {};          // section -> JSON of what it shows (re-render only on change)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "style") setStyle(node, value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Inline style attributes are blocked by the page's Content-Security-Policy; styles set
// through the CSSOM are not.
function setStyle(node, declarations) {
  for (const declaration of declarations.split(";")) {
    const at = declaration.indexOf(":");
    if (at > 0) node.style.setProperty(declaration.slice(0, at).trim(),
                                       declaration.slice(at + 1).trim());
  }
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function fmtInt(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${Number((s * 1e3).toPrecision(3))} ms`;
  if (s < 60) return `${Number(s.toPrecision(3))} s`;
  if (s < 3600) {
    const r = Math.round(s);
    return `${Math.floor(r / 60)} min ${String(r % 60).padStart(2, "0")} s`;
  }
  const r = Math.round(s);
  return `${Math.floor(r / 3600)} h ${String(Math.floor((r % 3600) / 60)).padStart(2, "0")} min`;
}

function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  const value = r >= 100 ? Math.round(r).toLocaleString("en-US") : Number(r.toPrecision(3));
  return `${value} indices/s`;
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"
               : "–";
}

function stateBadge(state) {
  return el("span", {class: `state state-${state}`}, state);
}

function changed(section, data) {
  const key = JSON.stringify(data);
  if (rendered[section] === key) return false;
  rendered[section] = key;
  return true;
}

async function getJSON(path) {
  // Resolved against the page without the user:password its URL may carry: fetch() refuses
  // such URLs, and the browser sends the credentials it has for the page anyway.
  const url = new URL(path, location.href);
  url.username = "";
  url.password = "";
  const response = await fetch(url, {cache: "no-store", credentials: "same-origin"});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function selectJob(jobId) {
  if (selected !== jobId) {
    selected = jobId;
    for (const key of Object.keys(rendered)) delete rendered[key];
    history.replaceState(null, "", `#job=${encodeURIComponent(jobId)}`);
  }
}

function renderJobs(data) {
  const body = document.querySelector("#jobs tbody");
  document.getElementById("no-jobs").hidden = data.jobs.length > 0;
  const rows = data.jobs.map((job) => {
    const bar = el("div", {class: "mini-progress"},
      el("div", {class: "bar-done", style: `width:${pct(job.done, job.total)}%`}),
      el("div", {class: "bar-failed", style: `width:${pct(job.failed, job.total)}%`}));
    const row = el("tr", {"data-job": job.job_id, class: job.job_id === selected ? "selected" : ""},
      el("td", {class: "job-link"}, job.job_id),
      el("td", {}, stateBadge(job.state)),
      el("td", {}, bar, el("span", {class: "counts"},
        `${fmtInt(job.done)} done, ${fmtInt(job.failed)} failed / ${fmtInt(job.total)}`)),
      el("td", {class: "num"}, fmtRate(job.state === "running"
        ? job.rate_current ?? job.rate_average : job.rate_average)),
      el("td", {}, job.source),
      el("td", {class: "num"}, fmtSeconds(data.now - job.created)));
    row.addEventListener("click", () => { selectJob(job.job_id); poll(); });
    return row;
  });
  body.replaceChildren(...rows);
}

function pct(part, total) {
  return total ? Math.min(100, (100 * part) / total) : 0;
}

function renderDetail(job) {
  document.getElementById("job").hidden = false;
  text("job-id", job.job_id);
  document.getElementById("job-state").replaceWith(
    Object.assign(stateBadge(job.state), {id: "job-state"}));
  text("job-source", `${job.components.join(" → ")} · queue ${job.queue || "–"} · created ` +
       `${fmtTime(job.created)}${job.finished ? ` · finished ${fmtTime(job.finished)}` : ""}` +
       (job.retries ? ` · retry rounds ${job.retries}` : ""));
  const error = document.getElementById("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `Job error: ${job.error}` : "";
  const warning = document.getElementById("job-warning");
  const noWorkers = job.state === "running" && job.nodes_live === 0;
  warning.hidden = !noWorkers;
  warning.textContent = noWorkers ? `No live worker consumes queue "${job.queue}": start ` +
    `curator-worker -Q ${job.queue}, or check the workers' broker.` : "";
  document.getElementById("progress-bar").style.width = `${pct(job.done, job.total)}%`;
  document.getElementById("progress-failed").style.width = `${pct(job.failed, job.total)}%`;
  document.getElementById("progress-flight").style.width = `${pct(job.in_flight, job.total)}%`;
  text("count-done", fmtInt(job.done));
  text("count-failed", fmtInt(job.failed));
  text("count-in-flight", fmtInt(job.in_flight));
  text("count-pending", fmtInt(job.pending));
  text("count-total", fmtInt(job.total));
  text("percent", `${Number(job.percent).toFixed(1)}%`);
  text("rate-current", fmtRate(job.rate_current));
  text("rate-average", fmtRate(job.rate_average));
  text("elapsed", fmtSeconds(job.elapsed_seconds));
  text("eta", job.eta_seconds === null ? "–" : fmtSeconds(job.eta_seconds));
  text("batches", `${fmtInt(job.committed_batches)} of ${fmtInt(job.batches)} committed`);
  text("batches-in-flight", fmtInt(job.batches_in_flight));
  text("workers-active", fmtInt(job.workers_active));
  text("nodes-live", `${fmtInt(job.nodes_live)} (${fmtInt(job.processes_live)} processes)`);
  renderThroughput(job.throughput);
  if (changed("pipeline", job.pipeline)) renderPipeline(job.pipeline);
  renderLanes(job);
  if (changed("stages", [job.stages, job.stages_estimated])) renderStages(job);
  if (changed("failures", [job.failure_groups, job.failed])) renderFailures(job);
  if (changed("options", job.options)) renderOptions(job.options);
}

function renderThroughput(series) {
  if (!changed("throughput", series)) return;
  const box = document.getElementById("throughput");
  const rates = series.rates;
  const max = Math.max(...rates, 0);
  if (!max) {
    box.replaceChildren(el("p", {class: "muted"}, "No batch committed yet."));
    return;
  }
  const bars = rates.map((r, n) => el("div", {
    class: "tp-bar", style: `height:${(100 * r) / max}%`,
    title: `${fmtSeconds(n * series.bin_seconds)}: ${fmtRate(r)}`}));
  box.replaceChildren(el("div", {class: "tp-bars"}, bars),
    el("div", {class: "muted tp-legend"},
      `peak ${fmtRate(max)}; bins of ${fmtSeconds(series.bin_seconds)}`));
}

function renderPipeline(pipeline) {
  const items = pipeline.map((c) => el("li", {class: `component role-${c.role}`},
    el("div", {class: "role"}, c.role),
    el("div", {class: "component-name"}, c.name),
    el("div", {class: "module muted"}, c.module),
    el("dl", {class: "params"}, Object.entries(c.params).map(([k, v]) =>
      el("div", {}, el("dt", {}, k), el("dd", {}, typeof v === "string" ? v
                                                   : JSON.stringify(v)))))));
  document.getElementById("pipeline").replaceChildren(...items);
}

function renderLanes(job) {
  const box = document.getElementById("lanes");
  if (!job.lanes.length) {
    box.replaceChildren(el("p", {class: "muted"}, "No worker has taken a batch yet."));
    return;
  }
  const nowRel = job.now - job.t0;
  const span = Math.max(job.span_seconds, job.state === "running" ? nowRel : 0, 1e-3);
  const lanes = job.lanes.map((lane) => {
    const bars = lane.bars.map(([start, end, n, attempt]) => el("div", {
      class: attempt > 1 ? "lane-bar redelivered" : "lane-bar",
      style: `left:${(100 * start) / span}%;width:${Math.max((100 * (end - start)) / span, 0.2)}%`,
      title: `${n} indices, ${fmtSeconds(end - start)}` + (attempt > 1 ? `, attempt ${attempt}` : "")}));
    if (lane.running_since !== null) {
      bars.push(el("div", {class: "lane-bar running",
        style: `left:${(100 * lane.running_since) / span}%;` +
               `width:${Math.max((100 * (nowRel - lane.running_since)) / span, 0.5)}%`,
        title: `running for ${fmtSeconds(nowRel - lane.running_since)}`}));
    }
    return el("div", {class: "lane", "data-lane": lane.label},
      el("div", {class: "lane-label"}, lane.label,
        el("span", {class: "muted"}, ` ${fmtInt(lane.batches)} batches, ` +
          `${fmtInt(lane.indices)} indices, busy ${fmtSeconds(lane.busy)}` +
          (lane.redelivered ? `, ${lane.redelivered} redelivered` : "") +
          (lane.running_since !== null ? ", running" : ""))),
      el("div", {class: "lane-track"}, bars));
  });
  box.replaceChildren(...lanes,
    el("div", {class: "muted lane-axis"}, `0 – ${fmtSeconds(span)} since the job was created`));
}

function renderStages(job) {
  const body = document.querySelector("#stages tbody");
  text("stages-note", job.stages_estimated
    ? "(summed over indices; sampled on fast indices, so estimated)" : "(summed over indices)");
  if (!job.stages.length) {
    body.replaceChildren(el("tr", {}, el("td", {colspan: "3", class: "muted"},
      job.options && job.options.metrics === false ? "Metrics are off for this job."
                                                   : "No stage timings yet.")));
    return;
  }
  body.replaceChildren(...job.stages.map((s) => el("tr", {},
    el("td", {}, s.stage), el("td", {class: "num"}, fmtSeconds(s.seconds)),
    el("td", {}, el("div", {class: "share"}, el("div", {style: `width:${100 * s.share}%`})),
      ` ${(100 * s.share).toFixed(1)}%`))));
}

function renderFailures(job) {
  const box = document.getElementById("failures");
  const nGroups = job.failure_groups_total;
  text("failures-count", job.failed ? `(${fmtInt(job.failed)} ` +
    `${job.failed === 1 ? "index" : "indices"} in ${fmtInt(nGroups)} ` +
    `${nGroups === 1 ? "group" : "groups"})` : "");
  if (!job.failure_groups.length) {
    box.replaceChildren(el("p", {class: "muted"}, "No failed indices."));
    return;
  }
  const groups = job.failure_groups.map((g) => el("div", {class: "failure-group"},
    el("div", {class: "failure-head"},
      el("span", {class: "failure-count"}, `${fmtInt(g.count)} ×`), " ",
      el("span", {class: "failure-type"}, g.type), ": ",
      el("span", {class: "failure-message"}, g.message.split("\n")[0])),
    el("div", {class: "failure-indices"}, `indices ${g.ranges}`,
      el("span", {class: "muted"}, ` · ${g.kinds.join(", ") || "error"}` +
        (g.hosts.length ? ` · on ${g.hosts.join(", ")}` : ""))),
    g.traceback ? el("details", {}, el("summary", {}, `traceback of index ${g.example}`),
                     el("pre", {}, g.traceback)) : null));
  if (job.failure_groups_total > job.failure_groups.length) {
    groups.push(el("p", {class: "muted"}, `… and ${job.failure_groups_total -
      job.failure_groups.length} more groups (curator-jobs failures ${job.job_id})`));
  }
  box.replaceChildren(...groups);
}

function renderOptions(options) {
  const rows = Object.entries(options).map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", {}, JSON.stringify(v))));
  document.querySelector("#options tbody").replaceChildren(...rows);
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const list = await getJSON("api/jobs");
    if (!selected && list.jobs.length) selectJob(list.jobs[0].job_id);
    renderJobs(list);
    if (selected) {
      try {
        renderDetail(await getJSON(`api/jobs/${encodeURIComponent(selected)}`));
      } catch (error) {
        if (error.status !== 404) throw error;
        document.getElementById("job").hidden = true;
        selected = null;
      }
    }
    text("connection", `updated ${new Date().toISOString().slice(11, 19)} UTC`);
    document.getElementById("connection").className = "muted";
  } catch (error) {
    text("connection", `cannot reach the dashboard: ${error.message}`);
    document.getElementById("connection").className = "error-inline";
  } finally {
    polling = false;
  }
}

const fromHash = /job=([^&]+)/.exec(location.hash);
if (fromHash) selected = decodeURIComponent(fromHash[1]);
poll();
setInterval(poll, POLL_MS);
