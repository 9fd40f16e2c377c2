"""The rule set a worker serves, swapped atomically on a good reload and kept on a bad one."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from . import metrics
from .errors import Diagnostic, RuleSetError
from .pipeline import ServiceRuntime, build_runtime
from .ruleset import RuleSet, load_ruleset

log = logging.getLogger("protocol_engine.rules")


@dataclass(frozen=True)
class Loaded:
    ruleset: RuleSet
    runtimes: dict[str, ServiceRuntime]


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector: name, size and mtime of every YAML file under the rules root."""
    out = []
    for path in sorted(root.rglob("*.yaml")):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def load(root: Path) -> Loaded:
    ruleset, diags = load_ruleset(root)
    if ruleset is None:
        raise RuleSetError(diags)
    return Loaded(ruleset, build_runtime(ruleset))


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._print = fingerprint(root)
        self.current = load(root)
        self.last_errors: list[Diagnostic] = []
        self._stop = threading.Event()

    def reload(self) -> bool:
        """Validate the files and swap in the new rule set; on any error keep serving the old one."""
        self._print = fingerprint(self.root)
        try:
            loaded = load(self.root)
        except RuleSetError as exc:
            self.last_errors = exc.diagnostics
            metrics.RELOADS.labels("rejected").inc()
            log.error("rule reload rejected; still serving revision %s", self.current.ruleset.revision)
            for d in exc.diagnostics[:50]:
                log.error("%s:%s:%s: error[%s]: %s", d.path, d.line, d.col, d.code, d.message)
            return False
        except Exception:
            metrics.RELOADS.labels("failed").inc()
            log.exception("rule reload failed; still serving revision %s", self.current.ruleset.revision)
            return False
        old = self.current.ruleset.revision
        self.current = loaded
        self.last_errors = []
        metrics.RELOADS.labels("ok").inc()
        log.warning("rules reloaded: revision %s -> %s", old, loaded.ruleset.revision)
        return True

    def changed(self) -> bool:
        return fingerprint(self.root) != self._print

    def watch(self, interval_s: float) -> None:
        """Poll the rule files from a daemon thread; every worker converges within one interval."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    if self.changed():
                        self.reload()
                except Exception:
                    log.exception("rule watcher error")

        threading.Thread(target=loop, name="rule-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
