"""protocol-engine: declarative clinical-protocol rules served over CDS Hooks.

Module map, by audience (each folder's modules start with a one-line docstring saying their one job):

  core/       the pure per-request evaluation: typed records in, findings and cards out. No network, no
              database, no process state, no FHIR JSON.
              records (the typed chart the FHIR adapter fills), model (rules, findings), facts (the fact
              catalogue), anchors (what a call evaluates against), derive/ (chart -> facts, one module a
              concern: readings, patient, medications, course (the one course model), orders, scores),
              compiler + engine (durable_rules), ranges (imprecise values), cards + templates (card
              rendering), valuesets, units, durations, display, errors.
  pack/       rule files -> a loaded pack: yamlsource (YAML with positions), loader (rule files), protocol
              (protocol.yaml) + course_spec, settingspec + site (settings, site overlays), restated, packset
              (every pack of a rules directory, loaded as one PackSet with its revision).
  hooks/      one CDS Hooks call without HTTP, one way: prepare (body -> Prepared, no I/O), gather (prefetch
              resolved, missing data fetched through the caller's client, FHIR JSON -> Chart), evaluate (Chart
              -> Decision, pure); pipeline (the services a pack set compiles to, discovery; run = the three offline),
              sessions (appointment-book's proposed sessions).
  authoring/  tools for rule authors: vignette (the test shorthand -> a request), testing (the rule-case
              runner), conventions (the repository checks of `validate`), fmt, scaffold, explain, catalogue,
              rulepage, impact, samples (sample patients for the page and impact).
  runtime/    the service process: config, registry (reloads), security (JWT) + replay, store + audit +
              feedback + analytics (database), metrics, logs, openapi, outcome, balanced_worker (gunicorn).
  http/       the HTTP views as Flask blueprints server.py registers: cds (CDS Hooks endpoints), operations
              (health, metrics, OpenAPI, rule pages, analytics), demo (the web page), common.
  cli.py      the `protocol-engine` command.

Outside this package: adapters/fhir/ reads FHIR R4 (hook request parsing, prefetch and fetch, FHIR JSON -> core
records); server.py is the Flask app factory (with http/, the only HTTP code).

Import rule (checked by tests/test_layout.py): a layer imports only the layers before it.

  core  <-  adapters.fhir  <-  pack  <-  hooks  <-  authoring, runtime  <-  cli.py, http/, server.py

- core imports no other project module; it may name pack types for type checking only (`if TYPE_CHECKING`).
  It never imports flask, sqlalchemy, alembic, httpx, jwt, prometheus_client, gunicorn or fhir.resources, and
  reads no process state (environment, context variables): the deployment's time zone comes with the loaded pack.
- adapters.fhir imports only core (its records and errors): no package cycle.
- pack imports core; hooks imports core, pack and adapters.fhir; authoring and runtime never import each other.
"""

__version__ = "0.1.0"
