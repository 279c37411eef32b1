// conpaassql web front-end: live tables and charts, and the dump upload
// with a progress bar.  Plain DOM, no libraries; every value from the
// server is put into the page with textContent, never as HTML.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var POINTS = 60;
  var SVG = "http://www.w3.org/2000/svg";
  var COLUMNS = ["ID", "Name", "IP", "State", "Role", "MySQL running", "Lag", "Actions"];

  function meta(name) {
    var el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") : "";
  }

  var base = meta("gui-base");
  var csrf = meta("csrf-token");

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function text(value, unknown) {
    if (value === null || value === undefined || value === "") {
      return unknown === undefined ? "unknown" : unknown;
    }
    if (value === true) { return "yes"; }
    if (value === false) { return "no"; }
    return String(value);
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  // Poll a JSON endpoint of the front-end; stop polling while the tab is hidden.
  function poll(path, onData, onError) {
    function again() { window.setTimeout(tick, POLL_MS); }
    function tick() {
      if (document.hidden) { again(); return; }
      var xhr = new XMLHttpRequest();
      xhr.open("GET", base + path);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.onload = function () {
        var data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status === 401 && data && data.signIn) {
          window.location.assign(data.signIn);
          return;
        }
        if (data) { onData(data); } else { onError("the front-end sent an unreadable answer"); }
        again();
      };
      xhr.onerror = function () {
        onError("the front-end cannot be reached; retrying");
        again();
      };
      xhr.send();
    }
    tick();
  }

  function postForm(action, back, label, ariaLabel) {
    return el("form", { method: "post", action: base + action }, [
      el("input", { type: "hidden", name: "csrf", value: csrf }),
      el("input", { type: "hidden", name: "back", value: back }),
      el("button", { type: "submit", "class": "button", "aria-label": ariaLabel }, [label])
    ]);
  }

  // -- nodes table --------------------------------------------------------

  function nodeRow(row) {
    var id = String(row.id);
    var state = text(row.state);
    var stateCell = [el("span", { "class": "state state-" + state }, [state])];
    if (row.error) { stateCell.push(el("span", { "class": "row-error" }, [String(row.error)])); }
    var cells = [
      [el("a", { href: base + "nodes/" + encodeURIComponent(id) }, [id])],
      [text(row.name, "")],
      [text(row.ip, "")],
      stateCell,
      [text(row.role, "")],
      [text(row.mysql)],
      [row.lag === null || row.lag === undefined ? "\u2014" : row.lag + " s"],
      [el("div", { "class": "actions" }, [
        postForm("nodes/" + id + "/master", "nodes", "Make master", "Make node " + id + " the master"),
        postForm("nodes/" + id + "/slave", "nodes", "Make slave", "Make node " + id + " a slave"),
        el("a", { "class": "button danger", href: base + "nodes/" + id + "/remove",
                  "aria-label": "Remove node " + id + "\u2026" }, ["Remove\u2026"])
      ])]
    ];
    return el("tr", { "data-node": id }, cells.map(function (children, i) {
      return el("td", { "data-label": COLUMNS[i] }, children);
    }));
  }

  // Update a row in place: only the text cells (never the ID link or the
  // action buttons), so that keyboard focus and buttons stay where they are.
  function updateRow(tr, row) {
    var fresh = nodeRow(row);
    for (var i = 1; i <= 6; i++) {
      var have = tr.children[i], want = fresh.children[i];
      if (have && want && have.innerHTML !== want.innerHTML) {
        tr.replaceChild(want.cloneNode(true), have);
      }
    }
  }

  function startNodes() {
    var body = document.getElementById("nodes-body");
    var status = document.getElementById("nodes-status");
    if (!body) { return; }
    poll("api/nodes", function (data) {
      if (!data.ok) {
        status.textContent = data.error || "the node list could not be read";
        status.className = "flash flash-error";
        return;
      }
      status.className = "muted";
      var rows = data.nodes || [];
      status.textContent = (rows.length ? rows.length + " node(s)" : "no nodes yet") +
        ", updated " + clock();
      var wanted = {};
      rows.forEach(function (row) { wanted[String(row.id)] = row; });
      Array.prototype.slice.call(body.children).forEach(function (tr) {
        if (!wanted[tr.getAttribute("data-node")]) { body.removeChild(tr); }
      });
      var previous = null;
      rows.forEach(function (row) {
        var id = String(row.id);
        var tr = null;
        Array.prototype.forEach.call(body.children, function (candidate) {
          if (candidate.getAttribute("data-node") === id) { tr = candidate; }
        });
        if (tr) { updateRow(tr, row); } else { tr = nodeRow(row); }
        var next = previous ? previous.nextSibling : body.firstChild;
        if (next !== tr) { body.insertBefore(tr, next); }
        previous = tr;
      });
    }, function (message) { status.textContent = message; });
  }

  // -- service page and charts ---------------------------------------------

  function drawChart(figure, values) {
    var plot = figure.querySelector(".chart-plot");
    var unit = figure.getAttribute("data-unit") || "";
    var known = values.filter(function (v) { return v !== null; });
    var max = Math.max.apply(null, [1].concat(known));
    var w = 300, h = 100;
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + w + " " + (h + 14));
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("focusable", "false");
    var grid = document.createElementNS(SVG, "path");
    grid.setAttribute("d", "M0 " + h + " H" + w + " M0 " + (h / 2) + " H" + w + " M0 1 H" + w);
    grid.setAttribute("class", "grid");
    svg.appendChild(grid);
    var points = [];
    values.forEach(function (v, i) {
      if (v === null) { return; }
      var slots = Math.max(values.length, 10);
      var x = w * (i + slots - values.length) / (slots - 1);
      points.push(x.toFixed(1) + "," + (h - (v / max) * (h - 2)).toFixed(1));
    });
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "line");
    svg.appendChild(line);
    var label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", String(h + 12));
    label.setAttribute("class", "axis");
    label.textContent = "max " + (Math.round(max * 100) / 100) + (unit ? " " + unit : "") +
      ", last " + values.length * POLL_MS / 1000 + " s";
    svg.appendChild(label);
    while (plot.firstChild) { plot.removeChild(plot.firstChild); }
    plot.appendChild(svg);
  }

  function startService() {
    var status = document.getElementById("perf-status");
    var series = {};
    var figures = Array.prototype.slice.call(document.querySelectorAll("figure.chart"));
    figures.forEach(function (f) { series[f.getAttribute("data-series")] = []; });
    function set(id, value) {
      var node = document.getElementById(id);
      if (node) { node.textContent = value; }
    }
    poll("api/service", function (data) {
      var info = data.service || {};
      if (data.ok) {
        set("service-state", text(info.state));
        set("service-type", text(info.type));
        var counts = info.nodes || {};
        var parts = Object.keys(counts).sort().map(function (k) { return k + ": " + counts[k]; });
        set("service-counts", parts.length ? parts.join(", ") : "no nodes");
        var master = document.getElementById("service-master");
        if (master) {
          var m = info.master;
          var wantText = (m === null || m === undefined || m === "") ? "none" : "node " + m;
          if (master.textContent !== wantText) {
            var fresh = (wantText === "none") ? el("span", { id: "service-master" }, ["none"])
              : el("a", { id: "service-master", href: base + "nodes/" + encodeURIComponent(String(m)) }, [wantText]);
            master.parentNode.replaceChild(fresh, master);
          }
        }
      }
      var charts = document.getElementById("charts");
      if (data.performanceError) {
        status.textContent = data.performanceError;
        status.className = "flash flash-note";
        charts.hidden = true;
        return;
      }
      charts.hidden = false;
      var perf = data.performance || {};
      status.className = "muted";
      status.textContent = "Updated " + clock();
      figures.forEach(function (f) {
        var key = f.getAttribute("data-series");
        var v = perf[key];
        v = (typeof v === "number") ? v : null;
        series[key].push(v);
        if (series[key].length > POINTS) { series[key].shift(); }
        set("value-" + key, v === null ? "unknown" :
          (Math.round(v * 100) / 100) + (f.getAttribute("data-unit") ? " " + f.getAttribute("data-unit") : ""));
        drawChart(f, series[key]);
      });
    }, function (message) { status.textContent = message; });
  }

  // -- node page ----------------------------------------------------------------

  function facts(list) {
    return el("dl", { "class": "facts" }, list.map(function (pair) {
      return el("div", {}, [el("dt", {}, [String(pair[0])]), el("dd", {}, [String(pair[1])])]);
    }));
  }

  function replaceContent(node, child) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
    node.appendChild(child);
  }

  function startNode() {
    var details = document.getElementById("node-details");
    var replication = document.getElementById("replication");
    var lastError = document.getElementById("last-error");
    if (!details) { return; }
    var shown = {};
    poll("api/nodes/" + encodeURIComponent(details.getAttribute("data-node")), function (data) {
      if (!data.ok) { return; }  // the page already says what failed when it loaded
      var key = JSON.stringify([data.details, data.replication, data.lastError]);
      if (shown.key === key) { return; }
      shown.key = key;
      replaceContent(details, facts(data.details));
      replaceContent(replication, data.replication.length ? facts(data.replication)
        : el("p", {}, ["No replication status reported for this node."]));
      lastError.textContent = data.lastError ? String(data.lastError) : "none";
      lastError.className = data.lastError ? "row-error" : "muted";
    }, function () {});
  }

  // -- dump upload ------------------------------------------------------------

  function startUpload() {
    var form = document.getElementById("dump-form");
    if (!form || !window.FormData) { return; }
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    var button = document.getElementById("upload-dump");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action"));
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      bar.hidden = false;
      bar.value = 0;
      button.disabled = true;
      status.className = "";
      status.textContent = "Uploading\u2026";
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) {
          var pct = Math.round(100 * e.loaded / e.total);
          bar.value = pct;
          status.textContent = "Uploading\u2026 " + pct + "%";
        }
      };
      xhr.upload.onload = function () {
        bar.value = 100;
        status.textContent = "Uploaded; the node is loading the dump\u2026";
      };
      xhr.onload = function () {
        button.disabled = false;
        var data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (data && data.ok) {
          bar.value = 100;
          status.className = "flash flash-ok";
          status.textContent = data.message;
          status.setAttribute("data-done", "ok");
        } else {
          status.className = "flash flash-error";
          status.textContent = (data && data.error) || ("The upload failed (HTTP " + xhr.status + ").");
          status.setAttribute("data-done", "error");
        }
      };
      xhr.onerror = function () {
        button.disabled = false;
        status.className = "flash flash-error";
        status.textContent = "The upload was interrupted: the front-end cannot be reached.";
        status.setAttribute("data-done", "error");
      };
      xhr.send(new FormData(form));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.body.getAttribute("data-page");
    if (page === "nodes") { startNodes(); }
    if (page === "service") { startService(); }
    if (page === "node") { startUpload(); startNode(); }
  });
})();
