// The wait-list page: reads the wait-list API with the browser's JupyterHub login every few
// seconds and shows each place in line in the words of policy/waitlist_text.py ("3rd in line
// for NVIDIA H100 80GB; about 40 minutes"), with Start, Cancel, a link to the server once it
// starts, and a desktop notification when a GPU is held for you (if you allowed them).
(function () {
  "use strict";
  const settings = window.gpuhubSettings;
  const $ = (id) => document.getElementById(id);
  const readOnly = Boolean(settings.team);
  let seen = new Map(); // request id -> its state at the last refresh
  let first = true;
  let shown = "";
  let unread = false; // the last look at the API failed (and says so on the page)

  // --- words: the same as policy/waitlist_text.py ---------------------------------------------
  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function ordinal(n) {
    const suffix = n % 100 >= 10 && n % 100 <= 20 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
    return `${n}${suffix}`;
  }

  function waitWords(when, now) {
    if (!when) return "no estimate yet";
    const minutes = Math.max(Math.floor((Date.parse(when) - now) / 60000), 0);
    if (minutes < 1) return "about a minute";
    if (minutes < 90) {
      const rounded = minutes < 10 ? minutes : 5 * roundHalfEven(minutes / 5);
      return `about ${rounded} minute${rounded !== 1 ? "s" : ""}`;
    }
    return `about ${roundHalfEven(minutes / 60)} hours`;
  }

  function gpuName(key) {
    return settings.gpu_types[key] || key;
  }

  function placeWords(place, gpuType, when, now) {
    return `${ordinal(place)} in line for ${gpuName(gpuType)}; ${waitWords(when, now)}`;
  }

  function clock(iso) {
    return iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  }

  function serverLabel(r) {
    const whose = r.user === settings.user ? "your" : `${r.user}'s`;
    return r.server_name ? `${whose} server ${r.server_name}` : `${whose} server`;
  }

  function serverUrl(r) {
    const server = r.server_name ? `${encodeURIComponent(r.server_name)}/` : "";
    return `${settings.hub}user/${encodeURIComponent(r.user)}/${server}`;
  }

  function gpus(r) {
    return r.gpu_count === 1 ? gpuName(r.gpu_type) : `${r.gpu_count} × ${gpuName(r.gpu_type)}`;
  }

  // --- the API ---------------------------------------------------------------------------------
  async function api(path, method, body) {
    const response = await fetch(settings.api + path, {
      method: method || "GET",
      credentials: "same-origin",
      headers: { "X-XSRFToken": settings.xsrf, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.message || response.statusText);
    return answer;
  }

  function problem(message) {
    const box = $("gpuhub-problem");
    box.hidden = !message;
    box.textContent = message || "";
  }

  // --- one request -----------------------------------------------------------------------------
  function describe(r, now) {
    const profile = settings.profiles[r.profile] || r.profile;
    const what = `${profile} for ${serverLabel(r)} (team ${r.team})`;
    switch (r.state) {
      case "waiting": {
        // The head's wait is the reclaim's (the estimate does not count it); those behind keep theirs.
        const reclaiming = r.reclaim_at && r.position === 1;
        let text = !r.position
          ? `In line for ${gpuName(r.gpu_type)}`
          : reclaiming
            ? `${ordinal(r.position)} in line for ${gpuName(r.gpu_type)}`
            : placeWords(r.position, r.gpu_type, r.estimated_start, now);
        if (r.blocked) text += ` (skipped for now: ${r.blocked}; you keep your place)`;
        if (r.reclaim_at) {
          text += `. A GPU is being reclaimed for your team from a borrowed server: ready by ${clock(r.reclaim_at)} at the latest`;
        }
        return [text, what];
      }
      case "held":
        return [
          `Your turn: ${gpus(r)} is held for you until ${clock(r.hold_until)}. Start your server before then, or it goes to the next person.`,
          what,
        ];
      case "starting":
        return [`Your turn: ${serverLabel(r)} is starting with ${gpus(r)}.` + (r.message ? ` Last try: ${r.message}` : ""), what];
      case "started": {
        const label = serverLabel(r);
        return [`${label[0].toUpperCase()}${label.slice(1)} started with ${gpus(r)}.`, what];
      }
      default:
        return [`${r.state[0].toUpperCase()}${r.state.slice(1)}: ${r.message || ""}`, what];
    }
  }

  function button(label, kind, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `btn btn-sm ${kind} me-2`;
    b.textContent = label;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        await action();
        problem("");
      } catch (error) {
        problem(error.message);
      }
      await refresh();
    });
    return b;
  }

  function item(r, now) {
    const li = document.createElement("li");
    li.className = "list-group-item";
    li.dataset.request = r.id;
    li.dataset.state = r.state;
    const [text, what] = describe(r, now);
    const line = document.createElement("div");
    line.className = "gpuhub-place fw-semibold";
    line.textContent = text;
    const sub = document.createElement("div");
    sub.className = "text-muted small";
    sub.textContent = readOnly ? `${r.user}: ${what}` : what;
    li.append(line, sub);
    const actions = document.createElement("div");
    actions.className = "mt-2";
    if (r.state === "starting" || r.state === "started") {
      const link = document.createElement("a");
      link.href = serverUrl(r);
      link.className = "btn btn-sm btn-success me-2 gpuhub-open";
      link.textContent = r.state === "started" ? "Open your server" : "Go to your server";
      if (r.user === settings.user) actions.append(link);
    }
    if (!readOnly && r.state === "held" && r.start === "ask") {
      actions.append(
        button(`Start my server (before ${clock(r.hold_until)})`, "btn-primary gpuhub-start", () =>
          api(`waitlist/${encodeURIComponent(r.id)}/start`, "POST"),
        ),
      );
    }
    if (!readOnly && ["waiting", "held", "starting"].includes(r.state)) {
      actions.append(
        button("Cancel", "btn-outline-danger gpuhub-cancel", () =>
          api(`waitlist/${encodeURIComponent(r.id)}`, "DELETE"),
        ),
      );
    }
    if (actions.childElementCount) li.append(actions);
    return li;
  }

  // --- notifications ---------------------------------------------------------------------------
  function notifyState() {
    const state = $("gpuhub-notify-state");
    if (!state) return;
    if (!("Notification" in window)) {
      state.textContent = "This browser cannot show notifications; keep this page open.";
      $("gpuhub-notify").disabled = true;
    } else if (Notification.permission === "granted") {
      state.textContent = "You will be notified on this device when it is your turn.";
    } else if (Notification.permission === "denied") {
      state.textContent = "Notifications are blocked for this site in your browser's settings.";
    } else {
      state.textContent = "";
    }
  }

  // At the turn: seen held or starting, or (the turn and the start both fell between two looks,
  // as in a background tab whose timers the browser slows down) found started.
  function notify(r) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const title = r.state === "held" ? `Your ${gpuName(r.gpu_type)} is held for you` : `Your ${gpuName(r.gpu_type)} is ready`;
    const label = serverLabel(r);
    const body =
      r.state === "held"
        ? `Start your server before ${clock(r.hold_until)}, or it goes to the next person.`
        : `${label[0].toUpperCase()}${label.slice(1)} ${r.state === "started" ? "started" : "is starting"}.`;
    const note = new Notification(title, { body, tag: `gpuhub-${r.id}` });
    note.onclick = () => window.focus();
  }

  // --- refresh ---------------------------------------------------------------------------------
  async function ended(id, before) {
    try {
      const r = await api(`waitlist/${encodeURIComponent(id)}`);
      if (before === "waiting" && r.state === "started") notify(r);
      const list = $("gpuhub-ended");
      if (!list) return;
      list.querySelector(`[data-request="${id}"]`)?.remove();
      list.prepend(item(r, Date.now()));
      $("gpuhub-ended-section").hidden = false;
    } catch (error) {
      // gone or not ours any more: nothing to show
    }
  }

  async function refresh() {
    const now = Date.now();
    let requests;
    try {
      const path = readOnly ? `waitlist?team=${encodeURIComponent(settings.team)}` : "waitlist";
      requests = (await api(path)).requests;
    } catch (error) {
      const every = Math.round((settings.interval_ms || 5000) / 1000);
      problem(`Could not read the wait-list (${error.message}); trying again every ${every} seconds.`);
      unread = true;
      return;
    }
    if (unread) {
      problem(""); // read again: the places shown are current
      unread = false;
    }
    const current = new Map(requests.map((r) => [r.id, r.state]));
    if (!first && !readOnly) {
      for (const r of requests) {
        const before = seen.get(r.id);
        if (before === "waiting" && (r.state === "held" || r.state === "starting")) notify(r);
      }
      for (const [id, before] of seen) if (!current.has(id)) await ended(id, before);
    }
    first = false;
    seen = current;
    const key = JSON.stringify(requests) + Math.floor(now / 30000);
    if (key !== shown) {
      shown = key;
      const list = $("gpuhub-requests");
      list.replaceChildren(...requests.map((r) => item(r, now)));
      if (!requests.length) {
        const li = document.createElement("li");
        li.className = "list-group-item text-muted";
        li.textContent = readOnly ? "Nobody of this team is waiting." : "You are not waiting for a GPU.";
        list.append(li);
      }
    }
    $("gpuhub-updated").textContent = `Last update: ${new Date(now).toLocaleTimeString()}.`;
  }

  // --- joining ---------------------------------------------------------------------------------
  async function joinBox() {
    if (!settings.join) return;
    const what = $("gpuhub-join-what");
    let options;
    try {
      options = JSON.parse(settings.join.options || "{}");
    } catch (error) {
      what.textContent = "The link's options are not JSON; choose a profile on the hub's spawn page.";
      return;
    }
    const query = new URLSearchParams({ options: JSON.stringify(options), server: settings.join.server });
    try {
      const p = await api(`waitlist/preview?${query}`);
      const server = p.server_name ? `your server ${p.server_name}` : "your server";
      what.textContent =
        `${p.profile_name} for ${server}, charged to team ${p.team}. ` +
        `If you join now you will be ${placeWords(p.position, p.gpu_type, p.estimated_start, Date.now())}.`;
      $("gpuhub-join-form").hidden = false;
    } catch (error) {
      what.textContent = error.message;
      return;
    }
    $("gpuhub-join-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = $("gpuhub-join-button");
      button.disabled = true;
      const start = document.querySelector("input[name=start]:checked").value;
      try {
        await api("waitlist", "POST", { server_name: settings.join.server, options, start });
        problem("");
        $("gpuhub-join").hidden = true;
        window.history.replaceState(null, "", window.location.pathname);
      } catch (error) {
        problem(error.message);
        button.disabled = false;
      }
      await refresh();
    });
  }

  const notifyButton = $("gpuhub-notify");
  if (notifyButton) {
    notifyButton.addEventListener("click", async () => {
      if ("Notification" in window) await Notification.requestPermission();
      notifyState();
    });
    notifyState();
  }
  joinBox();
  refresh();
  window.setInterval(refresh, settings.interval_ms || 5000);
})();
