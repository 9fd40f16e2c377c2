"""The rule set a worker serves, swapped atomically on a good reload and kept on a bad one."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from adapters.fhir import validation

from ..core.errors import Diagnostic, PackSetError
from ..hooks.pipeline import ServiceRuntime, build_runtime
from ..pack.packset import PackSet, load_packset
from ..pack.site import Site, load_site, tenant_sites
from . import metrics

log = logging.getLogger("protocol_engine.rules")


@dataclass(frozen=True)
class Loaded:
    packset: PackSet
    runtimes: dict[str, ServiceRuntime]
    tenants: dict[str, Loaded] = field(default_factory=dict)  # tenants with their own site settings
    base: PackSet | None = None  # the pack as shipped, when site settings changed it (rule pages run cases on it)

    @cached_property
    def shipped(self) -> tuple[PackSet, dict[str, ServiceRuntime]]:
        """The rule set with the pack's own values: rule cases are written for these, not for a site's.

        Compiled on first use (a rule page), not at every reload."""
        if self.base is None:
            return self.packset, self.runtimes
        return self.base, build_runtime(self.base)

    def for_tenant(self, tenant: object) -> Loaded:
        """The rule set a call with this `tenant` claim gets (the deployment's when it has no file of its own)."""
        return self.tenants.get(tenant, self) if isinstance(tenant, str) else self


def fingerprint(root: Path, *extra: Path | None) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector: name, size and mtime of every YAML file under the rules root (and the site files)."""
    out = []
    for path in [*sorted(root.rglob("*.yaml")), *(p for p in extra if p is not None)]:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _with(root: Path, base: PackSet, site: Site | None) -> Loaded:
    if site is None:
        return Loaded(base, build_runtime(base))
    packset, diags = load_packset(root, site)
    if packset is None:
        raise PackSetError(diags)
    return Loaded(packset, build_runtime(packset))


def load(root: Path, site: Path | None = None, tenants: dict[str, Path] | None = None) -> Loaded:
    """Load the rules; with site settings, check each file against the pack's declarations, then apply it."""
    base, diags = load_packset(root)
    if base is None:
        raise PackSetError(diags)
    deployment: Site | None = None
    if site is not None:
        deployment, diags = load_site(site, base)
        if deployment is None:
            raise PackSetError(diags)
    loaded = _with(root, base, deployment)
    own: dict[str, Loaded] = {}
    for tenant, path in sorted((tenants or {}).items()):
        layered, diags = load_site(path, base, deployment, tenant)
        if layered is None:
            raise PackSetError(diags)
        own[tenant] = _with(root, base, layered)
    return Loaded(loaded.packset, loaded.runtimes, own, base if deployment is not None else None)


class Registry:
    def __init__(self, root: Path, site: Path | None = None, clients: Path | None = None) -> None:
        self.root = root
        self.site = site
        self.clients = clients
        self._print = self._fingerprint()
        self.current = load(root, site, tenant_sites(clients))
        self.last_errors: list[Diagnostic] = []
        self._stop = threading.Event()

    def reload(self) -> bool:
        """Validate the files and swap in the new rule set; on any error keep serving the old one."""
        self._print = self._fingerprint()
        try:
            loaded = load(self.root, self.site, tenant_sites(self.clients))
        except PackSetError as exc:
            self.last_errors = exc.diagnostics
            metrics.RELOADS.labels("rejected").inc()
            log.error("rule reload rejected; still serving revision %s", self.current.packset.revision)
            for d in exc.diagnostics[:50]:
                log.error("%s:%s:%s: error[%s]: %s", d.path, d.line, d.col, d.code, d.message)
            return False
        except Exception:
            metrics.RELOADS.labels("failed").inc()
            log.exception("rule reload failed; still serving revision %s", self.current.packset.revision)
            return False
        old = self.current.packset.revision
        self.current = loaded
        validation.clear()  # patient data held for speed does not outlive the rules it was read for
        self.last_errors = []
        metrics.RELOADS.labels("ok").inc()
        log.warning("rules reloaded: revision %s -> %s", old, loaded.packset.revision)
        return True

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        return fingerprint(self.root, self.site, self.clients, *tenant_sites(self.clients).values())

    def changed(self) -> bool:
        return self._fingerprint() != self._print

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
