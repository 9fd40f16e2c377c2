// Override analytics tab: per-rule counts and override reasons, and each rule's override rate over time
// (uPlot, vendored under static/vendor). Data: GET /analytics/data (operator token when authentication is on).
(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#b3261e", "#1f5fa8", "#b26a00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#4e342e",
                   "#37474f", "#9e9d24"];
  const TOKEN_KEY = "protocol-engine-operator-token";
  let plot = null;

  const day = (d) => d.toISOString().slice(0, 10);
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function defaults() {
    if (!$("an-until").value) $("an-until").value = day(new Date());
    if (!$("an-since").value) $("an-since").value = day(new Date(Date.now() - 29 * 86400000));
  }

  async function load(event) {
    if (event) event.preventDefault();
    defaults();
    const typed = $("an-token").value.trim();
    if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
    const token = sessionStorage.getItem(TOKEN_KEY);
    const params = new URLSearchParams({ since: $("an-since").value, until: $("an-until").value,
                                         bucket: $("an-bucket").value });
    $("an-status").textContent = "Loading...";
    let response;
    try {
      response = await fetch("/analytics/data?" + params, { headers: token ? { Authorization: "Bearer " + token } : {} });
    } catch (err) {
      $("an-status").textContent = "The service did not answer: " + err;
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("an-token-label").hidden = false;
      $("an-status").textContent = body.issue?.[0]?.diagnostics || "Sign in with the operator token.";
      return;
    }
    if (!response.ok) {
      $("an-status").textContent = body.issue?.[0]?.diagnostics || "Error " + response.status;
      return;
    }
    const shown = body.rules.reduce((n, r) => n + r.fired, 0);
    $("an-status").textContent = `${body.rules.length} rule(s), ${shown} card(s) shown, ${body.since.slice(0, 10)} to ` +
      `${body.until.slice(0, 10)} (rule set ${body.ruleset})`;
    table(body);
    chart(body);
  }

  function table(data) {
    const tbody = document.querySelector("#an-table tbody");
    tbody.replaceChildren();
    if (!data.rules.length) {
      const row = el("tr");
      row.append(el("td", { colspan: "7", class: "muted" }, "No cards were shown in this period."));
      tbody.append(row);
    }
    const ranked = [...data.rules].sort((a, b) => (b.overrideRate ?? -1) - (a.overrideRate ?? -1) || b.fired - a.fired);
    for (const r of ranked) {
      const row = el("tr", { "data-rule": r.rule });
      row.append(el("td", {}, r.rule), el("td", {}, r.title), el("td", { class: "num fired-count" }, String(r.fired)),
                 el("td", { class: "num accepted-count" }, String(r.accepted)),
                 el("td", { class: "num overridden-count" }, String(r.overridden)),
                 el("td", { class: "num override-rate" }, r.overrideRate === null ? "-" : r.overrideRate + "%"));
      const reasons = el("td", { class: "reasons" });
      if (r.reasons.length) {
        const list = el("ul");
        for (const item of r.reasons) list.append(el("li", {}, `${item.reason} (${item.count})`));
        reasons.append(list);
      }
      row.append(reasons);
      tbody.append(row);
    }
  }

  function chart(data) {
    const box = $("an-chart");
    if (plot) { plot.destroy(); plot = null; }
    box.replaceChildren();
    // Rules that were overridden at least once in the period; the table lists every rule.
    const rules = data.rules.filter((r) => r.overridden > 0).sort((a, b) => b.overridden - a.overridden)
      .slice(0, PALETTE.length);
    if (!rules.length) {
      box.append(el("p", { class: "muted" }, "No overrides in this period: nothing to chart."));
      return;
    }
    const xs = data.buckets.map((b) => Date.parse(b + "T00:00:00Z") / 1000);
    const opts = {
      title: `Override rate per ${data.bucket} (overridden / shown)`,
      width: Math.max(480, box.clientWidth - 20), height: 320,
      scales: { x: { time: true }, y: { range: [0, 100] } },
      series: [{ label: data.bucket === "week" ? "week from" : "day",
                 value: (u, v) => (v == null ? "-" : new Date(v * 1000).toISOString().slice(0, 10)) },
               ...rules.map((r, i) => ({ label: r.rule, stroke: PALETTE[i], width: 2, spanGaps: true,
                                         points: { show: true, size: 6 },
                                         value: (u, v) => (v == null ? "-" : v + "%") }))],
      axes: [{ incrs: [86400, 7 * 86400, 28 * 86400], space: 50,
               values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)) },
             { label: "override rate (%)", values: (u, ticks) => ticks.map((t) => t + "%") }],
    };
    plot = new uPlot(opts, [xs, ...rules.map((r) => r.series.overrideRate)], box);
    box.dataset.series = rules.map((r) => r.rule).join(",");
  }

  $("analytics-form").addEventListener("submit", load);
  $("tab-analytics").addEventListener("click", () => { showTab("analytics"); load(); });
})();
