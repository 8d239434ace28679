// Farm and fleet dashboard, live from /api/v1/web/events (server-sent events), falling back to
// polling /api/v1/web/dashboard where the stream cannot be held open.
import { api } from "./api.js";
import { STATUS_TEXT, el, eta, percent } from "./format.js";

const POLL_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function tile(label, value, kind = "") {
  return el("div", { class: `tile ${kind}` }, el("div", { class: "value", text: String(value) }), el("div", { class: "label", text: label }));
}

function jobRows(jobs, withEta) {
  if (!jobs.length) return el("div", { class: "empty", text: withEta ? "No job is running." : "No finished job yet." });
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", { text: "Video" }), el("th", { text: "Status" }),
      el("th", { text: "Progress" }), el("th", { class: "hide-narrow", text: withEta ? "ETA" : "Error" }))),
    el("tbody", {}, jobs.map((job) => {
      const bar = el("span");
      bar.style.width = percent(job.progress);
      return el("tr", { "data-job": job.id },
        el("td", {}, el("a", { href: `#/watch/${job.id}`, text: job.title || job.id })),
        el("td", {}, el("span", { class: `badge ${job.status}`, text: STATUS_TEXT[job.status] || job.status })),
        el("td", {}, el("div", { class: "progress", role: "progressbar", "aria-label": `Progress of ${job.title}`,
          "aria-valuenow": String(Math.floor(job.progress * 100)), "aria-valuemin": "0", "aria-valuemax": "100" }, bar),
        el("span", { class: "muted", text: percent(job.progress) })),
        el("td", { class: "hide-narrow", text: withEta ? (job.status === "queued" ? "waiting" : eta(job.eta_s)) : (job.error || "–") }));
    })));
}

function chart(throughput) {
  const points = throughput.points;
  const width = 600;
  const height = 120;
  const top = Math.max(1, ...points.map((p) => p.done + p.failed));
  const slot = width / points.length;
  // Stretched to the panel's width: bars only, the labels are HTML so they keep their size.
  const graph = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Jobs finished per minute over the last hour, at most ${top} in a minute` });
  graph.append(svg("line", { class: "axis", x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5 }));
  points.forEach((p, i) => {
    const done = (p.done / top) * (height - 4);
    const failed = (p.failed / top) * (height - 4);
    if (done) graph.append(svg("rect", { class: "bar", x: i * slot + 1, y: height - done, width: slot - 2, height: done }));
    if (failed) graph.append(svg("rect", { class: "bar failed", x: i * slot + 1, y: height - done - failed, width: slot - 2, height: failed }));
  });
  const total = points.reduce((sum, p) => sum + p.done, 0);
  const failures = points.reduce((sum, p) => sum + p.failed, 0);
  return el("div", { class: "chart" },
    el("div", { class: "muted axis-label", text: `peak ${top} per minute` }), graph,
    el("div", { class: "ticks muted" }, el("span", { text: "60 min ago" }), el("span", { text: "30 min" }), el("span", { text: "now" })),
    el("div", { id: "throughput-total", text: `${total} job${total === 1 ? "" : "s"} finished in the last hour` +
      (failures ? `, ${failures} failed` : "") }));
}

function fleetTable(fleet) {
  if (!fleet || !fleet.instances || !fleet.instances.length) return null;
  const health = (status) => (status === "passing" ? "ready" : status === "critical" ? "failed" : status === "unknown" ? "private" : "transcoding");
  return [el("h2", { text: `Fleet (${fleet.registry === "none" ? "this node" : fleet.registry})` }),
    el("table", { id: "fleet" },
      el("thead", {}, el("tr", {}, el("th", { text: "Role" }), el("th", { text: "Instance" }), el("th", { class: "hide-narrow", text: "Node" }), el("th", { text: "Health" }))),
      el("tbody", {}, fleet.instances.map((i) => el("tr", {},
        el("td", { text: i.role }), el("td", { text: i.port ? `${i.address}:${i.port}` : i.address }),
        el("td", { class: "hide-narrow", text: `${i.node || ""} ${i.version ? `v${i.version}` : ""}` }),
        el("td", {}, el("span", { class: `badge ${health(i.status)}`, text: i.status }))))))];
}

function render(box, data) {
  const farm = data.farm;
  const parts = [];
  if (farm) {
    parts.push(el("div", { class: "tiles", id: "farm" },
      tile("Queued jobs", farm.queue_length),
      tile("Running jobs", farm.running_tasks),
      tile("Workers active", farm.active_workers, farm.active_workers ? "good" : ""),
      tile("Workers idle", farm.idle_workers),
      tile("Workers unhealthy", farm.unhealthy_workers, farm.unhealthy_workers ? "bad" : ""),
      tile("Jobs done", farm.total_tasks_processed),
      tile("Jobs failed", farm.total_tasks_failed, farm.total_tasks_failed ? "bad" : ""),
      tile("Avg. job time", `${farm.average_task_time.toFixed(1)} s`)));
  } else {
    parts.push(el("div", { class: "notice", "data-kind": "error", text: `The farm does not answer: ${data.farm_error || "unknown error"}` }));
  }
  parts.push(el("h2", { text: "Running jobs" }), el("div", { id: "jobs" }, jobRows(data.jobs, true)),
    el("h2", { text: "Throughput, last hour" }), chart(data.throughput),
    el("h2", { text: "Recently finished" }), el("div", { id: "recent" }, jobRows(data.recent, false)));
  const fleet = fleetTable(data.fleet);
  if (fleet) parts.push(...fleet);
  box.replaceChildren(...parts);
}

export async function mount(main) {
  const live = el("span", { class: "live", id: "live", text: "connecting" });
  const box = el("div", { id: "dashboard", "aria-live": "off" });
  main.append(el("div", { class: "toolbar" }, el("h1", { text: "Farm dashboard" }), live), box);
  let source = null;
  let timer = null;
  let stopped = false;

  async function poll() {
    try {
      render(box, await api("/api/v1/web/dashboard"));
      live.textContent = "updated every 3 s";
      live.classList.add("on");
    } catch (error) {
      live.textContent = `offline: ${error.message}`;
      live.classList.remove("on");
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  if (window.EventSource) {
    let failures = 0;
    source = new EventSource("/api/v1/web/events");
    source.addEventListener("dashboard", (event) => {
      failures = 0;
      render(box, JSON.parse(event.data));
      live.textContent = "live";
      live.classList.add("on");
    });
    source.onerror = () => {
      live.classList.remove("on");
      live.textContent = "reconnecting";
      // A proxy that will not hold the stream open: poll instead.
      if (++failures >= 3 && !stopped) {
        source.close();
        source = null;
        poll();
      }
    };
  } else {
    poll();
  }
  return () => {
    stopped = true;
    if (source) source.close();
    clearTimeout(timer);
  };
}
