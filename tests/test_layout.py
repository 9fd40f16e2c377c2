"""The import rule written at the top of protocol_engine/__init__.py, checked on the source (ast, nothing imported).

A layer imports only the layers before it: core <- adapters.fhir <- pack <- hooks <- authoring, runtime <- cli,
http/, server. Imports inside `if TYPE_CHECKING:` create no import-time dependency and may name any project type, but
core never imports HTTP, storage, the FHIR client or FHIR JSON models, not even for type checking. Nor does core read
process state (environment variables, context variables, thread-locals): what a card says depends on the loaded
pack (with its settings, the deployment's time zone among them), the chart and `now` alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Which project layers each layer may import at run time.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "adapters": {"adapters", "core"},
    "pack": {"pack", "core"},
    "hooks": {"hooks", "pack", "adapters", "core"},
    "authoring": {"authoring", "hooks", "pack", "adapters", "core"},
    "runtime": {"runtime", "hooks", "pack", "adapters", "core"},
    "top": {"top", "runtime", "authoring", "hooks", "pack", "adapters", "core"},
}
# Third-party packages the pure core must never import: HTTP, storage, the FHIR client, process state, FHIR JSON.
CORE_FORBIDDEN = {"flask", "flask_cors", "werkzeug", "sqlalchemy", "alembic", "httpx", "jwt", "prometheus_client",
                  "gunicorn", "fhir", "fhir_core", "pydantic", "click"}
LAYERS = ("core", "pack", "hooks", "authoring", "runtime")


def layer_of(module: str) -> str | None:
    """The layer of a dotted project module name; None for the standard library and third-party packages."""
    parts = module.split(".")
    if parts[0] == "adapters":
        return "adapters"
    if parts[0] == "server":
        return "top"
    if parts[0] != "protocol_engine":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "top"  # protocol_engine itself and protocol_engine.cli


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, bool, int]]:
    """(imported module, imported under TYPE_CHECKING, line) for every import statement of a module's source."""
    tree = ast.parse(source)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in type_only, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from protocol_engine import core` imports the subpackage: name it so its layer is seen.
            names = [f"{target}.{a.name}" for a in node.names] if layer_of(target) == "top" else [target]
            found += [(n, id(node) in type_only, node.lineno) for n in names]
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    here = layer_of(module)
    assert here is not None, module
    out = []
    for target, type_only, line in imports(source, module, is_package):
        there = layer_of(target)
        if here == "core" and target.split(".")[0] in CORE_FORBIDDEN:
            out.append(f"{module}:{line} core imports {target}")
        elif there is not None and not type_only and there not in ALLOWED[here]:
            out.append(f"{module}:{line} {here} imports {target} ({there})")
    return out


def project_modules() -> list[Path]:
    paths = [*(ROOT / "protocol_engine").rglob("*.py"), *(ROOT / "adapters").rglob("*.py"), ROOT / "server.py"]
    return sorted(p for p in paths if "migrations" not in p.parts)


def test_every_module_keeps_the_import_rule() -> None:
    found = []
    for path in project_modules():
        found += violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert found == []


def test_every_module_of_protocol_engine_is_in_a_layer_folder() -> None:
    """Nothing new at the top of the package but the command line: a new module says its audience by its folder."""
    top = sorted(p.name for p in (ROOT / "protocol_engine").glob("*.py"))
    assert top == ["__init__.py", "cli.py"]


@pytest.mark.parametrize("line", [
    "import flask", "from sqlalchemy import select", "import httpx", "from adapters.fhir.client import FhirClient",
    "from adapters.fhir import prefetch", "from ..runtime import store", "from protocol_engine.hooks import pipeline",
    "from fhir.resources.R4B.observation import Observation",
])
def test_the_rule_fails_when_core_imports_io_or_a_later_layer(line: str) -> None:
    assert violations(line + "\n", "protocol_engine.core.derive") != []


def test_type_only_imports_of_later_layers_are_allowed_but_not_of_http() -> None:
    allowed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..pack.protocol import Protocol\n"
    assert violations(allowed, "protocol_engine.core.derive") == []
    http = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import flask\n"
    assert violations(http, "protocol_engine.core.derive") != []


def test_the_fhir_adapter_never_imports_the_engine_beyond_core() -> None:
    assert violations("from protocol_engine.pack import packset\n", "adapters.fhir.normalise") != []
    assert violations("from protocol_engine.core.records import Chart\n", "adapters.fhir.normalise") == []


def test_the_evaluate_stage_is_pure() -> None:
    """hooks/evaluate.py sees a Chart, never FHIR JSON or the network: it imports only core and pack modules."""
    path = ROOT / "protocol_engine" / "hooks" / "evaluate.py"
    found = imports(path.read_text(encoding="utf-8"), module_name(path))
    project = [target for target, _, _ in found if layer_of(target) is not None]
    assert project and all(layer_of(t) in ("core", "pack", "hooks") for t in project), project
    # The stages before it are named for their types only (Prepared, Gathered): evaluate runs neither.
    hooks = [(t, type_only) for t, type_only, _ in found if layer_of(t) == "hooks"]
    assert all(type_only and t.endswith((".prepare", ".gather")) for t, type_only in hooks), hooks
    assert not [t for t, _, _ in found if t.split(".")[0] in CORE_FORBIDDEN]


# Process state the pure core must not read: the environment, context variables, thread-locals.
STATE_MODULES = {"contextvars"}
STATE_NAMES = {("os", "environ"), ("os", "environb"), ("os", "getenv"), ("os", "getenvb"), ("os", "putenv"),
               ("threading", "local")}


def process_state(source: str, module: str) -> list[str]:
    """Every read of process state in a module's source (ast): `os.environ`, `os.getenv`, `from os import
    environ`, `contextvars`, `threading.local`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [f"{module}:{node.lineno} imports {a.name}" for a in node.names if a.name in STATE_MODULES]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module in STATE_MODULES:
                out.append(f"{module}:{node.lineno} imports {node.module}")
            out += [f"{module}:{node.lineno} imports {node.module}.{a.name}" for a in node.names
                    if (node.module, a.name) in STATE_NAMES]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and (node.value.id, node.attr) in STATE_NAMES:
            out.append(f"{module}:{node.lineno} reads {node.value.id}.{node.attr}")
    return out


def test_the_core_reads_no_process_state() -> None:
    """core/display.py once read PROTOCOL_ENGINE_TIMEZONE on every card and fell back to a `NOW` context
    variable; the zone now comes with the loaded pack (pack/zone.py) and `now` is an argument."""
    found = []
    for path in sorted((ROOT / "protocol_engine" / "core").rglob("*.py")):
        found += process_state(path.read_text(encoding="utf-8"), module_name(path))
    assert found == []


@pytest.mark.parametrize("line", [
    "import os\nZONE = os.environ.get('TZ')", "import os\nZONE = os.getenv('TZ')", "from os import environ",
    "from os import getenv as g", "import contextvars", "from contextvars import ContextVar",
    "import threading\nSTATE = threading.local()",
])
def test_the_state_check_catches_each_way_of_reading_process_state(line: str) -> None:
    assert process_state(line + "\n", "protocol_engine.core.display") != []


def test_the_state_check_allows_the_engine_lock() -> None:
    assert process_state("import threading\n_LOCK = threading.Lock()\n", "protocol_engine.core.engine") == []
