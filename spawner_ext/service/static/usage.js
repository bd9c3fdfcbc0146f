// The usage page: reads the report API with the browser's JupyterHub login and draws the
// tables and charts. The download links ask the API for exactly the rows shown.
(function () {
  "use strict";
  const settings = window.gpuhubSettings;
  const $ = (id) => document.getElementById(id);
  const charts = {};
  const NUMERIC = new Set([
    "gpu_hours", "cost", "idle_gpu_hours", "sessions", "gpu_count", "busy_gpu_hours",
    "measured_gpu_hours", "utilization", "busy_percent", "possible_saving",
    "borrowed_gpu_hours", "borrowed_sessions", "lent_gpu_hours", "lent_sessions",
    "reclaimed_gpu_hours", "reclaims",
  ]);
  // What borrowing rows may be grouped by (the others of the form are left out for them).
  const BORROWING_BY = ["user", "day", "gpu_type"];
  // How some columns read (the cell's data-value keeps the number, for sorting).
  const SHOWN = {
    utilization: (v) => (v === null ? "not measured" : `${(v * 100).toFixed(1)} %`),
    busy_percent: (v) => (v === null ? "" : `${v} %`),
    possible_saving: (v) => v.toFixed(2),
  };

  function params(format, grouped = true, groupings = null) {
    const query = new URLSearchParams();
    const team = $("gpuhub-team").value;
    if (team) query.append("team", team);
    else if (!settings.everything) query.append("user", settings.user);
    query.append("since", $("gpuhub-since").value);
    query.append("until", $("gpuhub-until").value);
    const by = [...document.querySelectorAll("input[name=by]:checked")].map((e) => e.value)
      .filter((value) => groupings === null || groupings.includes(value));
    if (by.length && grouped) query.append("by", by.join(","));
    if (format) query.append("format", format);
    return query;
  }

  async function api(path) {
    const response = await fetch(settings.api + path, {
      credentials: "same-origin",
      headers: { "X-XSRFToken": settings.xsrf },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    return body;
  }

  function problem(message) {
    const box = $("gpuhub-problem");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function fill(table, columns, rows, empty = "No usage in this period.") {
    const head = table.tHead, body = table.tBodies[0];
    head.replaceChildren();
    body.replaceChildren();
    const tr = head.insertRow();
    columns.forEach((name, i) => {
      const th = document.createElement("th");
      th.scope = "col";
      th.setAttribute("aria-sort", "none");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn btn-link p-0 gpuhub-sort";
      button.textContent = name.replace(/_/g, " ");
      button.addEventListener("click", () => sort(table, i, th));
      th.appendChild(button);
      if (NUMERIC.has(name)) th.classList.add("text-end");
      tr.appendChild(th);
    });
    for (const row of rows) {
      const line = body.insertRow();
      for (const name of columns) {
        const cell = line.insertCell();
        const value = row[name];
        const shown = SHOWN[name];
        cell.textContent = shown && value !== undefined ? shown(value)
          : value === null || value === undefined ? "" : String(value);
        if (NUMERIC.has(name)) cell.classList.add("text-end");
        cell.dataset.value = value === null ? "" : String(value);
      }
    }
    if (!rows.length) {
      const cell = body.insertRow().insertCell();
      cell.colSpan = columns.length;
      cell.textContent = empty;
    }
  }

  function sort(table, column, th) {
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    for (const other of table.tHead.rows[0].cells) other.setAttribute("aria-sort", "none");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const rows = [...table.tBodies[0].rows];
    rows.sort((a, b) => {
      const x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      const nx = parseFloat(x), ny = parseFloat(y);
      const order = !isNaN(nx) && !isNaN(ny) ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    table.tBodies[0].append(...rows);
  }

  // Chart.js is a UMD build: under the hub page's RequireJS it registers as a module.
  const chartLibrary = new Promise((resolve) => {
    if (!window.require) return resolve(window.Chart || null);
    window.require([settings.chart], (Chart) => resolve((window.Chart = Chart)), () => resolve(null));
  });

  async function chart(id, type, labels, datasets) {
    await chartLibrary;
    if (typeof window.Chart === "undefined" || window.Chart === null) {
      $("gpuhub-chart-missing").hidden = false;
      return;
    }
    if (charts[id]) charts[id].destroy();
    charts[id] = new window.Chart($(id), {
      type: type,
      data: { labels: labels, datasets: datasets },
      options: { maintainAspectRatio: false, animation: false, scales: { y: { beginAtZero: true } } },
    });
  }

  async function showUsage() {
    const query = params();
    $("gpuhub-download-csv").href = settings.api + "usage?" + params("csv");
    $("gpuhub-download-json").href = settings.api + "usage?" + params("json");
    const report = await api("usage?" + query);
    const columns = ["team", ...report.by, "gpu_hours", "cost", "currency", "idle_gpu_hours", "sessions",
      "busy_gpu_hours", "measured_gpu_hours", "utilization"];
    fill($("gpuhub-usage-table"), columns, report.rows);
    const daily = new URLSearchParams(query);
    daily.set("by", "day");
    const days = await api("usage?" + daily);
    const labels = [...new Set(days.rows.map((r) => r.day))];
    const teams = [...new Set(days.rows.map((r) => r.team))];
    await chart("gpuhub-chart", "bar", labels, teams.map((team) => ({
      label: team || "(no team)",
      data: labels.map((d) => days.rows.filter((r) => r.day === d && r.team === team)
        .reduce((sum, r) => sum + r.gpu_hours, 0)),
    })));
  }

  async function showHints() {
    const found = await api("rightsizing?" + params(null, false));
    fill($("gpuhub-hints"),
      ["team", "user", "profile", "sessions", "gpu_hours", "busy_percent", "hint", "possible_saving", "currency"],
      found.rows);
  }

  async function showBorrowing() {
    const query = params(null, true, BORROWING_BY);
    $("gpuhub-borrowing-csv").href = settings.api + "borrowing?" + params("csv", true, BORROWING_BY);
    const found = await api("borrowing?" + query);
    fill($("gpuhub-borrowing"),
      ["team", ...found.by, "borrowed_gpu_hours", "borrowed_sessions", "lent_gpu_hours", "lent_sessions",
        "reclaimed_gpu_hours", "reclaims"],
      found.rows.map((r) => ("user" in r && r.user === null ? { ...r, user: "(lent)" } : r)),
      "Nothing borrowed or lent in this period.");
  }

  async function showBudget() {
    const team = $("gpuhub-team").value;
    const text = $("gpuhub-budget");
    if (!team || !settings.teams.includes(team)) {
      text.textContent = "Choose a team you may read to see its budget.";
      return;
    }
    const b = await api("budget?team=" + encodeURIComponent(team));
    if (b.budget_gpu_hours === null) {
      text.textContent = `${team} has no monthly budget; ${b.used_gpu_hours} GPU-hours used in ${b.month}.`;
    } else {
      const runs = b.runs_out_on ? `at this month's rate it runs out on ${b.runs_out_on}` : "at this month's rate it lasts the month";
      text.textContent = `${team}: ${b.used_gpu_hours} of ${b.budget_gpu_hours} GPU-hours used in ${b.month} (${Math.round(b.used_ratio * 100)}%); ${runs}.`;
    }
    await chart("gpuhub-burndown", "line", b.days.map((d) => d.day), [
      { label: "used GPU-hours", data: b.days.map((d) => d.used_gpu_hours) },
      ...(b.budget_gpu_hours === null ? [] : [{ label: "budget", data: b.days.map(() => b.budget_gpu_hours) }]),
    ]);
  }

  async function showAllocations() {
    const found = await api("allocations");
    fill($("gpuhub-allocations"),
      ["user", "server_name", "team", "profile", "gpu_type", "gpu_count", "since", "gpu_hours", "cost", "currency"],
      found.allocations);
  }

  async function showCatalog() {
    const box = $("gpuhub-catalog");
    if (!box) return;
    const c = await api("catalog");
    box.replaceChildren();
    const p = document.createElement("p");
    p.textContent = `Version ${c.version} of ${c.path}, loaded ${c.loaded_at}.`;
    box.appendChild(p);
    if (c.last_error) {
      const alert = document.createElement("div");
      alert.className = "alert alert-danger";
      alert.id = "gpuhub-catalog-error";
      alert.textContent = `The last edit (at ${c.last_error.failed_at}) did not load; the catalog above stays in force:`;
      const list = document.createElement("ul");
      for (const line of c.last_error.problems) {
        const item = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = line;
        item.appendChild(code);
        list.appendChild(item);
      }
      alert.appendChild(list);
      box.appendChild(alert);
    }
  }

  async function refresh() {
    problem("");
    const results = await Promise.allSettled([showUsage(), showHints(), showBorrowing(), showBudget(), showAllocations(), showCatalog()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) problem(failed.reason.message);
    document.body.dataset.gpuhubLoaded = String(Date.now());
  }

  $("gpuhub-team").value = settings.team;
  $("gpuhub-since").value = settings.since;
  $("gpuhub-until").value = settings.until;
  $("gpuhub-controls").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  refresh();
})();
