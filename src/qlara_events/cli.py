"""``qlara-events``: serve the roles, migrate the database, manage accounts.

With no environment set every command points at the local infrastructure ``make run`` starts. Commands print
readable text; with ``--json``, one JSON object per line instead (for scripts). Every error is one line on
stderr, ``qlara-events COMMAND: MESSAGE``, and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import os
import secrets
import signal
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from qlara_events import __version__, logs
from qlara_events.api.keys import key_json
from qlara_events.api.webhooks import webhook_json
from qlara_events.config import ConfigError, Settings, production_problems
from qlara_events.dispatcher.ssrf import parse_networks
from qlara_events.errors import QlaraError
from qlara_events.kafka import ensure_topics
from qlara_events.logs import get_logger
from qlara_events.sandbox import Behaviour, Sandbox
from qlara_events.secrets_box import parse_key
from qlara_events.server import HANDLER_CANCELLATION, MAX_LINE_SIZE, ROLES, build_app
from qlara_events.standard_webhooks import secret_key, signature_header
from qlara_events.store import accounts, campaigns, inbox, partitions, socials, webhooks
from qlara_events.store.accounts import IPNetwork
from qlara_events.store.db import Conn, create_pool
from qlara_events.store.migrate import migrate

T = TypeVar("T")

log = get_logger("cli")


# ----------------------------------------------------------------------------------------------- errors


class CliError(QlaraError):
    """A command cannot do what it was asked; the message is the one line its operator reads (exit code 1)."""


def _explain(exc: Exception) -> str | None:
    """The line an operator reads for a failure they can act on; None for anything else (a bug keeps its
    traceback: that is what fixing it takes)."""
    if isinstance(exc, CliError | partitions.CannotDrop):
        return str(exc)
    if isinstance(exc, accounts.UnknownAccount):
        return f"no account {exc.args[0]}"
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc.message}"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return f"database error: {exc} (has `qlara-events migrate` run?)"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"database error: {exc}"  # with the server's DETAIL line, if any (_fail joins the lines)
    if isinstance(exc, KafkaError):
        return f"Kafka error: {exc}"
    if isinstance(exc, OSError):
        return str(exc) or type(exc).__name__
    return None


def _fail(prog: str, message: str, code: int = 1) -> NoReturn:
    """Print ``prog: message`` as one line on stderr and exit with ``code``."""
    line = " ".join(message.split())  # one line, whatever a message (a server DETAIL, a list) spans
    sys.stderr.write(f"{prog}: {line}\n")
    sys.stderr.flush()
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors (a missing or malformed argument) read like every other error of the CLI:
    one line, exit code 1 (argparse's own are the usage and a line, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        _fail(self.prog, f"{message}; see --help")


# ------------------------------------------------------------------------------------- argument types


def _amount(raw: str) -> Decimal:
    """An amount of money: a finite decimal number (``100.50``)."""
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise argparse.ArgumentTypeError(f"not an amount: {raw!r} (e.g. 100.50)")
    return amount


def _instant(raw: str) -> dt.datetime:
    """An ISO-8601 date-time with a UTC offset (``2026-04-02T09:00:00Z``), in UTC."""
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date-time: {raw!r} (e.g. 2026-04-02T09:00:00Z)") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{raw!r} has no UTC offset (add Z or e.g. +02:00)")
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 is in year 0 in UTC
        raise argparse.ArgumentTypeError(f"{raw!r} lies outside years 1-9999 in UTC") from None


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    """Addresses or CIDR networks, comma-separated."""
    try:
        return parse_networks(raw)
    except ValueError as exc:
        # parse_networks names the setting it was written for; here the value comes from a flag.
        raise argparse.ArgumentTypeError(str(exc).removeprefix("QLARA_WEBHOOK_ALLOWED_NETWORKS: ")) from None


def _json_objects(raw: str) -> list[dict[str, object]]:
    """A JSON array of objects."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise argparse.ArgumentTypeError("must be a JSON array of objects")
    return value


def _roles(raw: str) -> tuple[str, ...]:
    """``all``, one role, or several joined by commas (``ingress,api``)."""
    if raw == "all":
        return ROLES
    roles = tuple(r.strip() for r in raw.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise argparse.ArgumentTypeError(f"roles are all, or a comma-separated choice of {', '.join(ROLES)}")
    return roles


# ----------------------------------------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    """``value`` as the JSON output carries it: times in UTC with ``Z``, amounts and networks as strings."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    """A plain value as text: ``-`` for none, lists joined by commas, objects as ``name value`` pairs."""
    if value is None or value == []:
        return "-"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return str(value)


def _write_json(items: Iterable[Mapping[str, Any]]) -> None:
    sys.stdout.write("".join(orjson.dumps(_plain(i)).decode() + "\n" for i in items))


def _show(args: argparse.Namespace, item: Mapping[str, Any], text: str | None = None) -> None:
    """One result: a JSON object on one line with ``--json``; else ``text``, or a ``name  value`` line a field."""
    if args.json:
        _write_json([item])
    elif text is not None:
        print(text)
    else:
        width = max(map(len, item))
        print("\n".join(f"{k:<{width}}  {_cell(_plain(v))}" for k, v in item.items()))


def _show_all(args: argparse.Namespace, items: Sequence[Mapping[str, Any]], columns: Sequence[str],
              none: str) -> None:
    """Several results: one JSON object per line with ``--json``; else a table of ``columns`` (``none`` when
    there is nothing to show)."""
    if args.json:
        _write_json(items)
        return
    if not items:
        print(none)
        return
    table = [list(columns), *([_cell(_plain(i[c])) for c in columns] for i in items)]
    widths = [max(len(row[n]) for row in table) for n in range(len(columns))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table))


# ------------------------------------------------------------------------------------- running commands


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(os.environ, dev_secrets=getattr(args, "dev", False))


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """A new event loop for a command: uvloop's with ``QLARA_UVLOOP=true``, else the standard one.

    Falls back to the standard loop where uvloop is not installed (it does not support Windows).
    """
    if settings.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the package whose loop runs (what the start-up log line reports)."""
    return type(loop).__module__.partition(".")[0]


def _run(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new loop of :func:`new_event_loop` (``asyncio.run`` otherwise)."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(settings)) as runner:
        return runner.run(main)


def _database(url: str) -> str:
    """Where ``url`` points, without its credentials (an error message must not carry a password)."""
    try:
        u = urllib.parse.urlsplit(url)
        return f"{u.hostname or 'localhost'}:{u.port or 5432}{u.path}"
    except ValueError:
        return "QLARA_DATABASE_URL"


async def _pool(settings: Settings, max_size: int = 1) -> asyncpg.Pool:
    """A pool for a command; a database it cannot reach (stopped, refusing, unknown) is a :class:`CliError`."""
    try:
        return await create_pool(settings, max_size=max_size)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(f"cannot connect to PostgreSQL at {_database(settings.database_url)}: {exc}") from None


async def _with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run ``work`` on a pool of one connection of its own, then close the pool."""
    pool = await _pool(settings)
    try:
        return await work(pool)
    finally:
        await pool.close()


async def _with_connection(settings: Settings, work: Callable[[Conn], Awaitable[T]]) -> T:
    """Run ``work`` on one connection of a pool of its own, then close the pool."""
    async def on_one(pool: asyncpg.Pool) -> T:
        async with pool.acquire() as conn:
            return await work(conn)

    return await _with_pool(settings, on_one)


def _on_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """An operator command's ``work``, on a pool of one connection (see :func:`_with_pool`)."""
    return _run(settings, _with_pool(settings, work))


def _on_db(settings: Settings, work: Callable[[Conn], Awaitable[T]]) -> T:
    """An operator command's ``work``, on one connection (see :func:`_with_connection`)."""
    return _run(settings, _with_connection(settings, work))


def _on_account(args: argparse.Namespace, work: Callable[[Conn], Awaitable[T]]) -> T:
    """``work`` for account ``args.account``, in one transaction in which the account exists (else
    :class:`accounts.UnknownAccount`) and cannot be deleted."""
    async def checked(conn: Conn) -> T:
        async with conn.transaction():
            await accounts.require_account(conn, args.account)
            return await work(conn)

    return _on_db(_settings(args), checked)


async def _migrate(settings: Settings) -> list[str]:
    return await _with_connection(settings, migrate)


async def _dev_key(settings: Settings, existing: str | None) -> str:
    """The development API key: ``existing`` while it is valid, else a new development account's."""
    pool = await _pool(settings, max_size=2)
    try:
        if existing and await accounts.authenticate(pool, existing) is not None:
            return existing
        async with pool.acquire() as conn:
            _, raw = await accounts.create_account(conn, "development")
        return raw
    finally:
        await pool.close()


# --------------------------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> None:
    """Run one role, several, or all of them in this process (or, with --processes, each in its own)."""
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    roles: tuple[str, ...] = args.role
    if args.processes and set(roles) != set(ROLES):
        raise CliError("--processes runs every role: use it with --role all")
    if not args.dev:
        problems = production_problems(os.environ, settings, roles)
        if problems:
            raise CliError("refusing to start outside --dev: "
                           + " ".join(f"({n}) {problem}" for n, problem in enumerate(problems, 1)))
    if args.check:
        print(f"configuration ok for {','.join(roles)}{' (--dev)' if args.dev else ''}", flush=True)
        return
    dev_key: str | None = None

    async def prepare() -> None:
        nonlocal dev_key
        if args.migrate:
            await _migrate(settings)
            await ensure_topics(settings)
        if args.dev_key_file:
            dev_key = await _dev_key(settings, existing)

    key_file = Path(args.dev_key_file) if args.dev_key_file else None
    existing = key_file.read_text().strip() if key_file and key_file.exists() else None
    # One loop for the preparation and the server (web.run_app closes it when the server stops).
    loop = new_event_loop(settings)
    log.info("event_loop", loop=loop_name(loop), uvloop_setting=settings.uvloop)
    loop.run_until_complete(prepare())
    if key_file and dev_key and dev_key != existing:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(dev_key + "\n")
        key_file.chmod(0o600)
    base = f"http://{settings.http_host}:{settings.http_port}"
    banner = [f"qlara-events {__version__}: roles {', '.join(roles)}", f"base URL: {base}",
              f"event loop: {loop_name(loop)}"]
    if dev_key:
        banner.append(f"development API key: {dev_key}")
    if args.dev:
        banner.append("development secrets for unset provider tokens: see docs/configuration.md")
    if args.processes:
        from qlara_events.supervisor import supervise

        child_args = [*(["--dev"] if args.dev else []), "--delivery-rate", str(args.delivery_rate),
                      "--read-rate", str(args.read_rate), "--delay-ms", str(args.delay_ms)]
        banner[0] += " (one process each: ingress,api on the base port, projector and dispatcher on the next two)"
        try:
            status = loop.run_until_complete(supervise(settings.http_port, child_args, banner=banner,
                                                       sandbox=args.sandbox, ops_base=settings.ops_port))
        finally:
            loop.close()
        sys.exit(status)
    behaviour = Behaviour(delivery_rate=args.delivery_rate, read_rate=args.read_rate,
                          delay_s=args.delay_ms / 1000) if args.sandbox else None
    app = build_app(settings, roles, sandbox=behaviour)

    def announce(_: str) -> None:
        if args.child:  # the supervisor prints the banner and the one ready line
            print(f"{','.join(roles)}: listening on {base} (event loop: {loop_name(loop)})", flush=True)
            return
        print("\n".join([*banner, f"ready on {base} (Ctrl-C to stop)"]), flush=True)

    web.run_app(app, host=settings.http_host, port=settings.http_port, print=announce, backlog=settings.http_backlog,
                shutdown_timeout=15, access_log=None, handle_signals=True, loop=loop,
                handler_cancellation=HANDLER_CANCELLATION, max_line_size=MAX_LINE_SIZE)
    if not args.child:
        print("stopped: in-flight requests finished, consumer offsets committed", flush=True)


def cmd_migrate(args: argparse.Namespace) -> None:
    """Apply pending database migrations (and create Kafka topics with --topics)."""
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    applied = _run(settings, _migrate(settings))
    lines = [f"applied: {', '.join(applied)}" if applied else "database is up to date"]
    topics: list[str] | None = None
    if args.topics:
        _run(settings, ensure_topics(settings))
        topics = list(settings.topics.all())
        lines.append(f"topics ready: {', '.join(topics)}")
    _show(args, {"applied": applied, "topics": topics}, "\n".join(lines))


def cmd_history_drop_month(args: argparse.Namespace) -> None:
    """Delete one month of message history (its partition, identities, refs, parts and timeline)."""
    gone = _on_db(_settings(args), lambda conn: partitions.drop_month(conn, args.month))
    _show(args, {"month": args.month, **gone}, f"dropped {args.month}: {gone['messages']} messages, "
                                               f"{gone['keys']} message keys, {gone['events']} timeline events")


def cmd_accounts_create(args: argparse.Namespace) -> None:
    """Create an account and print its id and first API key (shown only here)."""
    account_id, raw = _on_db(_settings(args), lambda conn: accounts.create_account(conn, args.name))
    _show(args, {"accountId": account_id, "apiKey": raw},
          f"account {account_id}\nAPI key {raw} (shown only now: only its digest is stored)")


def cmd_accounts_list(args: argparse.Namespace) -> None:
    """Every account with its plan, credit and number of active keys."""
    rows = _on_db(_settings(args), accounts.list_accounts)
    _show_all(args, [{"accountId": r["account_id"], "name": r["name"], "plan": r["plan"], "credit": r["credit"],
                      "activeKeys": r["active_keys"], "createdAt": r["created_at"]} for r in rows],
              ("accountId", "name", "plan", "credit", "activeKeys", "createdAt"), "no accounts")


def cmd_accounts_credit(args: argparse.Namespace) -> None:
    """Add credit to an account (campaign confirmation reserves from it)."""
    credit = _on_account(args, lambda conn: campaigns.add_credit(conn, args.account, args.add))
    _show(args, {"accountId": args.account, "credit": credit}, f"account {args.account}: credit {credit}")


def cmd_accounts_allow_ip(args: argparse.Namespace) -> None:
    """Show or change an account's IP allow-list (Qlara §1.2)."""
    add = [n for networks in args.add for n in networks]
    remove = [n for networks in args.remove for n in networks]
    networks = _on_db(_settings(args), lambda conn: accounts.change_networks(conn, args.account, add, remove))
    admitted = ", ".join(map(str, networks)) if networks else "any address (no allow-list)"
    _show(args, {"accountId": args.account, "networks": networks}, f"account {args.account} admits {admitted}")


def cmd_keys_list(args: argparse.Namespace) -> None:
    """The account's active API keys (never their value: only its digest is stored)."""
    rows = _on_account(args, lambda conn: accounts.list_keys(conn, args.account))
    _show_all(args, [key_json(r) for r in rows], ("id", "prefix", "name", "operations", "username", "createdAt"),
              f"account {args.account} has no active keys")


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    """Revoke an API key at once: its next request is a 401, on every api process."""
    if not _on_account(args, lambda conn: accounts.revoke(conn, args.account, args.key)):
        raise CliError(f"account {args.account} has no active key {args.key}")
    _show(args, {"accountId": args.account, "keyId": args.key, "status": "REVOKED"},
          f"revoked key {args.key} of account {args.account}: its next request is a 401")


async def _webhook(db: asyncpg.Pool, account_id: str) -> asyncpg.Record:
    """The account's webhook (a :class:`CliError` when it has none)."""
    await accounts.require_account(db, account_id)
    hook = await webhooks.get(db, account_id)
    if hook is None:
        raise CliError(f"account {account_id} has no delivery-status webhook")
    return hook


def cmd_webhooks_show(args: argparse.Namespace) -> None:
    """The account's webhook, as the API shows it but without its signing secret, and its undelivered
    deliveries."""
    async def read(pool: asyncpg.Pool) -> tuple[asyncpg.Record, dict[str, int]]:
        hook = await _webhook(pool, args.account)
        return hook, await webhooks.delivery_counts(pool, hook["webhook_id"])

    hook, counts = _on_pool(_settings(args), read)
    # The secret signs what partners trust: an operator's terminal, shell history or log is no place for it.
    shown = {k: v for k, v in webhook_json(hook).items() if k != "signingSecret"}
    _show(args, {**shown, "deliveries": {"waiting": counts["waiting"], "retrying": counts["retrying"],
                                         "inFlight": counts["in_flight"], "dead": counts["dead"]}})


def cmd_webhooks_recover(args: argparse.Namespace) -> None:
    """Reschedule the webhook's failed and dead deliveries created in [--since, --until) for a new attempt
    now, as ``POST .../deliveries/recover`` does."""
    until = args.until or dt.datetime.now(dt.UTC)
    if args.since is not None and until <= args.since:
        raise CliError("--until must be after --since")
    since = args.since or dt.datetime.min.replace(tzinfo=dt.UTC)

    async def recover(pool: asyncpg.Pool) -> tuple[asyncpg.Record, int]:
        hook = await _webhook(pool, args.account)
        return hook, await webhooks.recover(pool, hook["webhook_id"], since, until)

    hook, n = _on_pool(_settings(args), recover)
    window = f"created {'before' if args.since is None else f'from {_plain(args.since)} to'} {_plain(until)}"
    text = f"rescheduled {n} failed or dead deliveries of webhook {hook['webhook_id']} ({window})"
    if hook["status"] != "ACTIVE":
        text += f"; the webhook is {hook['status']}: they wait until its URL is set again (PUT)"
    _show(args, {"accountId": args.account, "webhookId": hook["webhook_id"], "webhookStatus": hook["status"],
                 "since": args.since, "until": until, "scheduled": n}, text)


def cmd_users_create(args: argparse.Namespace) -> None:
    """Create an account user (an inbox assignee, a key's owner)."""
    user_id = _on_account(args, lambda conn: inbox.create_user(conn, args.account, args.name, args.email))
    _show(args, {"userId": user_id, "accountId": args.account, "name": args.name},
          f"user {user_id} ({args.name}) of account {args.account}")


def cmd_users_list(args: argparse.Namespace) -> None:
    """The account's users."""
    rows = _on_account(args, lambda conn: inbox.users(conn, args.account))
    _show_all(args, [{"userId": r["user_id"], "name": r["name"], "email": r["email"], "avatarUrl": r["avatar_url"]}
                     for r in rows], ("userId", "name", "email"), f"account {args.account} has no users")


def cmd_socials_connect(args: argparse.Namespace) -> None:
    """Register a social profile connected through the dashboard's OAuth (the token is stored sealed)."""
    settings = _settings(args)
    if not settings.social_token_key:
        raise CliError("QLARA_SOCIAL_TOKEN_KEY is not set: it encrypts tokens at rest (base64 of 32 random bytes)")
    key = parse_key(settings.social_token_key)
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    connection_id = _on_account(args, lambda conn: socials.connect(
        conn, key, account_id=args.account, platform=args.platform, profile_id=args.profile_id, token=token,
        expires_at=args.expires_at, username=args.username, profile_name=args.name, picture_url=args.picture_url,
        phone_number=args.phone_number, pages=args.pages))
    _show(args, {"connectionId": connection_id, "platform": args.platform, "profileId": args.profile_id},
          f"connected {args.platform} profile {args.profile_id} to account {args.account} "
          f"(connection {connection_id})")


def cmd_socials_revoke(args: argparse.Namespace) -> None:
    """Mark a connection's token revoked."""
    if not _on_account(args, lambda conn: socials.revoke(conn, args.account, args.platform, args.profile_id)):
        raise CliError(f"account {args.account} has no {args.platform} connection {args.profile_id}")
    _show(args, {"accountId": args.account, "platform": args.platform, "profileId": args.profile_id,
                 "status": "TOKEN_REVOKED"}, f"revoked the token of {args.platform} profile {args.profile_id}")


def _sender(args: argparse.Namespace) -> dict[str, Any]:
    return {"channel": args.channel, "address": args.address, "accountId": args.account}


def cmd_senders_add(args: argparse.Namespace) -> None:
    """Route inbound messages sent to an address (a number or agent id) to an account."""
    _on_account(args, lambda conn: inbox.add_sender(conn, args.channel, args.address, args.account))
    _show(args, _sender(args),
          f"inbound {args.channel} messages to {args.address} now belong to account {args.account}")


def cmd_senders_list(args: argparse.Namespace) -> None:
    """The routed addresses, every account's or one account's."""
    async def read(conn: Conn) -> list[asyncpg.Record]:
        if args.account is not None:
            await accounts.require_account(conn, args.account)
        return await inbox.list_senders(conn, args.account)

    rows = _on_db(_settings(args), read)
    _show_all(args, [{"channel": r["channel"], "address": r["address"], "accountId": r["account_id"]} for r in rows],
              ("channel", "address", "accountId"), "no routed addresses")


def cmd_senders_remove(args: argparse.Namespace) -> None:
    """Stop routing an address to an account (what it already received stays the account's)."""
    if not _on_account(args, lambda conn: inbox.remove_sender(conn, args.channel, args.address, args.account)):
        raise CliError(f"{args.channel} address {args.address} is not routed to account {args.account}")
    _show(args, _sender(args),
          f"inbound {args.channel} messages to {args.address} no longer belong to account {args.account}")


def cmd_sign(args: argparse.Namespace) -> None:
    """Print Standard Webhooks headers for a canonical ingest body (for curl: ``-H @file``)."""
    settings = Settings.from_env(os.environ, dev_secrets=True)
    assert settings.ingest_secret is not None
    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    msg_id = "msg_" + secrets.token_hex(12)
    ts = int(time.time())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts),
               "webhook-signature": signature_header([secret_key(settings.ingest_secret)], msg_id, ts, body)}
    _show(args, headers, "\n".join(f"{k}: {v}" for k, v in headers.items()))


def _behaviour_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--delivery-rate", type=float, default=0.95, help="share of messages delivered (else failed)")
    p.add_argument("--read-rate", type=float, default=0.5, help="share of delivered WhatsApp/RCS messages read")
    p.add_argument("--delay-ms", type=float, default=200, help="mean delay before a receipt")


def cmd_sandbox(args: argparse.Namespace) -> None:
    """Consume qlara.send-requests and post submissions and provider receipts to the ingress."""
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    sandbox = Sandbox(settings, args.ingress_url, Behaviour(delivery_rate=args.delivery_rate,
                                                            read_rate=args.read_rate, delay_s=args.delay_ms / 1000))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        log.info("event_loop", loop=loop_name(loop), uvloop_setting=settings.uvloop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sandbox.stop)
        await sandbox.run()

    _run(settings, run())
    print(f"sandbox stopped after {sandbox.processed} send requests")


# ---------------------------------------------------------------------------------------------- parsing


def _command(group: argparse._SubParsersAction[_Parser], name: str, func: Callable[[argparse.Namespace], None],
             help: str, example: str, *, about: str = "", data: bool = True) -> _Parser:
    """A command of ``group``: ``help`` in the list of commands, ``about`` too in its own ``--help``, which ends
    with the one-line ``example``; a command that prints data takes ``--json``."""
    p = group.add_parser(name, help=help, epilog=f"example: {example}",
                         description="\n\n".join(textwrap.fill(t, 100) for t in (help[:1].upper() + help[1:] + ".",
                                                                                  about) if t),
                         # Keeps the example on one line, to copy whole (the description is wrapped above).
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    if data:
        p.add_argument("--json", action="store_true", help="print one JSON object per line instead of text")
    p.set_defaults(func=func, prog=p.prog)
    return p


def _group(sub: argparse._SubParsersAction[_Parser], name: str, help: str) -> argparse._SubParsersAction[_Parser]:
    return sub.add_parser(name, help=help).add_subparsers(dest="action", required=True)


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = _Parser(prog="qlara-events", description=__doc__, epilog="example: qlara-events accounts list",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    serve = _command(sub, "serve", cmd_serve, "run the service", "qlara-events serve --role ingress,api",
                     data=False)
    serve.add_argument("--role", default="all", type=_roles,
                       help=f"all, or a comma-separated choice of {', '.join(ROLES)} (default: all)")
    serve.add_argument("--processes", action="store_true",
                       help="with --role all: each role in a process of its own under one supervisor (make run)")
    serve.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--dev", action="store_true",
                       help="fill unset provider secrets with the development values of docs/configuration.md")
    serve.add_argument("--migrate", action="store_true", help="apply migrations and create topics first")
    serve.add_argument("--check", action="store_true",
                       help="check the configuration as a start would (outside --dev: no placeholders, no "
                            "development secrets, the api's signing key and shared storage), then exit")
    serve.add_argument("--dev-key-file", help="print a development API key, kept in this file")
    serve.add_argument("--sandbox", action="store_true",
                       help="also play the upstream senders and providers (see `qlara-events sandbox`)")
    _behaviour_flags(serve)

    sbx = _command(sub, "sandbox", cmd_sandbox, "play the upstream senders and providers against an ingress",
                   "qlara-events sandbox --dev --ingress-url http://127.0.0.1:8080", data=False)
    sbx.add_argument("--ingress-url", default="http://127.0.0.1:8080")
    sbx.add_argument("--dev", action="store_true", help="use the development secrets for unset ones")
    _behaviour_flags(sbx)

    mig = _command(sub, "migrate", cmd_migrate, "apply database migrations", "qlara-events migrate --topics")
    mig.add_argument("--topics", action="store_true", help="also create the Kafka topics")

    hist = _group(sub, "history", "message history retention")
    drop = _command(hist, "drop-month", cmd_history_drop_month,
                    "delete one month of history at once (months before last month)",
                    "qlara-events history drop-month 2025-01")
    drop.add_argument("month", help="YYYY-MM, by submission time (UTC)")

    acc = _group(sub, "accounts", "manage accounts")
    create = _command(acc, "create", cmd_accounts_create, "create an account and its first API key",
                      "qlara-events accounts create --name acme --json")
    create.add_argument("--name", required=True)
    _command(acc, "list", cmd_accounts_list, "list the accounts with their plan, credit and active keys",
             "qlara-events accounts list --json")
    credit = _command(acc, "credit", cmd_accounts_credit, "add credit to an account",
                      "qlara-events accounts credit --account acc_1 --add 100.50")
    credit.add_argument("--account", required=True)
    credit.add_argument("--add", required=True, type=_amount, help="amount in QLARA_CURRENCY, e.g. 100.50")
    allow = _command(acc, "allow-ip", cmd_accounts_allow_ip,
                     "show or change the account's IP allow-list (none: any address)",
                     "qlara-events accounts allow-ip --account acc_1 --add 203.0.113.0/24 --remove 198.51.100.7",
                     about="Requests with the account's keys from an address outside the list get 403.")
    allow.add_argument("--account", required=True)
    allow.add_argument("--add", action="append", type=_networks, default=[], metavar="CIDR",
                       help="an address or network to admit")
    allow.add_argument("--remove", action="append", type=_networks, default=[], metavar="CIDR",
                       help="an entry to take away")

    keys = _group(sub, "keys", "manage an account's API keys")
    klist = _command(keys, "list", cmd_keys_list, "list the account's active API keys (never their value)",
                     "qlara-events keys list --account acc_1")
    klist.add_argument("--account", required=True)
    krevoke = _command(keys, "revoke", cmd_keys_revoke, "revoke an API key at once",
                       "qlara-events keys revoke --account acc_1 --key 3f2b8c1e-7d4a-4e59-9a6b-0c1d2e3f4a5b",
                       about="Its next request is a 401 on every api process. KEY_ID is the id `keys list` shows.")
    krevoke.add_argument("--account", required=True)
    krevoke.add_argument("--key", required=True, metavar="KEY_ID")

    hooks = _group(sub, "webhooks", "the accounts' delivery-status webhooks")
    wshow = _command(hooks, "show", cmd_webhooks_show,
                     "show the account's webhook and its undelivered deliveries (never its signing secret)",
                     "qlara-events webhooks show --account acc_1")
    wshow.add_argument("--account", required=True)
    wrecover = _command(hooks, "recover", cmd_webhooks_recover,
                        "attempt the webhook's failed and dead deliveries again now",
                        "qlara-events webhooks recover --account acc_1 --since 2026-04-01T00:00:00Z "
                        "--until 2026-04-02T00:00:00Z",
                        about="As POST .../deliveries/recover does: every delivery created in [--since, --until) "
                              "that waits for a retry or is dead is scheduled for a new attempt now.")
    wrecover.add_argument("--account", required=True)
    wrecover.add_argument("--since", type=_instant, metavar="ISO",
                          help="ISO-8601 with offset (default: the first delivery)")
    wrecover.add_argument("--until", type=_instant, metavar="ISO",
                          help="ISO-8601 with offset, excluded (default: now)")

    usr = _group(sub, "users", "manage account users")
    ucreate = _command(usr, "create", cmd_users_create, "create a user (assignable to inbox conversations)",
                       "qlara-events users create --account acc_1 --name Ada --email ada@example.com")
    ucreate.add_argument("--account", required=True)
    ucreate.add_argument("--name", required=True)
    ucreate.add_argument("--email")
    ulist = _command(usr, "list", cmd_users_list, "list the account's users", "qlara-events users list --account acc_1")
    ulist.add_argument("--account", required=True)

    soc = _group(sub, "socials", "social profile connections")
    sc = _command(soc, "connect", cmd_socials_connect, "register a profile connected by OAuth in the dashboard",
                  "qlara-events socials connect --account acc_1 --platform facebook --profile-id 1234 --token - "
                  "--expires-at 2026-06-30T00:00:00Z")
    sc.add_argument("--account", required=True)
    sc.add_argument("--platform", required=True, choices=socials.PLATFORMS)
    sc.add_argument("--profile-id", required=True)
    sc.add_argument("--token", required=True, help="the OAuth access token, or - to read it from standard input")
    sc.add_argument("--expires-at", type=_instant, help="token expiry, ISO-8601 with offset")
    for flag in ("--username", "--name", "--picture-url", "--phone-number"):
        sc.add_argument(flag)
    sc.add_argument("--pages", type=_json_objects, help="linked pages or sub-accounts, a JSON array")
    sr = _command(soc, "revoke", cmd_socials_revoke, "mark a connection's token revoked",
                  "qlara-events socials revoke --account acc_1 --platform facebook --profile-id 1234")
    sr.add_argument("--account", required=True)
    sr.add_argument("--platform", required=True, choices=socials.PLATFORMS)
    sr.add_argument("--profile-id", required=True)

    snd = _group(sub, "senders", "route inbound addresses to accounts")
    example = "--account acc_1 --channel WHATSAPP --address +15550001111"
    sadd = _command(snd, "add", cmd_senders_add, "route an address to an account (from another, if routed)",
                    f"qlara-events senders add {example}")
    slist = _command(snd, "list", cmd_senders_list, "list the routed addresses", "qlara-events senders list --json")
    slist.add_argument("--account", help="only this account's")
    sremove = _command(snd, "remove", cmd_senders_remove, "stop routing an address to an account",
                       f"qlara-events senders remove {example}")
    for cmd in (sadd, sremove):
        cmd.add_argument("--account", required=True)
        cmd.add_argument("--channel", required=True, choices=("SMS", "RCS", "WHATSAPP"))
        cmd.add_argument("--address", required=True, help="E.164 number, WhatsApp number or RBM agent id")

    sign = _command(sub, "sign", cmd_sign, "print Standard Webhooks headers for an ingest body "
                                           "(QLARA_INGEST_SECRET, else the development secret)",
                    "qlara-events sign --body - < event.json > /tmp/headers")
    sign.add_argument("--body", required=True, help="the exact body to send, or - for standard input")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run one command; a failure the operator can act on is one line on stderr and exit code 1."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        _fail(args.prog, "interrupted", 130)
    except Exception as exc:
        message = _explain(exc)
        if message is None:
            raise
        _fail(args.prog, message)


if __name__ == "__main__":
    main()
