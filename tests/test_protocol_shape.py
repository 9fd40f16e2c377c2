"""protocol.yaml written wrong gives compiler-style errors, never a traceback (probe 18 H1, M1, L3; Measure.worse).

The fuzz mutates every key and value of the shipped rules/ketamine/protocol.yaml (deleted, retyped, misspelt) and
loads each result: the loader returns a Protocol or positioned Diagnostics, and never raises.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from adapters.fhir.prefetch import TEMPLATES
from protocol_engine.core.errors import Diagnostic
from protocol_engine.pack import shape, yamlsource
from protocol_engine.pack.packset import load_pack
from protocol_engine.pack.protocol import load_protocol, protocol_from_tree

ROOT = Path(__file__).resolve().parent.parent
KETAMINE = ROOT / "rules" / "ketamine"
WRONG = (None, "x", 7, True, [], {}, ["x"], {"x": 1})


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and item; of a table of scalars (units, labels, count units) the first two, which stand for the rest."""
    items = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
    if path and all(not isinstance(v, (dict, list)) for _, v in items):
        items = items[:2]
    for key, value in items:
        yield (*path, key)
        yield from _paths(value, (*path, key))


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


def _mutants(tree: Any) -> Iterator[tuple[str, Any]]:
    for path in _paths(tree):
        name = ".".join(str(p) for p in path)
        for value in WRONG:
            mutant = copy.deepcopy(tree)
            _parent(mutant, path)[path[-1]] = copy.deepcopy(value)
            yield f"{name} = {value!r}", mutant
        mutant = copy.deepcopy(tree)
        parent = _parent(mutant, path)
        if isinstance(parent, CommentedMap):
            key = path[-1]
            yield f"{name} deleted", _without(mutant, path)
            typo = str(key)[:-1] + "x" if len(str(key)) > 1 else "xx"
            renamed = copy.deepcopy(tree)
            parent = _parent(renamed, path)
            parent.insert(list(parent).index(key), typo, parent.pop(key))
            yield f"{name} renamed {typo}", renamed
        elif isinstance(parent, CommentedSeq):
            del parent[path[-1]]
            yield f"{name} deleted", mutant


def _without(mutant: Any, path: tuple[Any, ...]) -> Any:
    del _parent(mutant, path)[path[-1]]
    return mutant


def test_every_mutation_of_the_ketamine_protocol_is_an_error_never_an_exception() -> None:
    tree, diags = yamlsource.load(KETAMINE / "protocol.yaml")
    assert not diags
    count = refused = 0
    raised: list[str] = []
    for label, mutant in _mutants(tree):
        count += 1
        try:
            protocol, found = protocol_from_tree(mutant, "protocol.yaml")
        except Exception as exc:  # the bug: a KeyError or TypeError escaped the loader
            raised.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        assert (protocol is None) == bool(found), label
        for d in found:
            assert isinstance(d, Diagnostic) and d.line >= 1 and d.col >= 1 and d.message, (label, d)
        refused += protocol is None
    assert not raised, "\n".join(raised)
    assert count > 1000 and refused > count // 2, (count, refused)


def pack_with(tmp_path: Path, old: str, new: str) -> Path:
    pack = tmp_path / "ketamine"
    shutil.copytree(KETAMINE, pack)
    protocol = pack / "protocol.yaml"
    text = protocol.read_text()
    assert old in text, old
    protocol.write_text(text.replace(old, new, 1))
    return pack


def errors(path: Path) -> list[str]:
    protocol, diags = load_protocol(path)
    assert protocol is None
    return [f"{d.line}:{d.col}: {d.code}: {d.message} | {d.hint}" for d in diags]


KETAMINE_DRUG = "  ketamine: {valueset: ketamine, names: [KETALAR]}\n"


@pytest.mark.parametrize(("new", "expected"), [
    # probe 18 H1: KeyError 'valueset' and "string indices must be integers" before
    (KETAMINE_DRUG + "  lithium2: {valuset: lithium}\n",
     ["63:14: unknown-key: drugs.lithium2: 'valuset' is not one of valueset, names, count_units | did you mean "
      "'valueset'?", "63:13: schema: drugs.lithium2 needs 'valueset'"]),
    (KETAMINE_DRUG + "  other: lithium\n",
     ["63:10: schema: drugs.other is a mapping with 'valueset', not the text 'lithium' | for example "
      "`other: {valueset: lithium}`"]),
])
def test_a_wrong_drug_entry_is_a_positioned_error(tmp_path: Path, new: str, expected: list[str]) -> None:
    found = errors(pack_with(tmp_path, KETAMINE_DRUG, new) / "protocol.yaml")
    for want in expected:
        assert any(f.startswith(want) for f in found), (want, found)


def test_a_wrong_route_entry_is_a_positioned_error(tmp_path: Path) -> None:
    found = errors(pack_with(tmp_path, "  oral: {valueset: route-oral, label: oral}",
                             "  oral: route-oral") / "protocol.yaml")
    assert found == ["68:9: schema: routes.oral is a mapping with 'valueset', not the text 'route-oral' | for example "
                     "`oral: {valueset: route-oral}`"]


def test_unknown_value_set_and_hook_are_reported_where_they_are_written(tmp_path: Path) -> None:
    """Probe 18 M1: both were at protocol.yaml:1:1, and the hook had no list and no suggestion."""
    pack = pack_with(tmp_path, "  ketamine: {valueset: ketamine,", "  ketamine: {valueset: ketamin,")
    _, diags, _ = load_pack(pack)
    assert [(d.line, d.col, d.code, d.hint) for d in diags] == [(62, 24, "unknown-valueset",
                                                                 "did you mean 'ketamine'?")]
    hook = errors(pack_with(tmp_path / "b", "    hook: order-sign\n", "    hook: order-signed\n") / "protocol.yaml")
    line = (KETAMINE / "protocol.yaml").read_text().split("    hook: order-sign\n")[0].count("\n") + 1
    assert hook == [f"{line}:11: unknown-hook: service ketamine-order-sign: hook 'order-signed' is not one of "
                    "order-select, order-sign, patient-view, appointment-book, encounter-start | "
                    "did you mean 'order-sign'?"]


def test_worse_is_required(tmp_path: Path) -> None:
    """Measure.worse was silently 'higher' when left out: the last hidden pack default."""
    found = errors(pack_with(tmp_path, "    worse: lower\n", "") / "protocol.yaml")
    line = (KETAMINE / "protocol.yaml").read_text().split("  spo2:\n")[0].count("\n") + 2
    assert len(found) == 1 and found[0].startswith(f"{line}:5: schema: measures.spo2 needs 'worse' (higher or lower")
    found = errors(pack_with(tmp_path / "b", "    worse: lower\n", "    worse: lowr\n") / "protocol.yaml")
    worse = (KETAMINE / "protocol.yaml").read_text().split("    worse: lower\n")[0].count("\n") + 1
    assert found == [f"{worse}:12: schema: measures.spo2: 'worse' is one of higher, lower, not the text 'lowr' | "
                     "did you mean 'lower'?"]


def test_the_fetch_look_back_is_required(tmp_path: Path) -> None:
    """Probe 18 L3: a pack without `fetch:` fetched missing resources with no date bound."""
    found = errors(pack_with(tmp_path, "  MedicationAdministration: 400d\n", "") / "protocol.yaml")
    assert len(found) == 1 and "fetch needs 'MedicationAdministration'" in found[0]
    pack = tmp_path / "b"
    shutil.copytree(KETAMINE, pack)
    text = (pack / "protocol.yaml").read_text()
    start = text.index("fetch:")
    (pack / "protocol.yaml").write_text(text[:start] + text[text.index("services:"):])
    found = errors(pack / "protocol.yaml")
    assert len(found) == 1 and "protocol.yaml needs 'fetch'" in found[0] and "(the engine assumes no limit)" in found[0]


def test_the_fetch_types_are_the_dated_templates() -> None:
    assert set(shape.FETCH_TYPES) == {rtype for rtype, (_, _, date) in TEMPLATES.items() if date}


def test_a_misspelt_section_gets_a_suggestion(tmp_path: Path) -> None:
    found = errors(pack_with(tmp_path, "\nroutes:", "\nroute:") / "protocol.yaml")
    assert found == ["64:1: unknown-key: protocol.yaml: 'route' is not one of protocol, version, title, semantics, "
                     "defaults, internal_labels, display_units, drugs, routes, measures, units, presence, course, "
                     "order, scores, fetch, services | did you mean 'routes'?"]


def test_a_running_service_keeps_its_rules_when_protocol_yaml_breaks(tmp_path: Path) -> None:
    """The reload path: the bad drug entry is a rejected reload with its positioned error, not a failed one."""
    from protocol_engine.runtime.registry import Registry

    pack = tmp_path / "rules" / "ketamine"
    shutil.copytree(KETAMINE, pack)
    registry = Registry(tmp_path / "rules")
    revision = registry.current.packset.revision
    protocol = pack / "protocol.yaml"
    protocol.write_text(protocol.read_text().replace(KETAMINE_DRUG, KETAMINE_DRUG + "  other: lithium\n", 1))
    assert registry.reload() is False
    assert registry.current.packset.revision == revision
    assert [(d.line, d.col, d.code) for d in registry.last_errors] == [(63, 10, "schema")]


SITE = """\
protocols:
  ketamine: {measures.blood-pressure.worse: lower, course.gap: 90d}
rules:
  DOS-01: {limit: {value: 0.6, unit: mg/kg, source: Formulary 2026}}
  CI-05: {lookback: 24h}
site: Fuzz clinic
"""

def test_every_mutation_of_a_site_file_is_an_error_never_an_exception(tmp_path: Path) -> None:
    """The sweep's other reader of pack settings: site.py (and settingspec through it)."""
    from protocol_engine.pack.packset import load_packset
    from protocol_engine.pack.site import load_site

    base, diags = load_packset(ROOT / "rules")
    assert base is not None, diags
    source = tmp_path / "good.yaml"
    source.write_text(SITE)
    tree, _ = yamlsource.load(source)
    assert load_site(source, base)[0] is not None
    raised = []
    for n, (label, mutant) in enumerate(_mutants(tree)):
        path = tmp_path / f"site-{n}.yaml"
        path.write_text(yamlsource.dump(mutant))
        try:
            site, found = load_site(path, base)
        except Exception as exc:
            raised.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        assert (site is None) == bool(found), label
    assert not raised, "\n".join(raised)


def test_every_mutation_of_a_rule_test_file_is_an_error_never_an_exception() -> None:
    """validate's test-file check (testing.file_problems) reads any shape of YAML without raising."""
    from protocol_engine.authoring.testing import file_problems
    from protocol_engine.authoring.vignette import load_fixtures

    fixtures, diags = load_fixtures(KETAMINE)
    assert not diags
    path = next(KETAMINE.rglob("TIM-04-*.test.yaml"))
    tree, _ = yamlsource.load(path)
    assert file_problems(path, tree, fixtures) == []
    raised = []
    for label, mutant in _mutants(tree):
        try:
            file_problems(path, mutant, fixtures)
        except Exception as exc:
            raised.append(f"{label}: {type(exc).__name__}: {exc}")
    assert not raised, "\n".join(raised[:20])


def test_a_misspelt_status_is_an_error_with_fhir_s_codes(tmp_path: Path) -> None:
    """Re-probe 18: `administration_status: [completed, in_progress, stoped]` passed validate; stopped and
    in-progress infusions would silently no longer count as doses."""
    found = errors(pack_with(tmp_path, "administration_status: [completed, in-progress, stopped]",
                             "administration_status: [completed, in_progress, stoped]") / "protocol.yaml")
    assert len(found) == 2
    assert "'in_progress' is not a code of FHIR R4 MedicationAdministration.status" in found[0]
    assert found[0].endswith("did you mean 'in-progress'?") and found[1].endswith("did you mean 'stopped'?")
