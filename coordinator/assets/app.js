// The grlo dashboard: polls the coordinator's JSON API every 2 s, lists the jobs, and draws
// the selected job's charts on canvases by hand (no library, nothing loaded from elsewhere).
//
// The admin token comes from the address's fragment (#token=...), which the browser never
// sends to a server; it is kept in sessionStorage and sent as an Authorization header.
"use strict";

(() => {
  const POLL_MS = 2000;
  const TOKEN_KEY = "grlo-admin-token";

  const query = new URLSearchParams(window.location.search);
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    fragment.delete("token");
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  let selected = query.get("job") || fragment.get("job") || "";
  // The token leaves the address bar (and bookmarks, screenshots, shared links).
  showSelectionInAddress();

  /** The selected job's steps, fetched incrementally (`?after=` the newest one held). */
  let loaded = { job: "", info: null, steps: [] };
  let jobs = [];

  const byId = (id) => document.getElementById(id);

  function showSelectionInAddress() {
    const params = new URLSearchParams();
    if (selected) params.set("job", selected);
    const rest = new URLSearchParams(fragment);
    rest.delete("job");
    const search = params.toString() ? "?" + params.toString() : "";
    const hash = rest.toString() ? "#" + rest.toString() : "";
    window.history.replaceState(null, "", window.location.pathname + search + hash);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "cannot reach the coordinator (retrying every 2 s)");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : response.status + " " + response.statusText;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  function notice(text) {
    const element = byId("notice");
    element.textContent = text;
    element.hidden = !text;
  }

  // ----- numbers -----

  function finite(x) {
    return typeof x === "number" && Number.isFinite(x);
  }

  /** A round step (1, 2 or 5 times a power of ten) near `span / count`. */
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const unit = raw / power;
    const nice = unit < 1.5 ? 1 : unit < 3 ? 2 : unit < 7 ? 5 : 10;
    return nice * power;
  }

  function format(value, step) {
    if (!finite(value)) return "–";
    const size = Math.abs(value);
    if (value !== 0 && (size >= 1e6 || size < 1e-4)) return value.toExponential(1);
    const decimals = step ? Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9))) : 0;
    return value.toFixed(decimals).replace(/^-0(\.0*)?$/, "0$1");
  }

  /** A value for people: about four significant digits. */
  function show(value) {
    if (!finite(value)) return "–";
    const size = Math.abs(value);
    if (size === 0) return "0";
    if (size >= 1e6 || size < 1e-3) return value.toExponential(2);
    if (size >= 1000) return Math.round(value).toLocaleString("en-US");
    return value.toPrecision(4).replace(/\.?0+$/, "");
  }

  // ----- charts -----

  /** The charts and summary keys (assets/charts.json, the list `grlo ctl job plot` draws too). */
  let chartList = null;

  const FONT = "system-ui, 'DejaVu Sans', sans-serif";

  /**
   * Draws one line chart. `spec`: title; series (name, color, points as [x, y] with y null
   * for a gap, dash, band as [x, low, high]); zero (the y axis includes 0); xLabel.
   */
  function drawChart(canvas, spec) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);

    ctx.fillStyle = "#111827";
    ctx.font = "600 15px " + FONT;
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    ctx.fillText(spec.title, 14, 12);

    const xs = [];
    const ys = [];
    for (const series of spec.series) {
      for (const [x, y] of series.points) {
        if (finite(y)) {
          xs.push(x);
          ys.push(y);
        }
      }
      for (const [x, low, high] of series.band || []) {
        if (finite(low) && finite(high)) {
          xs.push(x);
          ys.push(low, high);
        }
      }
    }
    // The legend: each series' name and newest value, under the title.
    ctx.font = "12px " + FONT;
    let legendX = 14;
    for (const series of spec.series) {
      const last = [...series.points].reverse().find(([, y]) => finite(y));
      const text = series.name + (last ? " " + show(last[1]) : "");
      ctx.strokeStyle = series.color;
      ctx.lineWidth = 2.5;
      ctx.setLineDash(series.dash || []);
      ctx.beginPath();
      ctx.moveTo(legendX, 40);
      ctx.lineTo(legendX + 18, 40);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#374151";
      ctx.textBaseline = "middle";
      ctx.fillText(text, legendX + 24, 40);
      legendX += 24 + ctx.measureText(text).width + 18;
    }

    const top = 58;
    const bottom = height - 40;
    if (ys.length === 0) {
      ctx.fillStyle = "#6b7280";
      ctx.font = "14px " + FONT;
      ctx.textAlign = "center";
      ctx.fillText(spec.empty || "no finished steps yet", width / 2, (top + bottom) / 2);
      return;
    }

    // Y domain on round ticks.
    let low = Math.min(...ys);
    let high = Math.max(...ys);
    if (spec.zero) {
      low = Math.min(low, 0);
      high = Math.max(high, 0);
    }
    if (high === low) {
      const pad = Math.abs(high) > 0 ? Math.abs(high) * 0.1 : 1;
      low -= pad;
      high += pad;
    }
    const yStep = niceStep(high - low, 5);
    low = Math.floor(low / yStep + 1e-9) * yStep;
    high = Math.ceil(high / yStep - 1e-9) * yStep;
    const yTicks = [];
    for (let v = low; v <= high + yStep * 1e-6; v += yStep) yTicks.push(v);
    ctx.font = "12px " + FONT;
    const labelWidth = Math.max(...yTicks.map((v) => ctx.measureText(format(v, yStep)).width));
    const left = 14 + labelWidth + 8;
    const right = width - 18;

    // X domain: whole steps.
    let xLow = Math.min(...xs);
    let xHigh = Math.max(...xs);
    if (xHigh === xLow) {
      xLow = Math.max(0, xLow - 1);
      xHigh += 1;
    }
    const xStep = Math.max(1, Math.round(niceStep(xHigh - xLow, 6)));
    const xTicks = [];
    for (let v = Math.ceil(xLow / xStep) * xStep; v <= xHigh; v += xStep) xTicks.push(v);

    const px = (x) => left + ((x - xLow) / (xHigh - xLow)) * (right - left);
    const py = (y) => bottom - ((y - low) / (high - low)) * (bottom - top);

    // Grid and tick labels.
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#374151";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of yTicks) {
      const y = Math.round(py(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      ctx.fillText(format(v, yStep), left - 8, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of xTicks) {
      const x = Math.round(px(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, bottom);
      ctx.stroke();
      ctx.fillText(String(v), x, bottom + 6);
    }
    ctx.strokeStyle = "#9ca3af";
    ctx.beginPath();
    ctx.moveTo(left + 0.5, top);
    ctx.lineTo(left + 0.5, bottom + 0.5);
    ctx.lineTo(right, bottom + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "right";
    ctx.fillText(spec.xLabel || "step", right, bottom + 22);

    // Series: bands first, then lines, then points.
    ctx.save();
    ctx.beginPath();
    ctx.rect(left - 5, top - 5, right - left + 10, bottom - top + 10);
    ctx.clip();
    for (const series of spec.series) {
      const band = (series.band || []).filter(([, a, b]) => finite(a) && finite(b));
      if (band.length < 2) continue;
      ctx.fillStyle = series.color;
      ctx.globalAlpha = 0.12;
      ctx.beginPath();
      band.forEach(([x, a], i) => (i ? ctx.lineTo(px(x), py(a)) : ctx.moveTo(px(x), py(a))));
      for (const [x, , b] of [...band].reverse()) ctx.lineTo(px(x), py(b));
      ctx.closePath();
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    for (const series of spec.series) {
      ctx.strokeStyle = series.color;
      ctx.fillStyle = series.color;
      ctx.lineWidth = 2.5;
      ctx.lineJoin = "round";
      ctx.setLineDash(series.dash || []);
      ctx.beginPath();
      let drawing = false;
      for (const [x, y] of series.points) {
        if (!finite(y)) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(px(x), py(y));
        else ctx.moveTo(px(x), py(y));
        drawing = true;
      }
      ctx.stroke();
      ctx.setLineDash([]);
      const shown = series.points.filter(([, y]) => finite(y));
      if (!series.dash && shown.length <= 60) {
        for (const [x, y] of shown) {
          ctx.beginPath();
          ctx.arc(px(x), py(y), 3, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
    ctx.restore();
  }

  /** The budget chart: what is left of a budget, or what was used when there is none. */
  function budgetSpec(steps, chart) {
    const [leftColor, limitColor] = chart.colors;
    const last = steps[steps.length - 1];
    const gpuUsed = steps.some((s) => s.gpu_seconds_used > 0);
    const cpuUsed = steps.some((s) => s.cpu_seconds_used > 0);
    // GPU-hours unless the job runs on CPUs only (then its CPU-hours are what it spends).
    const gpu = !last || last.gpu_seconds_limit > 0 || gpuUsed || !cpuUsed;
    const unit = gpu ? "GPU-hours" : "CPU-hours";
    const used = (s) => (gpu ? s.gpu_seconds_used : s.cpu_seconds_used) / 3600;
    const limit = last ? (gpu ? last.gpu_seconds_limit : last.cpu_seconds_limit) / 3600 : 0;
    if (limit > 0) {
      return {
        title: chart.title + " burn-down: " + unit + " left of " + show(limit),
        zero: true,
        series: [
          {
            name: "left",
            color: leftColor,
            points: steps.map((s) => [s.step, Math.max(0, limit - used(s))]),
          },
          {
            name: "budget",
            color: limitColor,
            dash: [6, 4],
            points: steps.map((s) => [s.step, limit]),
          },
        ],
      };
    }
    return {
      title: chart.title + ": " + unit + " used (no budget set)",
      zero: true,
      series: [{ name: "used", color: leftColor, points: steps.map((s) => [s.step, used(s)]) }],
    };
  }

  /** A `prefix` chart: every key that starts with its prefix (e.g. `val/`), as logged. */
  function prefixSpec(steps, chart) {
    const keys = [];
    for (const s of steps) {
      for (const key of Object.keys(s.metrics || {})) {
        if (key.startsWith(chart.prefix) && !keys.includes(key)) keys.push(key);
      }
    }
    return {
      title: chart.title,
      empty: chart.empty,
      zero: chart.zero,
      series: keys.slice(0, chart.colors.length).map((key, i) => ({
        name: key,
        color: chart.colors[i],
        points: metric(steps, key).filter(([, y]) => finite(y)),
      })),
    };
  }

  /** A `series` chart: its keys' lines (an optional one only when some step has it). */
  function seriesSpec(steps, chart) {
    const series = [];
    for (const line of chart.series) {
      const points = metric(steps, line.key);
      if (line.optional && !points.some(([, y]) => finite(y))) continue;
      const drawn = { name: line.key, color: line.color, points };
      if (line.band_std) {
        const std = metric(steps, line.band_std);
        drawn.band = points.map(([x, y], i) => [x, y - std[i][1], y + std[i][1]]);
      }
      series.push(drawn);
    }
    return { title: chart.title, zero: chart.zero, empty: chart.empty, series };
  }

  function metric(steps, key) {
    return steps.map((s) => [s.step, s.metrics ? s.metrics[key] : null]);
  }

  function drawAll() {
    if (!chartList) return;
    const steps = loaded.steps;
    const specs = { series: seriesSpec, prefix: prefixSpec, budget: budgetSpec };
    for (const chart of chartList.charts) {
      drawChart(byId("chart-" + chart.id), specs[chart.kind](steps, chart));
    }
    drawSummary();
  }

  /** One figure and canvas per chart of the list, before the summary. */
  function buildCharts() {
    const summary = document.querySelector("#charts .grid .summary");
    for (const chart of chartList.charts) {
      const figure = document.createElement("figure");
      figure.className = "chart";
      const canvas = document.createElement("canvas");
      canvas.id = "chart-" + chart.id;
      canvas.setAttribute("aria-label", chart.title);
      figure.append(canvas);
      summary.before(figure);
    }
  }

  function drawSummary() {
    const list = byId("summary");
    list.replaceChildren();
    const last = loaded.steps[loaded.steps.length - 1];
    const rows = [];
    if (last) {
      const m = last.metrics || {};
      rows.push(["step", String(last.step)]);
      rows.push(["finished", new Date(last.time_ms).toLocaleTimeString("en-GB")]);
      for (const key of chartList.summary) {
        if (key in m) rows.push([key, show(m[key])]);
      }
    }
    const budget = loaded.info && loaded.info.budget;
    if (budget) {
      rows.push(["GPU-hours used", show(budget.gpu_hours_used) + (budget.gpu_hours_limit > 0 ? " of " + show(budget.gpu_hours_limit) : "")]);
      rows.push(["CPU-hours used", show(budget.cpu_hours_used) + (budget.cpu_hours_limit > 0 ? " of " + show(budget.cpu_hours_limit) : "")]);
    }
    if (rows.length === 0) rows.push(["", "no finished steps yet"]);
    for (const [key, value] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = value;
      list.append(dt, dd);
    }
  }

  // ----- the job list and header -----

  function select(id) {
    if (id === selected) return;
    selected = id;
    showSelectionInAddress();
    renderJobs();
    poll();
  }

  function renderJobs() {
    const body = byId("jobs").tBodies[0];
    body.replaceChildren();
    if (jobs.length === 0) {
      const row = body.insertRow();
      row.className = "empty";
      const cell = row.insertCell();
      cell.colSpan = 6;
      cell.textContent = "No jobs yet: submit one with grlo ctl job submit";
      return;
    }
    for (const job of jobs) {
      const row = body.insertRow();
      row.tabIndex = 0;
      row.dataset.job = job.id;
      if (job.id === selected) row.className = "selected";
      row.addEventListener("click", () => select(job.id));
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") select(job.id);
      });
      row.insertCell().textContent = job.id;
      row.insertCell().textContent = job.name;
      const status = document.createElement("span");
      status.className = "status " + job.status;
      status.textContent = job.status.replace("_", " ");
      row.insertCell().append(status);
      const step = row.insertCell();
      step.className = "num";
      step.textContent = job.step + " / " + (job.total_steps || "?");
      const bar = document.createElement("span");
      bar.className = "progress";
      const fill = document.createElement("span");
      fill.style.width = (job.total_steps ? Math.min(100, (100 * job.step) / job.total_steps) : 0) + "%";
      bar.append(fill);
      row.insertCell().append(bar);
      const hours = row.insertCell();
      hours.className = "num";
      hours.textContent = job.budget ? budgetText(job.budget) : "–";
    }
  }

  function budgetText(budget) {
    const gpu = budget.gpu_hours_used > 0 || budget.gpu_hours_limit > 0;
    const used = gpu ? budget.gpu_hours_used : budget.cpu_hours_used;
    const limit = gpu ? budget.gpu_hours_limit : budget.cpu_hours_limit;
    return show(used) + (limit > 0 ? " of " + show(limit) : "") + (gpu ? " GPU" : " CPU");
  }

  function renderHeader() {
    const job = loaded.info;
    byId("job-title").textContent = job ? job.name + (job.name !== job.id ? " (" + job.id + ")" : "") : "No job selected";
    const status = byId("job-status");
    status.className = "status " + (job ? job.status : "");
    status.textContent = job ? job.status.replace("_", " ") : "";
    let detail = "";
    if (job) {
      detail = "step " + job.step + " of " + (job.total_steps || "?");
      if (job.weight_version !== null) detail += " · weights v" + job.weight_version;
      if (job.message) detail += " · " + job.message;
    }
    byId("job-detail").textContent = detail;
  }

  // ----- polling -----

  let timer = 0;
  let polling = false;

  async function poll() {
    window.clearTimeout(timer);
    if (polling) {
      // One poll at a time; the running one polls again when it is done.
      timer = window.setTimeout(poll, 50);
      return;
    }
    polling = true;
    try {
      const list = await api("api/jobs");
      jobs = list.jobs;
      if (!selected && jobs.length > 0) {
        const running = jobs.filter((j) => j.status === "running");
        selected = (running.length ? running : jobs)[(running.length ? running : jobs).length - 1].id;
        showSelectionInAddress();
      }
      renderJobs();
      if (selected) await pollJob(selected);
      notice("");
      byId("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
    } catch (e) {
      if (e.status === 401) {
        notice("This coordinator needs its admin token: open the page as " + window.location.pathname + "#token=TOKEN");
      } else {
        notice(e.message);
      }
    } finally {
      polling = false;
      timer = window.setTimeout(poll, POLL_MS);
    }
  }

  async function pollJob(id) {
    if (loaded.job !== id) loaded = { job: id, info: null, steps: [] };
    const newest = loaded.steps.length ? loaded.steps[loaded.steps.length - 1].step : 0;
    const answer = await api("api/jobs/" + encodeURIComponent(id) + "?after=" + newest);
    if (loaded.job !== id) return; // another job was picked meanwhile
    loaded.info = answer.job;
    for (const step of answer.steps) {
      const held = loaded.steps.length ? loaded.steps[loaded.steps.length - 1].step : 0;
      if (step.step > held) loaded.steps.push(step);
    }
    renderHeader();
    drawAll();
    const main = byId("charts");
    main.dataset.job = id;
    main.dataset.steps = String(loaded.steps.length);
    main.dataset.status = answer.job.status;
  }

  let resizing = 0;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizing);
    resizing = window.setTimeout(() => loaded.job && drawAll(), 100);
  });

  async function start() {
    try {
      const response = await fetch("assets/charts.json", { cache: "no-store" });
      chartList = await response.json();
      buildCharts();
    } catch (e) {
      notice("cannot load the chart list (assets/charts.json): " + e.message);
    }
    poll();
  }

  start();
})();
