"""protocol-engine: declarative clinical-protocol rules served over CDS Hooks."""

__version__ = "0.1.0"
