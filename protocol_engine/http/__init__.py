"""The HTTP surface as Flask blueprints, registered by server.create_app (the factory):

  cds.py         the CDS Hooks endpoints: discovery, service calls, feedback
  operations.py  health, readiness, metrics, OpenAPI, the rule catalogue and rule pages, override analytics
  demo.py        the web page and its synthetic sample data
  common.py      what every view shares: OperationOutcome answers, JSON bodies, the service's state
"""
