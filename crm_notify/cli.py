"""The ``crm-notify`` command line."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.exc import SQLAlchemyError

from crm_notify.config import Settings, load_settings
from crm_notify.errors import ConfigurationError, CrmNotifyError, RuleFileError


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Context:
    def __init__(self, env_file: Path | None) -> None:
        self.env_file = env_file
        self._settings: Settings | None = None

    def override_settings(self, **overrides: Any) -> None:
        """Replace the settings with ``overrides`` applied (command-line options)."""
        self._settings = self.settings.model_copy(update=overrides)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.env_file)
            except ConfigurationError as exc:
                _fail(str(exc), 2)
        return self._settings


pass_ctx = click.make_pass_decorator(_Context)

#: Command groups in ``crm_notify/commands/``: name -> (module, object), imported only when the
#: command runs (or ``--help`` lists it), so other commands start without them.
LAZY_COMMANDS = {
    "consent": ("crm_notify.commands.consent", "consent"),
    "explain": ("crm_notify.commands.explain", "explain"),
    "gdpr": ("crm_notify.commands.gdpr", "gdpr"),
    "kpis": ("crm_notify.commands.kpis", "kpis"),
    "outbox": ("crm_notify.commands.outbox", "outbox"),
    "suppressions": ("crm_notify.commands.suppression", "suppressions"),
    "users": ("crm_notify.commands.users", "users"),
    "webhooks": ("crm_notify.commands.webhooks", "webhooks"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, name = LAZY_COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), name)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  crm-notify db upgrade                      create or migrate the database
  crm-notify api-keys create my-shop         a key for the shop's Segment SDK
  crm-notify serve --port 8000               run the event API (and delivery)
  crm-notify rules lint                      check rules/ and the templates they use
  crm-notify preview order-shipped --contact alice@example.com
  crm-notify users create ada@shop.example --role support   an account for /console

Settings come from CRM_NOTIFY_* environment variables (or --env-file); see the README.""",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read settings from this KEY=value file too (default: .env when present).",
)
@click.version_option(package_name="crm-notify")
@click.pass_context
def main(ctx: click.Context, env_file: Path | None) -> None:
    """crm-notify: Segment events in, rule-driven notifications out."""
    ctx.obj = _Context(env_file)


# --- database -------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_ctx
def db_upgrade(ctx: _Context, revision: str) -> None:
    """Create or migrate the database to the latest schema."""
    from alembic.util import CommandError

    from crm_notify.db import make_engine
    from crm_notify.migrations import current_revision, upgrade

    engine = make_engine(ctx.settings.database_url)
    try:
        upgrade(engine, revision)
        click.echo(f"database is at revision {current_revision(engine)}")
    except CommandError as exc:
        _fail(f"cannot migrate to {revision!r}: {exc}")
    finally:
        engine.dispose()


# --- API keys -------------------------------------------------------------------------------


@main.group("api-keys")
def api_keys() -> None:
    """Create, list and revoke keys for the event API."""


def _engine(ctx: _Context) -> Any:
    from crm_notify.db import make_engine
    from crm_notify.migrations import pending_revision

    engine = make_engine(ctx.settings.database_url)
    if pending_revision(engine) is not None:
        _fail("the database schema is not up to date: run `crm-notify db upgrade` first")
    return engine


@api_keys.command("create")
@click.argument("name")
@pass_ctx
def api_keys_create(ctx: _Context, name: str) -> None:
    """Create a key called NAME and print it (on the last line). It is shown only once."""
    from crm_notify.auth import ApiKeyError, create_api_key

    try:
        key = create_api_key(name, engine=_engine(ctx))
    except ApiKeyError as exc:
        _fail(str(exc))
    click.echo(f"Created API key {name!r}. Store it now; it cannot be shown again:", err=True)
    click.echo(key)


@api_keys.command("list")
@pass_ctx
def api_keys_list(ctx: _Context) -> None:
    """List keys (name, prefix, created, revoked); never the keys themselves."""
    from crm_notify.auth import list_api_keys

    for row in list_api_keys(engine=_engine(ctx)):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        click.echo(f"{row.name}\t{row.prefix}…\tcreated {row.created_at:%Y-%m-%d %H:%M}\t{revoked}")


@api_keys.command("revoke")
@click.argument("name")
@pass_ctx
def api_keys_revoke(ctx: _Context, name: str) -> None:
    """Revoke the key called NAME."""
    from crm_notify.auth import ApiKeyError, revoke_api_key

    try:
        revoke_api_key(name, engine=_engine(ctx))
    except ApiKeyError as exc:
        _fail(str(exc))
    click.echo(f"revoked {name!r}")


# --- service --------------------------------------------------------------------------------


def _policy(ctx: _Context) -> Any:
    from crm_notify.guards import SendPolicy

    try:
        return SendPolicy.from_settings(ctx.settings)
    except ConfigurationError as exc:
        _fail(str(exc), 2)


def _runtime(ctx: _Context) -> Any:
    from crm_notify.runtime import Runtime

    try:
        return Runtime.from_settings(ctx.settings, engine=_engine(ctx))
    except RuleFileError as exc:
        _fail(f"rules did not load: {exc}", 2)
    except CrmNotifyError as exc:
        _fail(str(exc), 2)


@main.command()
@click.option("--host", default=None, help="Address to bind (default CRM_NOTIFY_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default CRM_NOTIFY_PORT, 8000).")
@click.option(
    "--migrate/--no-migrate", default=False, help="Apply database migrations before starting."
)
@pass_ctx
def serve(ctx: _Context, host: str | None, port: int | None, migrate: bool) -> None:
    """Run the HTTP service (event API) and, without Redis, the delivery workers in-process."""
    import uvicorn

    from crm_notify.app import create_app

    settings = ctx.settings
    if host or port:
        # The bind address is also the default public URL (unsubscribe links).
        ctx.override_settings(host=host or settings.host, port=port or settings.port)
        settings = ctx.settings
    if migrate:
        from crm_notify.db import make_engine
        from crm_notify.migrations import upgrade

        engine = make_engine(settings.database_url)
        upgrade(engine)
        engine.dispose()
    app = create_app(settings, runtime=_runtime(ctx))
    bind_host, bind_port = settings.host, settings.port
    mode = {
        "redis": "Redis broker",
        "rabbitmq": "RabbitMQ broker",
        "embedded": "embedded broker (in-process delivery)",
    }[settings.broker_kind]
    _warn_about_setup(settings)
    click.echo(f"crm-notify listening on http://{bind_host}:{bind_port} with {mode}", err=True)
    if not settings.base_url.startswith("https://"):
        click.echo(
            f"warning: unsubscribe links point at {settings.base_url}; set CRM_NOTIFY_PUBLIC_URL "
            "to the service's public https URL (RFC 8058 one-click needs https)",
            err=True,
        )
    uvicorn.run(app, host=bind_host, port=bind_port, log_level="warning", access_log=False)


@main.command()
@click.option("--once", is_flag=True, help="Fire what is due now, then exit.")
@pass_ctx
def scheduler(ctx: _Context, once: bool) -> None:
    """Run a standalone scheduler that fires due timers (delays, idle carts, sequences).

    `crm-notify serve` runs one already; run this too (or instead, with serve on several
    hosts) where workers deliver from Redis. Several may run against PostgreSQL: each due
    timer fires once.
    """
    import signal

    _warn_about_setup(ctx.settings)
    runtime = _runtime(ctx)
    try:
        if once:
            fired = runtime.scheduler.run_once()
            runtime.gate_runner.run_once()
            runtime.sync_subscriptions()
            runtime.lifecycle.run_once()
            runtime.subscriptions.run_once()
            click.echo(f"fired {fired} timers")
            return
        signal.signal(signal.SIGTERM, lambda *_: runtime.scheduler.stop())
        runtime.gate_runner.start()  # send gates' notifications and timeouts run with it
        runtime.start_lifecycle()  # lifecycle events are ingested, subscribers told
        click.echo(
            f"scheduler running every {ctx.settings.scheduler_interval:g}s; Ctrl-C stops it",
            err=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            runtime.scheduler.run_forever()
    finally:
        runtime.close()


@main.command()
@click.option("--processes", "-p", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--threads", "-t", type=int, default=None, help="Threads per process.")
@pass_ctx
def worker(ctx: _Context, processes: int | None, threads: int | None) -> None:
    """Run Dramatiq worker processes that deliver queued notifications (needs a broker:
    CRM_NOTIFY_BROKER_URL, redis:// or amqp://, or CRM_NOTIFY_REDIS_URL)."""
    settings = ctx.settings
    if settings.embedded_broker:
        _fail(
            "no broker is configured (CRM_NOTIFY_BROKER_URL or CRM_NOTIFY_REDIS_URL): without "
            "one, `crm-notify serve` delivers in-process and no separate worker is needed",
            2,
        )
    _warn_about_setup(settings)
    _runtime(ctx).close()  # fail here, with a clear message, if rules or settings are bad
    argv = ["dramatiq", "crm_notify.worker.entry"]
    argv += ["--processes", str(processes or os.cpu_count() or 1)]
    argv += ["--threads", str(threads or settings.worker_threads)]
    if ctx.env_file is not None:
        os.environ.update(_read_env_file(ctx.env_file))
    from dramatiq.cli import main as dramatiq_main

    sys.argv = argv
    sys.exit(dramatiq_main())  # type: ignore[no-untyped-call]


def _warn_about_setup(settings: Settings) -> None:
    """Print what the set-up risks: a lease shorter than a delivery may take (a send in
    progress handed to a second worker), a Redis broker that loses messages."""
    from crm_notify.outbox.delivery import LONGEST_DELIVERY_S

    if settings.sending_lease_s < LONGEST_DELIVERY_S:
        click.echo(
            f"warning: CRM_NOTIFY_SENDING_LEASE_S={settings.sending_lease_s:g} is shorter than a "
            f"delivery may take ({LONGEST_DELIVERY_S:g}s: the time limit and the wait to record "
            "a send through a database outage): a send in progress may be handed to another "
            "worker and sent twice",
            err=True,
        )
    if settings.broker_kind != "redis" or settings.broker is None:
        return
    from crm_notify.worker.broker import redis_durability_warnings

    for line in redis_durability_warnings(settings.broker):
        click.echo(f"warning: {line}", err=True)


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


# --- rules ----------------------------------------------------------------------------------


@main.group()
def rules() -> None:
    """Check and describe rule files."""


@rules.command("lint")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@pass_ctx
def rules_lint(ctx: _Context, path: Path | None) -> None:
    """Check rule files (default: CRM_NOTIFY_RULES_DIR), the templates they name, and that the
    environment variables their webhook actions reference are set."""
    from crm_notify.render.templates import TemplateStore
    from crm_notify.rules.loader import lint_rules, load_rules

    settings = ctx.settings
    target = path or settings.rules_dir
    templates = TemplateStore(settings.templates_dir, default_language=settings.default_language)
    problems: list[str] = [
        str(err)
        for err in lint_rules(
            target,
            template_exists=templates.exists,
            purposes=ctx.settings.purpose_names,
            environ=os.environ,
        )
    ]
    if not problems:
        ruleset = load_rules(
            target, template_exists=templates.exists, purposes=ctx.settings.purpose_names
        )
        used = {step.template for rule in ruleset.rules for step in rule.steps if step.template}
        for name in sorted(used):
            problems += templates.lint(name)
        for problem in problems:
            click.echo(problem)
        if not problems:
            click.echo(f"{len(ruleset.rules)} rules OK in {target}")
            return
    else:
        for problem in problems:
            click.echo(problem)
    _fail(f"{len(problems)} problem(s) found")


@rules.command("test")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@pass_ctx
def rules_test(ctx: _Context, path: Path | None) -> None:
    """Run the test cases of rules (default: every *.test.yaml in CRM_NOTIFY_RULES_DIR).

    PATH is a directory, a test file, or a rule file (its <name>.test.yaml runs). Rules load
    from CRM_NOTIFY_RULES_DIR, or from PATH (or its folder) when that is outside it. Each case
    runs the real intake and scheduler on a fresh in-memory database with a simulated clock
    that jumps to each event, due timer and gate answer or deadline. Exit status: 0 all
    passed, 1 a case failed (the report shows expected vs got), 2 an invalid test or rule file
    (file:line: reason).

    \b
    rules/<name>.test.yaml:
      cases:
        - name: reminder 48 hours after the last cart activity   # unique in the file
          contact:                     # optional; identified at `start`, before the events
            {user_id: u1, email: alice@example.com, traits: {first_name: Alice},
             consent: [marketing]}     # consent: purposes the contact consented to
          start: 2026-03-27T12:00:00Z  # optional (default 2026-01-01T12:00:00Z)
          events:                      # in arrival order; `at` = offset from start
            - {at: 0h, track: Product Added, properties: {cart_id: C1, product_id: P1}}
            - {at: 30h, identify: {first_name: Alicia}}   # traits
            - {at: 30h, call: {type: track, event: Cart Viewed, properties: {cart_id: C1}}}
            # optional per event: `timestamp: 28h` (when it happened, if before it arrived),
            # `user_id: u2` (another contact's call)
          until: 200h                  # optional: run up to here (default last event + 30d)
          rule: abandoned-cart         # optional: only this rule's notifications count
          gate: {answer: release, after: 10m}   # optional, gated rules: release (default),
                                       # reject (reason: ...) or none (the timeout decides)
          expect:                      # exactly these, in order ([] = none)
            - {rule: abandoned-cart, template: abandoned_cart, at: 78h}   # at: within 1m
            - {template: abandoned_cart_reminder}       # rule from `rule:`; any time

    The format is described in full in crm_notify/rules/testing.py.
    """
    from crm_notify.render.templates import TemplateStore
    from crm_notify.rules.loader import load_rules
    from crm_notify.rules.testing import (
        exit_status,
        find_rule_tests,
        format_results,
        run_rule_tests,
    )

    settings = ctx.settings
    target = path or settings.rules_dir
    rules_dir = settings.rules_dir
    if not target.resolve().is_relative_to(rules_dir.resolve()):
        rules_dir = target if target.is_dir() else target.parent
    templates = TemplateStore(settings.templates_dir, default_language=settings.default_language)
    try:
        ruleset = load_rules(
            rules_dir, template_exists=templates.exists, purposes=settings.purpose_names
        )
    except RuleFileError as exc:
        _fail(f"rules did not load: {exc}", 2)
    files = find_rule_tests(target)
    if not files:
        click.echo(f"no rule tests (*.test.yaml) found for {target}")
        return
    results = run_rule_tests(files, rules=ruleset, policy=_policy(ctx))
    for line in format_results(results):
        click.echo(line)
    status = exit_status(results)
    if status:
        sys.exit(status)


@rules.command("schema")
@click.option(
    "--project", is_flag=True, help="The schema of the project file (_project.yaml) instead."
)
def rules_schema(project: bool) -> None:
    """Print the JSON Schema of rule files (for editor validation)."""
    from crm_notify.rules import project_file_json_schema
    from crm_notify.rules.loader import rule_file_json_schema

    schema = project_file_json_schema() if project else rule_file_json_schema()
    click.echo(json.dumps(schema, indent=2))


@rules.command("list")
@pass_ctx
def rules_list(ctx: _Context) -> None:
    """List loaded rules with their trigger, template and purpose."""
    from crm_notify.rules.loader import load_rules

    try:
        ruleset = load_rules(ctx.settings.rules_dir, purposes=ctx.settings.purpose_names)
    except RuleFileError as exc:
        _fail(str(exc))
    for rule in ruleset.rules:
        state = "" if rule.enabled else " (disabled)"
        click.echo(f"{rule.name}{state}\t{rule.trigger}\t{rule.template}\t{rule.purpose}")


# --- preview and events ---------------------------------------------------------------------


@main.command()
@click.argument("rule")
@click.option("--contact", "who", required=True, help="The contact's email or userId.")
@click.option(
    "--event",
    "event_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A Segment call (JSON) to preview with, instead of the contact's latest event.",
)
@click.option("--language", help="Render this language variant instead of the contact's.")
@click.option(
    "--html-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the HTML part (default: var/preview/RULE.html).",
)
@pass_ctx
def preview(
    ctx: _Context,
    rule: str,
    who: str,
    event_file: Path | None,
    language: str | None,
    html_out: Path | None,
) -> None:
    """Show what RULE would send to a contact: verdict, headers, text; HTML to a file.

    Each webhook action's request is shown as it would go out (method, URL, headers, body),
    with values from ${NAME} environment variables and the signature masked as ***. Fetch
    steps make no request: their URLs are shown, and the email renders with their fallback.
    """
    from sqlmodel import Session

    from crm_notify.clock import now
    from crm_notify.events.schemas import parse_calls_document
    from crm_notify.preview import build_preview, find_contact_by_address, headers_text

    runtime = _runtime(ctx)
    matched = runtime.rules.by_name(rule)
    if matched is None:
        names = ", ".join(r.name for r in runtime.rules.rules)
        _fail(f"no rule named {rule!r} (rules: {names})")
    call = None
    try:
        if event_file is not None:
            calls = parse_calls_document(event_file.read_text("utf-8"), received_at=now())
            call = calls[0]
        with Session(runtime.engine) as session:
            contact = find_contact_by_address(session, who)
            result = build_preview(
                session=session,
                rule=matched,
                contact=contact,
                templates=runtime.templates,
                mail_from=runtime.settings.mail_from,
                call=call,
                language=language,
                policy=runtime.policy,
                links=runtime.unsubscribe_links,
                webhooks=runtime.webhooks,
            )
    except CrmNotifyError as exc:
        _fail(str(exc))
    finally:
        runtime.webhooks.close()
        runtime.engine.dispose()
    click.echo(f"Verdict: {result.verdict}")
    for fetch in result.fetches:
        click.echo(f"Fetch {fetch.name}: {fetch.method} {fetch.url}")
        click.echo(f"  {fetch.error}" if fetch.error else f"  rendered with {fetch.uses}")
    if result.message is not None:
        click.echo("")
        click.echo(headers_text(result.message))
        click.echo("")
        click.echo(result.text or "(no text part)")
    for request in result.requests:
        click.echo(f"\nWebhook {request.action}: {request.method} {request.url}")
        if request.error is not None:
            click.echo(f"would fail: {request.error}")
            continue
        click.echo(f"Content type: {request.content_type or '(none)'}; {request.signing}")
        click.echo("".join(f"{name}: {value}\n" for name, value in request.headers))
        click.echo(request.body_text)
    if result.html is not None:
        target = html_out or runtime.settings.var_dir / "preview" / f"{rule}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.html, "utf-8")
        click.echo(f"\nHTML part written to {target}", err=True)
    failing = [request for request in result.requests if request.error is not None]
    if failing:
        _fail(f"webhook action {failing[0].action} would fail: {failing[0].error}")


@main.group()
def events() -> None:
    """Send events from the command line."""


@events.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--source", default="cli", show_default=True, help="Recorded as the event source.")
@pass_ctx
def events_send(ctx: _Context, file: str, source: str) -> None:
    """Ingest Segment calls from FILE (a JSON call, a JSON array, a batch body or JSON Lines).

    With Redis, the notifications are queued for `crm-notify worker`; without it (the
    embedded default) they are delivered before the command returns. Use - for stdin.
    """
    from crm_notify.clock import now
    from crm_notify.events.schemas import parse_calls_document

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"{file} is not UTF-8 text (byte {exc.start})")
    runtime = _runtime(ctx)
    try:
        calls = parse_calls_document(text, received_at=now())
        result = runtime.intake.ingest(calls, source)
    except CrmNotifyError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"database error ({type(exc).__name__}); nothing was written")
    finally:
        runtime.close()
    click.echo(
        f"accepted {result.accepted}, duplicates {result.duplicates}, "
        f"notifications {len(result.notification_ids)}"
    )
