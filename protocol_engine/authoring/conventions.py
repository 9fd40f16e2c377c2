"""Whole-repository checks beyond one file: tests beside rules, cases that fire and stay silent,
rendered summaries, and versions bumped when a rule changed (against git)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from ..core.errors import Diagnostic
from ..pack import yamlsource
from ..pack.packset import RULE_SUFFIX, TEST_SUFFIX, PackSet, load_packset, pack_roots


def rules_root(paths: list[Path]) -> Path:
    """The directory holding the packs the given paths belong to."""
    for path in paths:
        start = path if path.is_dir() else path.parent
        for candidate in [start, *start.parents]:
            if (candidate / "protocol.yaml").is_file() or (candidate.is_dir() and pack_roots(candidate)):
                return candidate
    return paths[0] if paths else Path("rules")


def check_tests(packset: PackSet) -> list[Diagnostic]:
    """Each rule's test file: present, of the shorthand's schema (testing.file_problems: keys, given entries,
    fixture names, expect), naming its rule, with a case that fires and one that stays silent."""
    from .testing import file_problems  # testing imports the hook pipeline; validate needs it only here
    from .vignette import load_fixtures

    diags: list[Diagnostic] = []
    fixtures: dict[Path, dict[str, list[dict[str, Any]]]] = {}
    for pack in packset.packs:
        fixtures[pack.root], fdiags = load_fixtures(pack.root)
        diags.extend(fdiags)
    for rule in packset.all_rules():
        path = Path(rule.path)
        test = path.with_name(path.name[: -len(RULE_SUFFIX)] + TEST_SUFFIX)
        if not test.exists():
            diags.append(Diagnostic(rule.path, 1, 1, "missing-test-file", f"{rule.id} has no test file beside it",
                                    f"create {test.name}"))
            continue
        data, tdiags = yamlsource.load(test)
        if tdiags:
            diags.extend(tdiags)
            continue
        root = next((p.root for p in packset.packs if test.resolve().is_relative_to(p.root.resolve())), None)
        diags.extend(file_problems(test, data, fixtures.get(root, {}) if root else {}))
        raw = yamlsource.plain(data) if isinstance(data, dict) else {}
        if raw.get("rule") != rule.id:
            diags.append(Diagnostic(str(test), *yamlsource.value_pos(data, "rule"), "test-rule-mismatch",
                                    f"test file names rule {raw.get('rule')!r}, the rule file is {rule.id}"))
        firing = silent = False
        cases = raw.get("cases")
        for case in cases if isinstance(cases, list) else []:
            expect = case.get("expect") if isinstance(case, dict) else None
            if not isinstance(expect, dict):  # a wrong shape is file_problems' error
                continue
            cards = expect.get("cards")
            if rule.id in (expect.get("fires") or []) or any(
                    isinstance(c, dict) and c.get("rule", rule.id) == rule.id
                    for c in (cards if isinstance(cards, list) else [])):
                firing = True
            if rule.id in (expect.get("silent") or []) or expect.get("cards") == [] or expect.get("no_cards"):
                silent = True
        if not firing:
            diags.append(Diagnostic(str(test), 1, 1, "missing-positive-case", f"{rule.id} has no case where it fires"))
        if not silent:
            diags.append(Diagnostic(str(test), 1, 1, "missing-negative-case",
                                    f"{rule.id} has no case where it stays silent"))
    return diags


def check_versions(packset: PackSet, base: str = "HEAD") -> list[Diagnostic]:
    """A rule file whose content changed since `base` must carry a new version."""
    diags: list[Diagnostic] = []
    for rule in packset.all_rules():
        path = Path(rule.path).resolve()
        try:
            top = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"],
                                 capture_output=True, text=True, timeout=5, check=True).stdout.strip()
            rel = path.relative_to(Path(top).resolve())
            old = subprocess.run(["git", "-C", top, "show", f"{base}:{rel.as_posix()}"], capture_output=True,
                                 text=True, timeout=5)
        except (subprocess.SubprocessError, OSError, ValueError):
            return diags  # not a git checkout: nothing to compare against
        if old.returncode != 0:
            continue  # a new file
        current = path.read_text(encoding="utf-8")
        if old.stdout == current:
            continue
        from io import StringIO

        from ruamel.yaml import YAML

        try:
            old_version = str(YAML(typ="safe").load(StringIO(old.stdout)).get("version"))
        except Exception:
            continue
        if old_version == rule.version:
            data, _ = yamlsource.load(path)
            line, col = yamlsource.value_pos(data, "version")
            diags.append(Diagnostic(rule.path, line, col, "version-not-bumped",
                                    f"{rule.id} changed since {base} but its version is still {rule.version}",
                                    "bump the version (patch for wording, minor for logic, major for meaning)",
                                    length=len(rule.version)))
    return diags


def validate_paths(paths: list[Path], git_base: str | None = "HEAD") -> tuple[PackSet | None, list[Diagnostic]]:
    root = rules_root(paths)
    packset, diags = load_packset(root)
    if packset is None:
        return None, diags
    diags = check_tests(packset)
    if git_base:
        diags += check_versions(packset, git_base)
    return packset, diags
