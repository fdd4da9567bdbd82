/* Operator dashboard: fetches the per-minute publisher statistics (publisher.views.dashboard_data) every
 * data-refresh-ms and draws them as inline SVG line charts. No libraries, no build step.
 * For tests and tools: #publisher-dashboard gets data-ready="1" after the first successful refresh and
 * data-refreshes counts them; every chart's <svg> carries data-points (drawn points with a value above zero).
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#417690", "#e07b39", "#2e7d32", "#8e44ad", "#c62828", "#00838f", "#6d4c41", "#5c6bc0"];
  var WIDTH = 640, HEIGHT = 220, MARGIN = { left: 52, right: 14, top: 12, bottom: 28 };

  var root = document.getElementById("publisher-dashboard");
  if (!root) return;
  var dataUrl = root.dataset.url;
  var refreshMs = parseInt(root.dataset.refreshMs, 10) || 5000;
  var statusLine = document.getElementById("dashboard-status");

  function svg(name, attrs, parent) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function clock(epochSeconds) {
    var d = new Date(epochSeconds * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (value <= steps[i] * power) return steps[i] * power;
    }
    return 10 * power;
  }

  function formatNumber(value, unit) {
    if (value === null || value === undefined || isNaN(value)) return "–";
    if (unit === "%") return (Math.round(value * 100) / 100) + "%";
    if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString();
    if (Math.abs(value) >= 100) return String(Math.round(value));
    return String(Math.round(value * 100) / 100);
  }

  /* series: [{name, values: [number|null, ...]}] aligned with minutes (epoch seconds). */
  function drawChart(figure, minutes, series, unit) {
    var body = figure.querySelector(".chart-body");
    var legend = figure.querySelector(".chart-legend");
    body.textContent = "";
    legend.textContent = "";
    var chart = svg("svg", {
      viewBox: "0 0 " + WIDTH + " " + HEIGHT, "class": "chart-svg", role: "img",
      "aria-label": figure.dataset.title + " (" + unit + ")"
    });
    var plotW = WIDTH - MARGIN.left - MARGIN.right, plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    var maxValue = 0;
    series.forEach(function (s) {
      s.values.forEach(function (v) { if (v !== null && v > maxValue) maxValue = v; });
    });
    var yMax = niceMax(maxValue);
    var n = Math.max(1, minutes.length - 1);
    function x(i) { return MARGIN.left + (plotW * i) / n; }
    function y(v) { return MARGIN.top + plotH - (plotH * v) / yMax; }

    for (var g = 0; g <= 4; g++) {
      var gv = (yMax * g) / 4, gy = y(gv);
      svg("line", { "class": "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: gy, y2: gy }, chart);
      var label = svg("text", { "class": "axis-label", x: MARGIN.left - 6, y: gy + 4, "text-anchor": "end" }, chart);
      label.textContent = formatNumber(gv, unit);
    }
    for (var t = minutes.length - 1; t >= 0; t -= 10) {
      var anchor = t === minutes.length - 1 ? "end" : "middle";
      var tick = svg("text", { "class": "axis-label", x: x(t), y: HEIGHT - 8, "text-anchor": anchor }, chart);
      tick.textContent = clock(minutes[t]);
    }

    var points = 0, values = 0;
    series.forEach(function (s, index) {
      var color = PALETTE[index % PALETTE.length];
      var d = "", pen = false;
      s.values.forEach(function (v, i) {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? " L " : " M ") + x(i).toFixed(1) + " " + y(v).toFixed(1);
        pen = true;
        values++;
      });
      var group = svg("g", { "class": "series", "data-series": s.name }, chart);
      if (d) svg("path", { "class": "series-line", d: d.trim(), stroke: color }, group);
      s.values.forEach(function (v, i) {
        if (v === null || v === undefined || v <= 0) return;
        var dot = svg("circle", {
          "class": "point", cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.6, fill: color,
          "data-value": v, "data-minute": minutes[i]
        }, group);
        svg("title", {}, dot).textContent = clock(minutes[i]) + "  " + s.name + ": " + formatNumber(v, unit) + " " + unit;
        points++;
      });
      var item = document.createElement("span");
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
    if (!values) {
      var empty = svg("text", { "class": "empty", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" }, chart);
      empty.textContent = "no data in the last hour";
    }
    chart.setAttribute("data-points", String(points));
    body.appendChild(chart);
  }

  function percent(values) {
    return values.map(function (v) { return v === null || v === undefined ? null : v * 100; });
  }

  function updateTiles(summary) {
    root.querySelectorAll(".tile-value[data-field]").forEach(function (node) {
      var value = summary[node.dataset.field];
      var format = node.dataset.format;
      var text;
      if (value === null || value === undefined) text = "–";
      else if (format === "percent") text = formatNumber(value * 100, "%");
      else if (format === "ms") text = formatNumber(value, "") + " ms";
      else if (format === "time") text = new Date(value).toLocaleTimeString([], { hour12: false });
      else text = typeof value === "number" ? formatNumber(value, "") : String(value);
      node.textContent = text;
    });
    var breaker = document.getElementById("tile-breaker");
    breaker.className = "tile state-" + String(summary.breaker_state || "unknown").replace(/[^a-z-]/g, "");
  }

  function render(data) {
    var minutes = data.minutes;
    var throughput = Object.keys(data.throughput).map(function (topic) {
      return { name: topic, values: data.throughput[topic] };
    });
    drawChart(document.getElementById("chart-throughput"), minutes, throughput, "events/min");
    drawChart(document.getElementById("chart-errors"), minutes, [
      { name: "error rate", values: percent(data.error_rate) },
      { name: "dead-letter rate", values: percent(data.dlq_rate) }
    ], "%");
    drawChart(document.getElementById("chart-latency"), minutes, [
      { name: "p50", values: data.latency_ms.p50 },
      { name: "p95", values: data.latency_ms.p95 },
      { name: "p99", values: data.latency_ms.p99 }
    ], "ms");
    updateTiles(data.summary);
  }

  function refresh() {
    fetch(dataUrl, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (response.redirected || type.indexOf("application/json") === -1) {
          throw new Error("session expired: reload the page to sign in again");
        }
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
          return body;
        });
      })
      .then(function (data) {
        render(data);
        root.dataset.ready = "1";
        root.dataset.refreshes = String((parseInt(root.dataset.refreshes, 10) || 0) + 1);
        statusLine.className = "dashboard-status";
        statusLine.textContent = "Updated " + new Date().toLocaleTimeString([], { hour12: false }) + " · refreshes every " +
          Math.round(refreshMs / 1000) + " s";
      })
      .catch(function (error) {
        statusLine.className = "dashboard-status error";
        statusLine.textContent = "Could not refresh (" + error.message + "); showing the last data, retrying.";
      })
      .then(function () { window.setTimeout(refresh, refreshMs); });
  }

  refresh();
})();
