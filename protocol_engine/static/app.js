"use strict";
// The demo page: builds a real CDS Hooks request from a sample patient, sends it to this service and renders
// the cards as an EHR would. Markdown is rendered with raw HTML disabled; every other text is set as textContent.
const md = window.markdownit({ html: false, linkify: true });
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};
const ORDER_HOOKS = ["order-select", "order-sign"];
let patients = [];
let services = [];

async function getJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  return { status: response.status, body };
}

async function init() {
  const [p, s] = await Promise.all([getJson("/demo/patients"), getJson("/cds-services")]);
  patients = p.body;
  services = (s.body.services || []);
  for (const patient of patients) $("patient").append(el("option", { value: patient.name }, patient.title));
  for (const svc of services) $("service").append(el("option", { value: svc.id }, `${svc.hook}: ${svc.title}`));
  $("service").value = services.find((x) => x.hook === "order-sign")?.id || services[0]?.id;
  if (s.status === 401) $("status").textContent = "This service requires a CDS client JWT: the page works in demo mode only.";
  describePatient();
  await loadOrderDefaults();
}

function describePatient() {
  const p = patients.find((x) => x.name === $("patient").value);
  $("patient-description").textContent = p ? p.description : "";
}

async function loadOrderDefaults() {
  const { body } = await getJson(`/demo/patients/${encodeURIComponent($("patient").value)}`);
  const draft = (body.entry || []).map((e) => e.resource).find((r) => r.resourceType === "MedicationRequest" && r.status === "draft");
  if (!draft) return;
  const coding = draft.medicationCodeableConcept.coding[0];
  $("drug").value = [...$("drug").options].find((o) => o.value.startsWith(`RXNORM#${coding.code}|`))?.value || $("drug").value;
  const dosage = (draft.dosageInstruction || [])[0] || {};
  const dose = ((dosage.doseAndRate || [])[0] || {}).doseQuantity;
  if (dose) $("dose").value = dose.value;
  const route = (dosage.route || {}).coding?.[0]?.code;
  if (route) $("route").value = [...$("route").options].find((o) => o.value.includes(`#${route}|`))?.value || $("route").value;
  $("duration").value = dosage.timing?.repeat?.duration || "";
}

function coding(value) {
  const [code, display] = value.split("|");
  const [system, c] = code.split("#");
  const url = { RXNORM: "http://www.nlm.nih.gov/research/umls/rxnorm", SNOMED: "http://snomed.info/sct" }[system];
  return { system: url, code: c, display };
}

function applyOrder(request) {
  const drug = coding($("drug").value);
  const route = coding($("route").value);
  const edit = (order) => {
    order.medicationCodeableConcept = { coding: [drug], text: drug.display };
    const dosage = { route: { coding: [route], text: route.display },
      doseAndRate: [{ doseQuantity: { value: Number($("dose").value), unit: "mg", system: "http://unitsofmeasure.org", code: "mg" } }] };
    if ($("duration").value) dosage.timing = { repeat: { duration: Number($("duration").value), durationUnit: "min" } };
    order.dosageInstruction = [dosage];
  };
  const entries = request.context.draftOrders?.entry
    || Object.values(request.prefetch).flatMap((b) => (b && b.entry) || []).filter((e) => e.resource.resourceType === "MedicationRequest" && e.resource.status === "active");
  for (const entry of entries) if (entry.resource.id === "draft-order") edit(entry.resource);
  return request;
}

async function send(event) {
  event.preventDefault();
  const serviceId = $("service").value;
  $("status").textContent = "Sending…";
  const built = await getJson(`/demo/request?patient=${encodeURIComponent($("patient").value)}&service=${encodeURIComponent(serviceId)}`);
  const request = applyOrder(built.body);
  $("request-json").textContent = JSON.stringify(request, null, 2);
  const started = performance.now();
  const { status, body } = await getJson(`/cds-services/${encodeURIComponent(serviceId)}?trace=1`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) });
  const ms = Math.round(performance.now() - started);
  $("response-json").textContent = JSON.stringify(body, null, 2);
  if (status !== 200) {
    $("status").textContent = `HTTP ${status}`;
    $("cards").replaceChildren(el("p", { class: "muted" }, (body.issue || [{}])[0].diagnostics || "Request refused."));
    $("trace").replaceChildren();
    return;
  }
  $("status").textContent = `HTTP 200 in ${ms} ms: ${body.cards.length} card(s)`;
  renderCards(body.cards);
  renderTrace((body.extension || {})["protocol-engine-trace"]);
}

function renderCards(cards) {
  const box = $("cards");
  box.replaceChildren();
  if (!cards.length) { box.append(el("p", { class: "muted", "data-testid": "no-cards" }, "No cards: every rule was checked and none applies.")); return; }
  for (const card of cards) {
    const ext = card.extension["protocol-engine"];
    const node = el("article", { class: `card ${card.indicator}`, "data-rule": ext.rule, "data-indicator": card.indicator });
    node.append(el("div", { class: "indicator" }, `${card.indicator} · ${ext.rule}`));
    node.append(el("div", { class: "summary" }, card.summary));
    const detail = el("div", { class: "detail" });
    detail.innerHTML = md.render(card.detail || "");  // markdown-it with html:false escapes any raw HTML
    node.append(detail);
    const source = el("div", { class: "meta" }, "Source: ");
    if (card.source.url) source.append(el("a", { href: card.source.url, target: "_blank", rel: "noopener noreferrer" }, card.source.label));
    else source.append(document.createTextNode(card.source.label));
    source.append(document.createTextNode(` · rule ${ext.rule} v${ext.ruleVersion} · evidence ${ext.evidence.join(", ")}`));
    node.append(source);
    if (card.suggestions) {
      const s = el("div", { class: "suggestions" });
      for (const suggestion of card.suggestions) s.append(el("button", { type: "button", title: suggestion.actions.map((a) => a.description).join("; ") }, suggestion.label));
      node.append(s);
    }
    if (card.overrideReasons) {
      const o = el("details", { class: "overrides" });
      o.append(el("summary", {}, "Override reasons"));
      const list = el("ul");
      for (const reason of card.overrideReasons) list.append(el("li", {}, reason.display));
      o.append(list);
      node.append(o);
    }
    box.append(node);
  }
}

function renderTrace(trace) {
  const box = $("trace");
  box.replaceChildren();
  if (!trace) { box.append(el("p", { class: "muted" }, "No trace (the service exposes it in demo mode only).")); return; }
  if (trace.skipped) { box.append(el("p", {}, `Skipped: ${trace.skipped}.`)); return; }
  const fired = Object.fromEntries(trace.fired.map((f) => [f.rule, f]));
  box.append(el("p", { class: "muted" }, `Rule set ${trace.ruleset} · ${trace.rules.length} rules evaluated · ${trace.fired.length} held · data from ${Object.entries(trace.sources).map(([k, v]) => `${k}: ${v}`).join(", ")} · ${trace.timings.total_ms} ms`));
  const table = el("table", { class: "trace-table" });
  table.append(el("tr", {}, ""));
  table.firstChild.append(el("th", {}, "Rule"), el("th", {}, "Result"), el("th", {}, "Evidence"));
  for (const rule of trace.rules) {
    const row = el("tr", { "data-rule": rule });
    const f = fired[rule];
    row.append(el("td", {}, rule), el("td", f ? { class: "fired" } : {}, f ? `held (v${f.version})` : "did not hold"),
      el("td", {}, f ? f.evidence.join(", ") : ""));
    table.append(row);
  }
  box.append(table);
}

async function showCatalogue() {
  const { body } = await getJson("/rules");
  $("catalogue-meta").textContent = `Rule set ${body.ruleset}: ${body.rules.length} rules.`;
  const tbody = document.querySelector("#rules-table tbody");
  tbody.replaceChildren();
  for (const r of body.rules) {
    const row = el("tr", { "data-rule": r.id, "data-search": `${r.id} ${r.title} ${r.category}`.toLowerCase() });
    const rule = el("td");
    rule.append(el("strong", {}, r.title), el("div", {}, `When: ${r.when}`), el("div", {}, `Then: ${r.then}`),
      el("div", { class: "muted" }, `Hooks: ${r.hooks.join(", ")} · ${r.status}`));
    const cite = el("td");
    for (const c of (r.citations && r.citations.length ? r.citations : [r.citation])) {
      const line = el("div");
      if (c.url) line.append(el("a", { href: c.url, target: "_blank", rel: "noopener noreferrer" }, c.label));
      else line.textContent = c.label;
      cite.append(line);
    }
    if (r.notes) cite.append(el("div", { class: "muted" }, r.notes));
    const settings = Object.entries(r.settings).map(([k, v]) => `${k} = ${Array.isArray(v) ? v.join(", ") : v}`).join("; ");
    const id = el("td");
    id.append(el("a", { href: r.page, target: "_blank", title: "Rule page for clinical reviewers" }, r.id));
    row.append(id, el("td", {}, r.version), el("td", {}, r.category), el("td", {}, r.indicator), rule,
      el("td", {}, settings), cite);
    tbody.append(row);
  }
}

function showTab(name) {
  $("try").hidden = name !== "try";
  $("catalogue").hidden = name !== "rules";
  $("tab-try").classList.toggle("active", name === "try");
  $("tab-rules").classList.toggle("active", name === "rules");
  $("analytics").hidden = name !== "analytics";
  $("tab-analytics").classList.toggle("active", name === "analytics");
  if (name === "rules") showCatalogue();
}

$("request-form").addEventListener("submit", send);
$("patient").addEventListener("change", () => { describePatient(); loadOrderDefaults(); });
$("service").addEventListener("change", () => {
  const hook = services.find((s) => s.id === $("service").value)?.hook;
  $("order-fields").disabled = !ORDER_HOOKS.includes(hook);
});
$("tab-try").addEventListener("click", () => showTab("try"));
$("tab-rules").addEventListener("click", () => showTab("rules"));
$("filter").addEventListener("input", (e) => {
  const q = e.target.value.toLowerCase();
  for (const row of document.querySelectorAll("#rules-table tbody tr")) row.hidden = !row.dataset.search.includes(q);
});
init();
