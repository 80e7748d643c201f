// triobench report: builds the page from the JSON in #data with uPlot (embedded above).
// Text from the results is only ever set with textContent, never parsed as markup.
"use strict";
(function () {
  const problems = document.getElementById("problems");
  function problem(text) {
    problems.hidden = false;
    problems.appendChild(el("div", {}, "report script error: " + text));
    document.body.dataset.rendered = "error";
  }
  window.addEventListener("error", (e) => problem(String(e.message)));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  const data = JSON.parse(document.getElementById("data").textContent);
  const main = document.getElementById("report");
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                   "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  const EVENT_COLOURS = {stage: "#444", stall: "#e6a700", disconnect: "#d62728",
                         recovery: "#2ca02c", failure: "#8b0000"};
  const width = () => Math.max(480, Math.min(1200, main.clientWidth - 20));
  let plots = 0;

  function section(title, note) {
    const s = el("section", {}, el("h2", {}, title));
    if (note) s.appendChild(el("p", {class: "note"}, note));
    main.appendChild(s);
    return s;
  }

  function fmt(v) {
    if (v === null || v === undefined || v === "") return "";
    const n = Number(v);
    if (typeof v === "number" || (v !== "" && !isNaN(n) && /^-?[0-9.]+$/.test(String(v)))) {
      if (Math.abs(n) >= 1000) return n.toLocaleString("en-US", {maximumFractionDigits: 1});
      return String(Math.round(n * 100) / 100);
    }
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  function table(columns, rows, labels) {
    const head = el("tr", {}, ...columns.map((c) => el("th", {}, (labels && labels[c]) || c)));
    const body = rows.map((r) => el("tr", {}, ...columns.map((c) => {
      const v = r[c];
      return el("td", {class: typeof v === "number" || /^-?[0-9.,]+$/.test(String(v)) ? "num" : ""},
                fmt(v));
    })));
    return el("div", {class: "scroll"}, el("table", {}, el("thead", {}, head), el("tbody", {}, ...body)));
  }

  // Stage spans, warmup and timeline events drawn on every time axis.
  function timeMarks() {
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
          const x = (t) => u.valToPos(t, "x", true);
          ctx.save();
          ctx.font = `${10 * devicePixelRatio}px sans-serif`;
          for (const s of data.stages) {
            const a = x(s.start);
            if (s.warmup_end !== null && s.warmup_end !== undefined) {
              const b = x(s.warmup_end);
              ctx.fillStyle = "rgba(255, 200, 0, 0.15)";
              ctx.fillRect(a, top, b - a, height);
              ctx.fillStyle = "#a07000";
              ctx.fillText("warmup", a + 3, top + 24 * devicePixelRatio);
            }
            if (a < u.bbox.left || a > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = ctx.fillStyle = EVENT_COLOURS.stage;
            ctx.setLineDash([]);
            ctx.lineWidth = devicePixelRatio;
            ctx.beginPath(); ctx.moveTo(a, top); ctx.lineTo(a, top + height); ctx.stroke();
            ctx.fillText(s.stage, a + 3, top + 12 * devicePixelRatio);
          }
          for (const e of data.events) {
            const px = x(e.t);
            if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = EVENT_COLOURS[e.kind] || "#999";
            ctx.setLineDash([4, 3]);
            ctx.lineWidth = devicePixelRatio;
            ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, top + height); ctx.stroke();
            ctx.fillStyle = ctx.strokeStyle;
            ctx.font = `${10 * devicePixelRatio}px sans-serif`;
            const label = e.kind + (e.count > 1 ? " x" + e.count : "");
            ctx.fillText(label, px + 3, top + 12 * devicePixelRatio);
          }
          ctx.restore();
        }],
      },
    };
  }

  // log axes: 0.001, 0.01, ... 1, 10, 1,000 (never rounded to 0)
  const logTicks = (u, vals) => vals.map((v) => v === null ? "" :
    v >= 1 ? v.toLocaleString("en-US") : String(Number(v.toPrecision(1))));

  function plot(parent, title, aligned, opts) {
    opts = opts || {};
    const names = Object.keys(aligned.series || {});
    if (!aligned.x || aligned.x.length === 0 || names.length === 0) {
      parent.appendChild(el("p", {class: "note"}, title + ": no data"));
      return;
    }
    const log = !!opts.log;
    const columns = names.map((n) => aligned.series[n].map((v) =>
      v === null || v === undefined || (log && !(v > 0)) ? null : v));
    const series = [{label: opts.xLabel || "elapsed s"}].concat(names.map((n, i) => ({
      label: n,
      stroke: (opts.colour && opts.colour(n, i)) || PALETTE[i % PALETTE.length],
      width: 1.5,
      dash: opts.dash ? opts.dash(n) : undefined,
      spanGaps: false,
      points: {show: aligned.x.length < 60},
      value: (u, v) => v === null ? "-" : fmt(v),
    })));
    const box = el("div", {class: "plot"});
    parent.appendChild(box);
    new uPlot({
      title: title,
      width: width(),
      height: 300,
      scales: {x: {time: false, distr: opts.logX ? 3 : 1}, y: {distr: log ? 3 : 1}},
      axes: [{label: opts.xLabel || "elapsed s (since the run started)",
               values: opts.logX ? logTicks : undefined},
             {label: opts.yLabel || "", size: 70, values: log ? logTicks : undefined}],
      series: series,
      plugins: opts.time === false ? [] : [timeMarks()],
      cursor: {drag: {x: true, y: false}},
    }, [aligned.x].concat(columns), box);
    plots += 1;
  }

  // --- header
  const run = data.run;
  document.title = data.title;
  main.appendChild(el("h1", {}, data.title));
  const facts = [
    ["status", `${run.status} (exit ${run.exit_code})`], ["run id", run.run_id],
    ["started (UTC)", run.started_at], ["ended (UTC)", run.ended_at],
    ["triobench", `${run.software}, protocol ${run.protocol}`],
    ["controller", run.controller ? `${run.controller.hostname}: ${run.controller.command_line}` : ""],
    ["start skew ms", run.start_skew_ms ? JSON.stringify(run.start_skew_ms) : ""],
  ];
  if (run.abort_reason) facts.push(["aborted", run.abort_reason]);
  if (run.abort_cleanup) facts.push(["cleanup after abort", run.abort_cleanup]);
  main.appendChild(el("dl", {class: "facts"}, ...facts.flatMap(([k, v]) =>
    [el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "" : String(v))])));
  if (run.errors && run.errors.length) {
    main.appendChild(el("ul", {class: "errors"}, ...run.errors.map((e) => el("li", {}, e))));
  }

  // --- summaries
  const summaryColumns = ["op", "ops", "ops_per_s", "mib_per_s", "errors", "mean_us", "p50_us",
                          "p90_us", "p99_us", "p999_us", "max_us", "seconds"];
  const s1 = section("Summary", "Per stage and op kind; percentiles from the merged histograms of every agent (exact, never averaged).");
  for (const stage of ["workload", "prepare", "cleanup"]) {
    const rows = (data.summaries || {})[stage];
    if (!rows) continue;
    s1.appendChild(el("h3", {}, stage));
    s1.appendChild(table(summaryColumns, rows));
    const sized = (data.sizes || {})[stage];
    if (sized && sized.length) {
      s1.appendChild(el("h4", {}, `${stage} by object size`));
      s1.appendChild(el("p", {class: "note"}, "Each op kind split by the bytes an operation moved (sai3-bench's size buckets; metadata operations are 'zero'). Errors are counted on the op kind's row only."));
      s1.appendChild(table(["op", "size"].concat(summaryColumns.slice(1)), sized));
    }
  }

  // --- over time
  const t = data.throughput;
  const s2 = section("Throughput over time",
    "One point per stats window, aligned on the controller's clock. 'all' is the sum of the agents that reported in the window. Drag to zoom, double-click to reset, click a legend entry to hide it. Vertical lines: stage starts and timeline events; shaded: warmup.");
  const withAll = (perKind, all) => {
    const merged = {x: perKind.x, series: Object.assign({}, perKind.series)};
    if (all.x && all.x.length) {
      const at = new Map(all.x.map((x, i) => [x, all.series.all[i]]));
      merged.x = Array.from(new Set(perKind.x.concat(all.x))).sort((a, b) => a - b);
      for (const k of Object.keys(perKind.series)) {
        const m = new Map(perKind.x.map((x, i) => [x, perKind.series[k][i]]));
        merged.series[k] = merged.x.map((x) => m.has(x) ? m.get(x) : null);
      }
      merged.series.all = merged.x.map((x) => at.has(x) ? at.get(x) : null);
    }
    return merged;
  };
  const thick = (n, i) => n === "all" ? "#000" : PALETTE[i % PALETTE.length];
  plot(s2, "ops/s by op kind (all stages)", withAll(t.ops, t.all_ops), {yLabel: "ops/s", colour: thick});
  plot(s2, "MiB/s by op kind", withAll(t.mib, t.all_mib), {yLabel: "MiB/s", colour: thick});
  plot(s2, "workload ops/s per load host", data.hosts_over_time, {yLabel: "ops/s"});
  plot(s2, "workload MiB/s per load host", data.hosts_mib_over_time, {yLabel: "MiB/s"});
  plot(s2, "agents reporting per window", {x: t.agents_reporting.x,
       series: {agents: (t.agents_reporting.series.all || [])}}, {yLabel: "agents"});

  const s3 = section("Latency over time", "Workload windows: p50 (solid), p99 (dashed), p99.9 (dotted) per op kind, log scale.");
  const kinds = Array.from(new Set(Object.keys(data.latency.series).map((n) => n.split(" ")[0])));
  plot(s3, "latency percentiles per window (us)", data.latency, {
    log: true, yLabel: "us",
    colour: (n) => PALETTE[kinds.indexOf(n.split(" ")[0]) % PALETTE.length],
    dash: (n) => n.endsWith("p50") ? undefined : n.endsWith("p99") ? [6, 3] : [2, 2],
  });

  const s4 = section("Latency distribution", "From histograms.json: the fraction of operations at or below each latency (CDF), and the tail (fraction above), both on a log latency axis.");
  for (const stage of ["workload", "prepare", "cleanup"]) {
    const cdf = data.cdf[stage];
    if (!cdf) continue;
    plot(s4, `${stage}: fraction of operations <= latency`, cdf,
         {logX: true, time: false, xLabel: "latency us (log)", yLabel: "fraction"});
    const tail = {x: cdf.x, series: {}};
    for (const [k, v] of Object.entries(cdf.series)) tail.series[k] = v.map((f) => 1 - f);
    plot(s4, `${stage}: fraction of operations > latency (tail)`, tail,
         {logX: true, log: true, time: false, xLabel: "latency us (log)", yLabel: "fraction (log)"});
  }

  // --- tables
  const s5 = section("Load hosts and agents", "Workload numbers per load host (its agents merged) and per agent.");
  if (data.hosts.length) s5.appendChild(table(["host"].concat(summaryColumns.slice(1)), data.hosts));
  s5.appendChild(table(["agent", "host", "state", "ops_per_s", "mib_per_s", "p50_us", "p99_us",
                        "errors", "clock_offset_ms", "disconnects", "failure"], data.agents));

  const s6 = section("Timeline", "Stage starts, and every stall, disconnect, recovery and failure (seconds since the run started).");
  const timeline = data.stages.map((s) => ({t: s.start, kind: "stage", label: s.stage + " starts", count: 1,
    detail: s.warmup_end ? `warmup until ${fmt(s.warmup_end)} s` : ""})).concat(data.events)
    .sort((a, b) => a.t - b.t);
  s6.appendChild(table(["t", "kind", "label", "count", "detail"], timeline));

  const s7 = section("Environment", "Each agent's host and target as it reported them, and the controller's.");
  const envKeys = Array.from(new Set(Object.values(data.environment).flatMap((e) => Object.keys(e))));
  s7.appendChild(table(["agent"].concat(envKeys),
    Object.entries(data.environment).map(([id, e]) => Object.assign({agent: id}, e))));
  if (run.controller) s7.appendChild(table(Object.keys(run.controller), [run.controller]));

  const s8 = section("Configuration", "config.yaml as run.");
  s8.appendChild(el("pre", {}, data.config || "(not found)"));

  document.body.dataset.plots = String(plots);
  if (document.body.dataset.rendered !== "error") document.body.dataset.rendered = "ok";
})();
