"""`protocol-engine`: serve | validate | test | explain | fmt | list | new | report."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .runtime.config import DEFAULT_RULES

if TYPE_CHECKING:
    from .core.cards import Issued
    from .runtime.registry import Loaded


def _paths(paths: tuple[str, ...]) -> list[Path]:
    return [Path(p) for p in paths] or [Path(os.environ.get("PROTOCOL_ENGINE_RULES", str(DEFAULT_RULES)))]


@click.group()
def main() -> None:
    """Clinical-protocol rules served as CDS Hooks services."""


@main.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--demo", is_flag=True, help="Local demo: authentication disabled (logged loudly), CORS for the sandbox.")
def serve(bind: str, workers: int, demo: bool) -> None:
    """Run the service under gunicorn.

    In production bind to loopback and put the reverse proxy of `protocol-engine proxy-config` (Debian's nginx)
    in front: it buffers whole requests, so slow clients cannot hold gunicorn's worker threads.
    """
    if demo:
        os.environ.setdefault("PROTOCOL_ENGINE_AUTH", "disabled")
        os.environ.setdefault("PROTOCOL_ENGINE_CORS_ORIGINS", "https://sandbox.cds-hooks.org,http://localhost:3000")
    from .pack.packset import load_packset
    from .pack.site import load_site
    from .runtime.config import load_settings

    try:
        settings = load_settings()
    except ValueError as exc:  # a bad setting: one clear line, not a traceback from every worker
        click.echo(f"not started: {exc}", err=True)
        sys.exit(1)
    if settings.site is not None:  # check it once here: a bad one would fail every worker with a traceback
        base, diags = load_packset(settings.rules)
        site = None
        if base is not None:
            site, diags = load_site(settings.site, base)
        if site is None:
            for d in diags:
                click.echo(d.render(), err=True)
            where = "rule files" if base is None else f"site file {settings.site}"
            click.echo(f"not started: {len(diags)} error(s) in the {where}", err=True)
            sys.exit(1)
    conf = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    args = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers)]
    if conf.exists():
        args += ["--config", str(conf)]
    args.append("server:create_app()")
    os.execv(sys.executable, args)


@main.command(name="proxy-config")
@click.option("--server-name", default="cds.example.org", show_default=True)
@click.option("--listen", default="443", show_default=True, help="nginx listen address (TLS).")
@click.option("--upstream", default="127.0.0.1:8080", show_default=True, help="gunicorn's --bind address.")
@click.option("--cert", default="/etc/ssl/certs/protocol-engine.pem", show_default=True)
@click.option("--key", default="/etc/ssl/private/protocol-engine.key", show_default=True)
@click.option("--per-ip", default=128, show_default=True, help="Connections per client address.")
def proxy_config(server_name: str, listen: str, upstream: str, cert: str, key: str, per_ip: int) -> None:
    """Print the nginx site (deploy/nginx-protocol-engine.conf) for the production front end."""
    from .runtime.config import load_settings

    click.echo(render_proxy_config(server_name=server_name, listen=listen, upstream=upstream, cert=cert, key=key,
                                   per_ip=per_ip, max_body=load_settings().max_body), nl=False)


def render_proxy_config(*, server_name: str, listen: str, upstream: str, cert: str, key: str, per_ip: int,
                        max_body: int) -> str:
    template = (Path(__file__).resolve().parent.parent / "deploy" / "nginx-protocol-engine.conf").read_text()
    values = {"SERVER_NAME": server_name, "LISTEN": listen, "UPSTREAM": upstream, "CERT": cert, "KEY": key,
              "PER_IP": str(per_ip), "MAX_BODY": str(max_body)}
    for name, value in values.items():
        if any(c in value for c in ";{}\n\"'"):
            raise click.BadParameter(f"{name.lower()} must not contain ; {{ }} quotes or newlines")
        template = template.replace(f"@{name}@", value)
    return template


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--no-git", is_flag=True, help="Skip the version-bump check against git.")
@click.option("--base", default="HEAD", show_default=True, help="Git revision the version check compares with.")
@click.option("--site", "site_file", default=None, type=click.Path(dir_okay=False),
              help="Also check a site settings file (default: PROTOCOL_ENGINE_SITE, if set).")
def validate(paths: tuple[str, ...], no_git: bool, base: str, site_file: str | None) -> None:
    """Check rule files and value sets (and a site settings file); print every problem, compiler style."""
    from .authoring.conventions import validate_paths
    from .pack.site import load_site

    packset, diags = validate_paths(_paths(paths), None if no_git else base)
    site_file = site_file or os.environ.get("PROTOCOL_ENGINE_SITE")
    site = None
    if site_file and packset is not None:
        site, site_diags = load_site(Path(site_file), packset)
        diags += site_diags
    for d in diags:
        click.echo(d.render(), err=False)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        click.echo(f"{len(errors)} error(s)")
        sys.exit(1)
    assert packset is not None
    click.echo(f"ok: {len(packset.all_rules())} rules, {sum(len(p.index.valuesets) for p in packset.packs)} value "
               f"sets, revision {packset.revision}")
    if site is not None:
        click.echo(f"ok: site settings '{site.name}': {len(site.overrides)} change(s), revision {site.revision}")
        for o in site.overrides:
            click.echo(f"  {o.owner} {o.setting}: {o.shipped} -> {o.value}{' ' + o.unit if o.unit else ''}")


@main.command(name="test")
@click.argument("paths", nargs=-1)
@click.option("--rule", "only_rule", default=None, help="Run only this rule's cases.")
@click.option("-v", "--verbose", is_flag=True)
def test_cmd(paths: tuple[str, ...], only_rule: str | None, verbose: bool) -> None:
    """Run the test cases beside the rules: PASS/FAIL/SKIP per case."""
    from .authoring.conventions import rules_root
    from .authoring.testing import find_test_files, run_file
    from .hooks.pipeline import build_runtime
    from .pack.packset import load_packset

    given = _paths(paths)
    packset, diags = load_packset(rules_root(given))
    if packset is None:
        for d in diags:
            click.echo(d.render())
        click.echo("0 passed, 0 failed (rule files have errors; run protocol-engine validate)")
        sys.exit(1)
    runtimes = build_runtime(packset)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for path in find_test_files(given):
        results, tdiags = run_file(path, packset, runtimes, only_rule)
        for d in tdiags:
            click.echo(d.render())
            counts["FAIL"] += 1
        for r in results:
            counts[r.status] += 1
            click.echo(f"{r.status} {r.rule} {r.name}")
            if r.status == "FAIL":
                for problem in r.problems:
                    click.echo(f"     - {problem}")
                click.echo("     actual cards:")
                for c in r.issued:
                    click.echo(_card_line(c))
                if not r.issued:
                    click.echo("       (none)")
            elif verbose:
                for c in r.issued:
                    click.echo(_card_line(c))
    skipped = f", {counts['SKIP']} skipped" if counts["SKIP"] else ""
    click.echo(f"{counts['PASS']} passed, {counts['FAIL']} failed{skipped}")
    sys.exit(1 if counts["FAIL"] else 0)


def _card_line(card: Issued) -> str:
    return f"       {card.json['indicator']:8} {card.rule.id:7} {card.json['summary']}"


@main.command()
@click.option("--request", "request_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--service", "service_id", default=None,
              help="Service id (default: the ketamine-/pack service of the hook).")
@click.option("--now", default=None, help="Evaluation time (ISO 8601); default: the current time.")
@click.option("--rules", "rules_dir", default=None)
@click.option("--site", "site_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Site settings to evaluate with (default: PROTOCOL_ENGINE_SITE, if set), as the service would.")
def explain(request_file: str, service_id: str | None, now: str | None, rules_dir: str | None,
            site_file: str | None) -> None:
    """Evaluate a CDS Hooks request offline and show why each rule held or not."""
    from .authoring.explain import explain_rule, summary_lines
    from .core.engine import EngineError
    from .core.errors import ProtocolEngineError
    from .hooks.pipeline import run

    site_file = site_file or os.environ.get("PROTOCOL_ENGINE_SITE") or None
    loaded = _load_or_exit(rules_dir, site_file)
    try:
        body = json.loads(Path(request_file).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise click.ClickException(f"{request_file} is not JSON: {exc}") from exc
    if service_id is None:
        hook = body.get("hook") if isinstance(body, dict) else None
        service_id = next((sid for sid, rt in loaded.runtimes.items() if rt.service.hook == hook), None)
        if service_id is None:
            raise click.ClickException(f"no service answers hook {hook!r}; pass --service")
    when = dt.datetime.fromisoformat(now.replace("Z", "+00:00")) if now else dt.datetime.now(dt.UTC)
    try:
        decision = run(loaded.runtimes, loaded.packset.revision, service_id, body, when)
    except (ProtocolEngineError, EngineError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    rt = loaded.runtimes[service_id]
    click.echo(f"service {service_id} ({rt.service.hook}), rule set {loaded.packset.revision}, now {when.isoformat()}")
    site = loaded.packset.site
    if site is not None:
        changes = ", ".join(f"{o.owner} {o.setting} {o.shipped} -> {o.value}" for o in site.overrides)
        click.echo(f"site settings '{site.name}' (revision {site.revision}): {changes or 'no changes'}")
    if decision.skipped:
        click.echo(f"skipped: {decision.skipped}")
    fired = {f["rule"] for f in decision.fired + decision.shadow}
    click.echo("facts:")
    for fact in decision.facts:
        click.echo(f"  {fact['t']:12} {fact.get('describe', '')}")
    for rule in rt.rules:
        for line in explain_rule(rule, decision.facts, rule.id in fired):
            click.echo(line)
    for line in summary_lines(decision.issued):
        click.echo(line)


@main.command(name="list")
@click.option("--status", default=None)
@click.option("--rules", "rules_dir", default=None)
def list_cmd(status: str | None, rules_dir: str | None) -> None:
    """The rule catalogue: id, version, status, category, hooks, title."""
    from .authoring.catalogue import catalogue
    from .pack.packset import load_packset

    packset, diags = load_packset(Path(rules_dir) if rules_dir else _paths(())[0])
    if packset is None:
        for d in diags:
            click.echo(d.render())
        sys.exit(1)
    for r in catalogue(packset)["rules"]:
        if status and r["status"] != status:
            continue
        click.echo(f"{r['id']:7} {r['version']:7} {r['status']:7} {r['category']:16} {r['indicator']:8} "
                   f"{','.join(r['hooks']):58} {r['title']}")


def _load_or_exit(rules_dir: str | None, site: str | None) -> Loaded:
    """The rule set (with the site file, if any) the docs and settings commands describe; errors printed, exit 1."""
    from .core.errors import PackSetError
    from .runtime.registry import load

    try:
        return load(Path(rules_dir) if rules_dir else _paths(())[0], Path(site) if site else None)
    except PackSetError as exc:
        for d in exc.diagnostics:
            click.echo(d.render())
        sys.exit(1)


@main.command()
@click.option("--rules", "rules_dir", default=None, help="Rules directory (default: the configured one).")
@click.option("--out", "out_dir", default="docs/rules", show_default=True, help="Where the pages go.")
def docs(rules_dir: str | None, out_dir: str) -> None:
    """A Markdown page per rule for clinical reviewers (plain words, settings, codes, sources, test cases), with the
    values in force under PROTOCOL_ENGINE_SITE's site settings, if set (site values marked, shipped value beside)."""
    from .authoring.rulepage import index_markdown, pages, to_markdown

    loaded = _load_or_exit(rules_dir, os.environ.get("PROTOCOL_ENGINE_SITE"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generated = pages(loaded.packset, loaded.runtimes, loaded.shipped)
    for page in generated:
        (out / f"{page.rule.id}.md").write_text(to_markdown(page), encoding="utf-8")
    (out / "README.md").write_text(index_markdown(generated), encoding="utf-8")
    click.echo(f"{len(generated)} rule pages written to {out}")


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--check", is_flag=True, help="Exit 1 if a file is not in canonical form; change nothing.")
def fmt(paths: tuple[str, ...], check: bool) -> None:
    """Rewrite rule files in one canonical layout (key order, indentation), keeping comments."""
    from .authoring.fmt import format_file

    targets: list[Path] = []
    for p in _paths(paths):
        targets += sorted(p.rglob("*.rule.yaml")) if p.is_dir() else [p]
    changed = []
    for path in targets:
        new = format_file(path)
        if new is None:
            click.echo(f"{path}: cannot format (run protocol-engine validate)")
            continue
        if new != path.read_text(encoding="utf-8"):
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    verb = "would reformat" if check else "reformatted"
    for path in changed:
        click.echo(f"{verb} {path}")
    click.echo(f"{len(changed)} file(s) {verb}, {len(targets) - len(changed)} unchanged")
    if check and changed:
        sys.exit(1)


@main.command()
@click.argument("rule_id")
@click.option("--category", required=True)
@click.option("--title", default="New rule")
@click.option("--pack", default=None, help="Pack directory (default: the only pack under the rules root).")
def new(rule_id: str, category: str, title: str, pack: str | None) -> None:
    """Scaffold a rule file and its test file."""
    from .authoring.scaffold import scaffold

    for path in scaffold(rule_id, category, title, Path(pack) if pack else None, _paths(())[0]):
        click.echo(f"created {path}")


def report_period(since: str | None, until: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The same period as the analytics page: dates are whole UTC days, both included."""
    from .core.errors import BadRequest
    from .runtime.analytics import period

    try:
        start, end, _ = period({k: v for k, v in (("since", since), ("until", until)) if v}, now)
    except BadRequest as exc:  # the page's own words
        raise click.BadParameter(str(exc)) from exc
    return start, end


@main.command()
@click.option("--since", default=None, help="Start date or ISO time (default: 30 days before --until).")
@click.option("--until", default=None,
              help="End date, included: the whole day, as on the analytics page (or an ISO time; default: now).")
@click.option("--format", "fmt_", type=click.Choice(["text", "csv"]), default="text")
@click.option("--database", default=None, help="SQLAlchemy URL (default: PROTOCOL_ENGINE_DATABASE_URL).")
def report(since: str | None, until: str | None, fmt_: str, database: str | None) -> None:
    """Per rule: how often it fired, was accepted or overridden, and why."""
    from .runtime.config import load_settings
    from .runtime.store import Store

    url = database or load_settings().database_url
    now = dt.datetime.now(dt.UTC)

    start, end = report_period(since, until, now)
    store = Store(url)
    try:
        store.migrate()
        rows = store.rule_report(start, end)
    finally:
        store.engine.dispose()
    if fmt_ == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["rule", "fired", "accepted", "overridden", "override_rate", "override_reasons"])
        for r in rows:
            writer.writerow([r["rule"], r["fired"], r["accepted"], r["overridden"], _rate(r),
                             "; ".join(f"{k} ({v})" for k, v in sorted(r["reasons"].items(), key=lambda i: -i[1]))])
        return
    click.echo(f"rule activity {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC ({url.split('://')[0]})")
    click.echo(f"{'rule':8} {'fired':>6} {'accepted':>9} {'overridden':>11} {'override %':>10}")
    for r in rows:
        click.echo(f"{r['rule']:8} {r['fired']:>6} {r['accepted']:>9} {r['overridden']:>11} {_rate(r):>10}")
        for reason, n in sorted(r["reasons"].items(), key=lambda i: -i[1]):
            click.echo(f"{'':8}   override reason: {reason} ({n})")
    if not rows:
        click.echo("(no cards in this period)")


@main.command(name="settings")
@click.option("--site", "site_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Show the values with this site settings file applied (default: PROTOCOL_ENGINE_SITE, if set).")
@click.option("--all", "show_all", is_flag=True, help="Also list the settings fixed by the protocol.")
@click.option("--rules", "rules_dir", default=None)
def settings_cmd(site_file: str | None, show_all: bool, rules_dir: str | None) -> None:
    """The service defaults a site may change ([D]): where, value, allowed range, source."""
    from .core.model import Setting

    loaded = _load_or_exit(rules_dir, site_file or os.environ.get("PROTOCOL_ENGINE_SITE"))
    if loaded.packset.site:
        click.echo(f"# site settings '{loaded.packset.site.name}' (revision {loaded.packset.site.revision})")
    # Printed in the site file's own shape: copy the lines to change into a site settings file.
    def line(s: Setting) -> str:
        value = json.dumps(s.value) if isinstance(s.value, list) else str(s.value)
        notes = [f"shipped {s.shipped}"] if s.overridden else []
        if s.unit:
            notes.append(f"in {s.unit}")
        if s.minimum is not None or s.maximum is not None:
            notes.append(f"range {s.minimum}..{s.maximum}")
        if s.choices:
            notes.append("one of " + ", ".join(str(c) for c in s.choices))
        if not s.adjustable:
            notes.append("fixed by the protocol")
        if s.source:
            notes.append(s.source)
        return f"{s.name}: {value}".ljust(44) + (f"  # {'; '.join(notes)}" if notes else "")

    click.echo("protocols:")
    for pack in loaded.packset.packs:
        click.echo(f"  {pack.protocol.name}:")
        for s in pack.protocol.settings.values():
            click.echo(f"    {line(s)}")
    click.echo("rules:")
    for pack in loaded.packset.packs:
        for rule in sorted(pack.rules, key=lambda r: r.id):
            shown = [s for s in rule.setting_specs if s.adjustable or show_all]
            if shown:
                click.echo(f"  {rule.id}:")
                for s in shown:
                    click.echo(f"    {line(s)}")


@main.command(name="impact")
@click.option("--base", "base_rev", default="HEAD", show_default=True,
              help="Git revision whose rule files are compared with the working tree.")
@click.option("--site", "site_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Site settings applied to both sides (default: PROTOCOL_ENGINE_SITE, if set).")
@click.option("--base-site", "base_site_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Site settings for the base side only (compare two site files: --base-site OLD --site NEW).")
@click.option("--corpus", "corpus_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Directory of CDS Hooks requests and FHIR chart Bundles (*.json); repeatable "
                   "(default: tests/corpus and examples/requests, those that exist).")
@click.option("--rules", "rules_dir", default=None, help="Rules directory (default: PROTOCOL_ENGINE_RULES or rules/).")
@click.option("--now", default=None, help="Evaluation time for samples and the corpus (ISO 8601; default: now).")
@click.option("--no-cases", is_flag=True, help="Skip the rule cases.")
@click.option("--no-samples", is_flag=True, help="Skip the sample patients.")
@click.option("--json", "as_json_", is_flag=True, help="Print the report as JSON (for CI and review bots).")
def impact_cmd(base_rev: str, site_file: str | None, base_site_file: str | None, corpus_dirs: tuple[str, ...],
               rules_dir: str | None, now: str | None, no_cases: bool, no_samples: bool, as_json_: bool) -> None:
    """Compare the rule set at a git revision with the working tree over every case, sample and corpus request.

    Prints, per rule, the requests whose card appears, disappears or changes indicator, each with a reason.
    Exit status: 0 nothing changed, 1 something changed, 2 the comparison could not be made.
    """
    import time

    from .authoring.impact import (
        ImpactError,
        as_json,
        case_inputs,
        checkout,
        corpus_inputs,
        describe_rev,
        impact,
        render,
        sample_inputs,
        temporary_dir,
    )
    from .core.errors import PackSetError
    from .runtime.registry import load

    started = time.perf_counter()
    rules = Path(rules_dir) if rules_dir else _paths(())[0]
    site = site_file or os.environ.get("PROTOCOL_ENGINE_SITE")
    when = dt.datetime.fromisoformat(now.replace("Z", "+00:00")) if now else dt.datetime.now(dt.UTC)
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    here = Path(__file__).resolve().parent.parent
    corpora = [Path(c) for c in corpus_dirs] or [p for p in (here / "tests" / "corpus", here / "examples" / "requests")
                                                 if p.is_dir()]
    with temporary_dir() as tmp:
        try:
            base_rules = checkout(rules, base_rev, Path(tmp))
            base_site = base_site_file or site
            base = load(base_rules, Path(base_site) if base_site else None)
        except ImpactError as exc:
            click.echo(f"impact: {exc}", err=True)
            sys.exit(2)
        except PackSetError as exc:
            for d in exc.diagnostics:
                click.echo(d.render(), err=True)
            click.echo(f"impact: the rule set at {base_rev} (with its site settings) does not load", err=True)
            sys.exit(2)
        try:
            head = load(rules, Path(site) if site else None)
        except PackSetError as exc:
            for d in exc.diagnostics:
                click.echo(d.render(), err=True)
            click.echo("impact: the working tree's rule set does not load; run protocol-engine validate", err=True)
            sys.exit(2)
        inputs = [] if no_cases else list(case_inputs(head, when))
        if not no_samples:
            inputs += list(sample_inputs(head, when))
        for corpus in corpora:
            inputs += list(corpus_inputs(corpus, when))
        site_label = f", site {Path(site).name}" if site else ""
        report = impact(base, head, inputs,
                        f"rules at {base_rev} ({describe_rev(rules, base_rev)}, {base.packset.revision})"
                        + (f", site {Path(base_site_file).name}" if base_site_file else site_label),
                        f"working tree ({head.packset.revision}){site_label}")
    if as_json_:
        click.echo(json.dumps(as_json(report), indent=1))
        sys.exit(1 if report.changes else 0)
    for line in render(report):
        click.echo(line)
    click.echo(f"total run time {time.perf_counter() - started:.1f} s (loading both rule sets included)"
               + (f"; corpus {', '.join(str(c) for c in corpora)}" if corpora else "; no corpus"))
    sys.exit(1 if report.changes else 0)


def _rate(row: dict[str, Any]) -> str:
    return f"{100 * row['overridden'] / row['fired']:.0f}" if row["fired"] else "-"


if __name__ == "__main__":
    main()
