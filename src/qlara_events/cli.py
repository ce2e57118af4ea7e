"""``qlara-events``: serve the roles, migrate the database, manage accounts.

With no environment set every command points at the local infrastructure ``make run`` starts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from qlara_events import __version__, logs
from qlara_events.config import ConfigError, Settings, production_problems
from qlara_events.dispatcher.ssrf import parse_networks
from qlara_events.kafka import ensure_topics
from qlara_events.logs import get_logger
from qlara_events.sandbox import Behaviour, Sandbox
from qlara_events.secrets_box import parse_key
from qlara_events.server import HANDLER_CANCELLATION, MAX_LINE_SIZE, ROLES, build_app
from qlara_events.standard_webhooks import secret_key, signature_header
from qlara_events.store import accounts, campaigns, inbox, partitions, socials
from qlara_events.store.db import Conn, create_pool
from qlara_events.store.migrate import migrate


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return Settings.from_env(os.environ, dev_secrets=getattr(args, "dev", False))
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc.message}")


T = TypeVar("T")

log = get_logger("cli")


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


async def _with_connection(settings: Settings, work: Callable[[Conn], Awaitable[T]]) -> T:
    """Run ``work`` on one connection of a pool of its own, then close the pool."""
    pool = await create_pool(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await work(conn)
    finally:
        await pool.close()


def _on_db(settings: Settings, work: Callable[[Conn], Awaitable[T]]) -> T:
    """An operator command's ``work``, on one connection (see :func:`_with_connection`)."""
    return _run(settings, _with_connection(settings, work))


async def _migrate(settings: Settings) -> list[str]:
    return await _with_connection(settings, migrate)


async def _dev_key(settings: Settings, existing: str | None) -> str:
    """The development API key: ``existing`` while it is valid, else a new development account's."""
    pool = await create_pool(settings, max_size=2)
    try:
        if existing and await accounts.authenticate(pool, existing) is not None:
            return existing
        async with pool.acquire() as conn:
            _, raw = await accounts.create_account(conn, "development")
        return raw
    finally:
        await pool.close()


def _roles(raw: str) -> tuple[str, ...]:
    """``all``, one role, or several joined by commas (``ingress,api``)."""
    if raw == "all":
        return ROLES
    roles = tuple(r.strip() for r in raw.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise argparse.ArgumentTypeError(f"roles are all, or a comma-separated choice of {', '.join(ROLES)}")
    return roles


def cmd_serve(args: argparse.Namespace) -> None:
    """Run one role, several, or all of them in this process (or, with --processes, each in its own)."""
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    try:
        roles = _roles(args.role)
    except argparse.ArgumentTypeError as exc:
        sys.exit(str(exc))
    if args.processes and set(roles) != set(ROLES):
        sys.exit("--processes runs every role: use it with --role all")
    if not args.dev:
        problems = production_problems(os.environ, settings, roles)
        if problems:
            sys.exit("refusing to start outside --dev:\n  - " + "\n  - ".join(problems))
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
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    if args.topics:
        _run(settings, ensure_topics(settings))
        print(f"topics ready: {', '.join(settings.topics.all())}")


def cmd_history_drop_month(args: argparse.Namespace) -> None:
    """Delete one month of message history (its partition, identities, refs, parts and timeline)."""
    settings = _settings(args)

    try:
        gone = _on_db(settings, lambda conn: partitions.drop_month(conn, args.month))
    except partitions.CannotDrop as exc:
        sys.exit(f"qlara-events history drop-month: {exc}")
    sys.stdout.write(orjson.dumps({"month": args.month, **gone}).decode() + "\n")


def cmd_accounts_create(args: argparse.Namespace) -> None:
    """Create an account and print its id and first API key (shown only here)."""
    settings = _settings(args)

    account_id, raw = _on_db(settings, lambda conn: accounts.create_account(conn, args.name))
    sys.stdout.write(orjson.dumps({"accountId": account_id, "apiKey": raw}).decode() + "\n")


def cmd_accounts_credit(args: argparse.Namespace) -> None:
    """Add credit to an account (campaign confirmation reserves from it)."""
    settings = _settings(args)

    credit = _on_db(settings, lambda conn: campaigns.add_credit(conn, args.account, Decimal(args.add)))
    print(orjson.dumps({"accountId": args.account, "credit": str(credit)}).decode())


def cmd_accounts_allow_ip(args: argparse.Namespace) -> None:
    """Show or change an account's IP allow-list (Qlara §1.2); print it as JSON after the change."""
    settings = _settings(args)
    try:
        add = parse_networks(",".join(args.add))
        remove = parse_networks(",".join(args.remove))
    except ValueError as exc:
        sys.exit(f"qlara-events accounts allow-ip: {exc}")
    try:
        networks = _on_db(settings, lambda conn: accounts.change_networks(conn, args.account, add, remove))
    except accounts.UnknownAccount:
        sys.exit(f"qlara-events accounts allow-ip: no account {args.account}")
    sys.stdout.write(orjson.dumps({"accountId": args.account, "networks": [str(n) for n in networks]}).decode()
                     + "\n")


def cmd_users_create(args: argparse.Namespace) -> None:
    """Create an account user (an inbox assignee) and print it as JSON."""
    settings = _settings(args)

    user_id = _on_db(settings, lambda conn: inbox.create_user(conn, args.account, args.name, args.email))
    sys.stdout.write(orjson.dumps({"userId": user_id, "accountId": args.account, "name": args.name}).decode() + "\n")


def cmd_socials_connect(args: argparse.Namespace) -> None:
    """Register a social profile connected through the dashboard's OAuth (the token is stored sealed)."""
    settings = _settings(args)
    if not settings.social_token_key:
        sys.exit("QLARA_SOCIAL_TOKEN_KEY is not set: it encrypts tokens at rest (base64 of 32 random bytes)")
    key = parse_key(settings.social_token_key)
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    expires = dt.datetime.fromisoformat(args.expires_at) if args.expires_at else None
    if expires is not None and expires.tzinfo is None:
        sys.exit("--expires-at needs a UTC offset")

    connection_id = _on_db(settings, lambda conn: socials.connect(
        conn, key, account_id=args.account, platform=args.platform, profile_id=args.profile_id, token=token,
        expires_at=expires, username=args.username, profile_name=args.name, picture_url=args.picture_url,
        phone_number=args.phone_number, pages=orjson.loads(args.pages) if args.pages else None))
    print(orjson.dumps({"connectionId": connection_id, "platform": args.platform,
                        "profileId": args.profile_id}).decode())


def cmd_socials_revoke(args: argparse.Namespace) -> None:
    """Mark a connection's token revoked."""
    settings = _settings(args)
    if not _on_db(settings, lambda conn: socials.revoke(conn, args.account, args.platform, args.profile_id)):
        sys.exit("no such connection")
    print("revoked")


def cmd_senders_add(args: argparse.Namespace) -> None:
    """Route inbound messages sent to an address (a number or agent id) to an account."""
    settings = _settings(args)
    _on_db(settings, lambda conn: conn.execute(
        "insert into sender_addresses (channel, address, account_id) values ($1, $2, $3)"
        " on conflict (channel, address) do update set account_id = excluded.account_id",
        args.channel, args.address, args.account))
    print(f"inbound {args.channel} messages to {args.address} now belong to account {args.account}")


def cmd_sign(args: argparse.Namespace) -> None:
    """Print Standard Webhooks headers for a canonical ingest body (for curl: ``-H @file``)."""
    settings = Settings.from_env(os.environ, dev_secrets=True)
    assert settings.ingest_secret is not None
    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    msg_id = "msg_" + secrets.token_hex(12)
    ts = int(time.time())
    sig = signature_header([secret_key(settings.ingest_secret)], msg_id, ts, body)
    print(f"webhook-id: {msg_id}\nwebhook-timestamp: {ts}\nwebhook-signature: {sig}")


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


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="qlara-events", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--role", default="all",
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
    serve.set_defaults(func=cmd_serve)

    sbx = sub.add_parser("sandbox", help="play the upstream senders and providers against an ingress")
    sbx.add_argument("--ingress-url", default="http://127.0.0.1:8080")
    sbx.add_argument("--dev", action="store_true", help="use the development secrets for unset ones")
    _behaviour_flags(sbx)
    sbx.set_defaults(func=cmd_sandbox)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--topics", action="store_true", help="also create the Kafka topics")
    mig.set_defaults(func=cmd_migrate)

    hist = sub.add_parser("history", help="message history retention").add_subparsers(dest="action",
                                                                                      required=True)
    drop = hist.add_parser("drop-month", help="delete one month of history at once (months before last month)")
    drop.add_argument("month", help="YYYY-MM, by submission time (UTC)")
    drop.set_defaults(func=cmd_history_drop_month)

    acc = sub.add_parser("accounts", help="manage accounts").add_subparsers(dest="action", required=True)
    create = acc.add_parser("create", help="create an account and its first API key")
    create.add_argument("--name", required=True)
    create.set_defaults(func=cmd_accounts_create)
    credit = acc.add_parser("credit", help="add credit to an account")
    credit.add_argument("--account", required=True)
    credit.add_argument("--add", required=True, help="amount in QLARA_CURRENCY, e.g. 100.50")
    credit.set_defaults(func=cmd_accounts_credit)
    allow = acc.add_parser(
        "allow-ip", help="show or change the account's IP allow-list (none: any address)",
        description="Requests with the account's keys from an address outside the list get 403. Example: "
                    "qlara-events accounts allow-ip --account ACC --add 203.0.113.0/24 --remove 198.51.100.7")
    allow.add_argument("--account", required=True)
    allow.add_argument("--add", action="append", default=[], metavar="CIDR", help="an address or network to admit")
    allow.add_argument("--remove", action="append", default=[], metavar="CIDR", help="an entry to take away")
    allow.set_defaults(func=cmd_accounts_allow_ip)

    usr = sub.add_parser("users", help="manage account users").add_subparsers(dest="action", required=True)
    ucreate = usr.add_parser("create", help="create a user (assignable to inbox conversations)")
    ucreate.add_argument("--account", required=True)
    ucreate.add_argument("--name", required=True)
    ucreate.add_argument("--email")
    ucreate.set_defaults(func=cmd_users_create)

    soc = sub.add_parser("socials", help="social profile connections").add_subparsers(dest="action", required=True)
    sc = soc.add_parser("connect", help="register a profile connected by OAuth in the dashboard")
    sc.add_argument("--account", required=True)
    sc.add_argument("--platform", required=True, choices=socials.PLATFORMS)
    sc.add_argument("--profile-id", required=True)
    sc.add_argument("--token", required=True, help="the OAuth access token, or - to read it from standard input")
    sc.add_argument("--expires-at", help="token expiry, ISO-8601 with offset")
    for flag in ("--username", "--name", "--picture-url", "--phone-number"):
        sc.add_argument(flag)
    sc.add_argument("--pages", help="linked pages or sub-accounts, a JSON array")
    sc.set_defaults(func=cmd_socials_connect)
    sr = soc.add_parser("revoke", help="mark a connection's token revoked")
    for flag in ("--account", "--platform", "--profile-id"):
        sr.add_argument(flag, required=True)
    sr.set_defaults(func=cmd_socials_revoke)

    snd = sub.add_parser("senders", help="route inbound addresses to accounts").add_subparsers(
        dest="action", required=True)
    add = snd.add_parser("add", help="route an address to an account")
    add.add_argument("--account", required=True)
    add.add_argument("--channel", required=True, choices=("SMS", "RCS", "WHATSAPP"))
    add.add_argument("--address", required=True, help="E.164 number, WhatsApp number or RBM agent id")
    add.set_defaults(func=cmd_senders_add)
    sign = sub.add_parser("sign", help="print Standard Webhooks headers for an ingest body "
                                       "(QLARA_INGEST_SECRET, else the development secret)")
    sign.add_argument("--body", required=True, help="the exact body to send, or - for standard input")
    sign.set_defaults(func=cmd_sign)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
