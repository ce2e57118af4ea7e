"""The operator CLI (issue #12 item 10): every create has its list/show and revoke/remove, every command that
prints data takes ``--json`` (one object per line, stable keys), every error is one line on stderr naming the
command, with exit code 1 and no traceback, and every ``--help`` ends with an example that parses.

Each command runs as the operator runs it, a subprocess, against the real Postgres (and Kafka for
``migrate --topics``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import shlex
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from qlara_events import cli
from qlara_events.config import Settings
from qlara_events.store import accounts, webhooks

from support.live import Account

#: Where nothing listens: what a stopped Postgres looks like to a client (with a password it must not print).
STOPPED_DATABASE = "postgresql://postgres:s3cret-pw@127.0.0.1:1/qlara"


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished CLI run."""

    code: int
    out: str
    err: str

    @property
    def items(self) -> list[Any]:
        """Its ``--json`` output: one object a line."""
        return [orjson.loads(line) for line in self.out.splitlines()]

    @property
    def item(self) -> Any:
        [one] = self.items
        return one


async def run(settings: Settings, *args: str, database_url: str | None = None) -> Run:
    """``qlara-events ARGS`` with the test's database and Kafka (never the local defaults)."""
    env = {**os.environ, "QLARA_DATABASE_URL": database_url or settings.database_url, "QLARA_LOG_LEVEL": "warning",
           "QLARA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "QLARA_KAFKA_TOPIC_PREFIX": settings.topics.prefix,
           "QLARA_KAFKA_PARTITIONS": str(settings.topic_partitions), "QLARA_SOCIAL_TOKEN_KEY": settings.social_token_key or ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qlara_events.cli", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Run(proc.returncode or 0, out.decode(), err.decode())


async def ok(settings: Settings, *args: str) -> Run:
    result = await run(settings, *args)
    assert result.code == 0 and result.err == "", result
    return result


def failed(result: Run, command: str, *needles: str) -> str:
    """``result`` is an error as the CLI reports every one: exit code 1, nothing on stdout, exactly one line on
    stderr, ``qlara-events COMMAND: ...`` naming the problem, no traceback. Returns the message."""
    assert result.code == 1, result
    assert result.out == "" and "Traceback" not in result.err, result
    [line] = result.err.splitlines()
    prefix = f"qlara-events {command}: "
    assert line.startswith(prefix), line
    for needle in needles:
        assert needle in line, line
    return line.removeprefix(prefix)


def unknown() -> str:
    return f"nope-{uuid.uuid4().hex[:8]}"


def address() -> str:
    return f"+1555{uuid.uuid4().int % 10**7:07d}"


class TestAccounts:
    """`accounts create|list|credit`: the list shows what was created and credited."""

    async def test_create_prints_text_and_the_list_shows_the_account(self, settings, db: asyncpg.Pool) -> None:
        """Text by default: the id and the key, once; `list --json` has the account with its plan, credit, one
        active key and its creation time, and the table shows it too."""
        created = await ok(settings, "accounts", "create", "--name", "cli-list")
        first, second = created.out.splitlines()
        account_id = first.removeprefix("account ")
        assert second.startswith("API key qk_") and "shown only now" in second
        assert await accounts.authenticate(db, second.split()[2]) is not None

        await ok(settings, "accounts", "credit", "--account", account_id, "--add", "12.5")
        [entry] = [a for a in (await ok(settings, "accounts", "list", "--json")).items if a["accountId"] == account_id]
        assert set(entry) == {"accountId", "name", "plan", "credit", "activeKeys", "createdAt"}
        assert (entry["name"], entry["plan"], entry["credit"], entry["activeKeys"]) == (
            "cli-list", "production", "12.5000", 1)
        assert dt.datetime.fromisoformat(entry["createdAt"]) <= dt.datetime.now(dt.UTC)

        header, *rows = (await ok(settings, "accounts", "list")).out.splitlines()
        assert header.split() == ["accountId", "name", "plan", "credit", "activeKeys", "createdAt"]
        [row] = [r for r in rows if r.startswith(account_id)]
        assert row.split()[1:5] == ["cli-list", "production", "12.5000", "1"]

    async def test_credit_adds_and_keeps_its_json_under_the_flag(self, settings, db: asyncpg.Pool,
                                                                 account: Account) -> None:
        """`credit --json` prints the object it always printed; text says the new balance."""
        assert (await ok(settings, "accounts", "credit", "--account", account.id, "--add", "100.50",
                         "--json")).item == {"accountId": account.id, "credit": "100.5000"}
        text = await ok(settings, "accounts", "credit", "--account", account.id, "--add", "-0.5")
        assert text.out == f"account {account.id}: credit 100.0000\n"
        assert await db.fetchval("select credit from accounts where account_id = $1", account.id) == 100

    async def test_allow_ip_prints_the_list_as_text(self, settings, account: Account) -> None:
        """Without --json the allow-list is a sentence, "any address" when empty."""
        added = await ok(settings, "accounts", "allow-ip", "--account", account.id, "--add", "192.0.2.0/24,192.0.2.9")
        assert added.out == f"account {account.id} admits 192.0.2.0/24, 192.0.2.9/32\n"
        emptied = await ok(settings, "accounts", "allow-ip", "--account", account.id, "--remove", "192.0.2.0/24",
                           "--remove", "192.0.2.9")
        assert emptied.out == f"account {account.id} admits any address (no allow-list)\n"


class TestKeys:
    """`keys list|revoke`: an account's active keys, never their value; a revoked key stops working."""

    async def test_list_then_revoke(self, settings, db: asyncpg.Pool, account: Account) -> None:
        """Both keys are listed as the API lists them; the revoked one no longer authenticates nor is listed;
        revoking it again is an error."""
        raw, row = await accounts.create_key_row(db, account.id, name="ci", operations=["SMS"])
        listed = await ok(settings, "keys", "list", "--account", account.id, "--json")
        assert [k["id"] for k in listed.items] == [(await accounts.list_keys(db, account.id))[0]["key_id"],
                                                   row["key_id"]]
        assert listed.items[1] == {"id": row["key_id"], "name": "ci", "description": None,
                                   "prefix": raw[:10], "operations": ["SMS"], "userId": None, "username": None,
                                   "trafficType": "PRODUCTION", "status": "ACTIVE",
                                   "createdAt": listed.items[1]["createdAt"]}
        table = await ok(settings, "keys", "list", "--account", account.id)
        assert table.out.splitlines()[0].split() == ["id", "prefix", "name", "operations", "username", "createdAt"]
        assert any(line.split()[:4] == [row["key_id"], raw[:10], "ci", "SMS"] for line in table.out.splitlines())
        for out in (listed.out, table.out):
            assert raw not in out and account.key not in out

        revoked = await ok(settings, "keys", "revoke", "--account", account.id, "--key", row["key_id"], "--json")
        assert revoked.item == {"accountId": account.id, "keyId": row["key_id"], "status": "REVOKED"}
        assert await accounts.authenticate(db, raw) is None
        assert await accounts.authenticate(db, account.key) is not None
        assert [k["id"] for k in (await ok(settings, "keys", "list", "--account", account.id, "--json")).items] \
            == [(await accounts.list_keys(db, account.id))[0]["key_id"]]
        failed(await run(settings, "keys", "revoke", "--account", account.id, "--key", row["key_id"]),
               "keys revoke", f"account {account.id} has no active key {row['key_id']}")

    async def test_an_account_without_keys_says_so(self, settings, db: asyncpg.Pool, account: Account) -> None:
        """Text names the empty result; --json prints nothing."""
        [key] = await accounts.list_keys(db, account.id)
        await ok(settings, "keys", "revoke", "--account", account.id, "--key", key["key_id"])
        assert (await ok(settings, "keys", "list", "--account", account.id)).out == \
            f"account {account.id} has no active keys\n"
        assert (await ok(settings, "keys", "list", "--account", account.id, "--json")).out == ""


def delivery(hook: asyncpg.Record, state: str, attempts: int, delay_s: float | None = None) -> webhooks.NewDelivery:
    change = uuid.uuid4().hex
    return webhooks.NewDelivery(
        delivery_id=f"msg_{change}", webhook_id=hook["webhook_id"], account_id=hook["account_id"], change_id=change,
        message_id=str(uuid.uuid4()), event_type="DELIVERED", status_rank=3, body=b"{}",
        changed_at=dt.datetime.now(dt.UTC), state=state, attempts=attempts, next_delay_s=delay_s)


class TestWebhooks:
    """`webhooks show|recover`: the webhook without its secret, and the API's recover from the command line."""

    async def test_show_never_prints_the_secret(self, settings, db: asyncpg.Pool, account: Account) -> None:
        """The webhook as the API shows it, minus `signingSecret`, with its undelivered deliveries counted."""
        hook = await webhooks.create(db, account.id, "https://hooks.example.com/qlara", "whsec_c2VjcmV0LXNob3du")
        assert hook is not None
        # Nothing a running dispatcher would attempt: a retry an hour away, a dead one, a delivered one.
        await webhooks.enqueue(db, [delivery(hook, "scheduled", 1, 3600), delivery(hook, "dead", 4),
                                    delivery(hook, "succeeded", 1)])
        shown = await ok(settings, "webhooks", "show", "--account", account.id, "--json")
        assert shown.item == {
            "id": hook["webhook_id"], "callbackUrl": "https://hooks.example.com/qlara", "status": "ACTIVE",
            "previousSecretExpiresAt": None, "failingSince": None, "disabledAt": None, "disabledReason": None,
            "createdAt": shown.item["createdAt"], "updatedAt": shown.item["updatedAt"],
            "deliveries": {"waiting": 0, "retrying": 1, "inFlight": 0, "dead": 1}}
        text = await ok(settings, "webhooks", "show", "--account", account.id)
        fields = dict(line.split(None, 1) for line in text.out.splitlines())
        assert list(fields) == [k for k in shown.item]
        assert (fields["id"], fields["status"], fields["disabledAt"]) == (hook["webhook_id"], "ACTIVE", "-")
        assert fields["deliveries"] == "waiting 0, retrying 1, inFlight 0, dead 1"
        for out in (shown.out, text.out):
            assert hook["secret"] not in out and "signingSecret" not in out

    async def test_recover_reschedules_the_window(self, settings, db: asyncpg.Pool, account: Account) -> None:
        """Dead and retrying deliveries created in [since, until) are due again now, the others untouched; with
        no bounds, every one created until now. A disabled webhook is said to hold them."""
        hook = await webhooks.create(db, account.id, "https://hooks.example.com/qlara", "whsec_c2VjcmV0LXJlY292ZXI=")
        assert hook is not None
        # Disabled, so that no dispatcher of the session attempts what is recovered before it is checked.
        await db.execute("update webhooks set status = 'DISABLED' where webhook_id = $1", hook["webhook_id"])
        old, dead, retrying, done = (delivery(hook, "dead", 4), delivery(hook, "dead", 4),
                                     delivery(hook, "scheduled", 2, 3600), delivery(hook, "succeeded", 1))
        await webhooks.enqueue(db, [old, dead, retrying, done])
        await db.execute("update webhook_deliveries set created_at = now() - interval '2 days'"
                         " where delivery_id = $1", old.delivery_id)

        since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
        result = await ok(settings, "webhooks", "recover", "--account", account.id, "--since", since, "--json")
        assert result.item["scheduled"] == 2 and result.item["webhookId"] == hook["webhook_id"]
        assert set(result.item) == {"accountId", "webhookId", "webhookStatus", "since", "until", "scheduled"}
        assert result.item["webhookStatus"] == "DISABLED" and result.item["since"].endswith("Z")
        states = {r["delivery_id"]: (r["state"], r["due"]) for r in await db.fetch(
            "select delivery_id, state, next_attempt_at <= now() as due from webhook_deliveries"
            " where webhook_id = $1", hook["webhook_id"])}
        assert states == {old.delivery_id: ("dead", None), dead.delivery_id: ("scheduled", True),
                          retrying.delivery_id: ("scheduled", True), done.delivery_id: ("succeeded", None)}

        text = await ok(settings, "webhooks", "recover", "--account", account.id)
        assert text.out.startswith(f"rescheduled 3 failed or dead deliveries of webhook {hook['webhook_id']}"
                                   " (created before ")
        assert "the webhook is DISABLED" in text.out and len(text.out.splitlines()) == 1

    async def test_without_a_webhook_and_with_a_bad_window(self, settings, account: Account) -> None:
        """No webhook, or a window that is not one: one line naming it."""
        for action in ("show", "recover"):
            failed(await run(settings, "webhooks", action, "--account", account.id), f"webhooks {action}",
                   f"account {account.id} has no delivery-status webhook")
        for args, needle in ((["--since", "yesterday"], "argument --since: not an ISO-8601 date-time: 'yesterday'"),
                             (["--until", "2026-01-01T00:00:00"], "'2026-01-01T00:00:00' has no UTC offset"),
                             (["--since", "0001-01-01T00:00+14:00"], "outside years 1-9999"),
                             (["--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"],
                              "--until must be after --since")):
            failed(await run(settings, "webhooks", "recover", "--account", account.id, *args), "webhooks recover",
                   needle)


class TestSenders:
    """`senders add|list|remove`: inbound addresses routed to accounts."""

    async def test_add_list_remove(self, settings, db: asyncpg.Pool, account: Account,
                                   other_account: Account) -> None:
        """Listed per account and in all; removed from the account it is routed to only."""
        mine, theirs = address(), address()
        added = await ok(settings, "senders", "add", "--account", account.id, "--channel", "WHATSAPP",
                         "--address", mine)
        assert added.out == f"inbound WHATSAPP messages to {mine} now belong to account {account.id}\n"
        await ok(settings, "senders", "add", "--account", other_account.id, "--channel", "SMS", "--address", theirs)

        listed = await ok(settings, "senders", "list", "--account", account.id, "--json")
        assert listed.items == [{"channel": "WHATSAPP", "address": mine, "accountId": account.id}]
        every = (await ok(settings, "senders", "list", "--json")).items
        assert {"channel": "SMS", "address": theirs, "accountId": other_account.id} in every
        assert listed.items[0] in every
        table = (await ok(settings, "senders", "list", "--account", account.id)).out.splitlines()
        assert [line.split() for line in table] == [["channel", "address", "accountId"],
                                                    ["WHATSAPP", mine, account.id]]

        failed(await run(settings, "senders", "remove", "--account", account.id, "--channel", "SMS",
                         "--address", theirs), "senders remove", f"SMS address {theirs} is not routed to account")
        removed = await ok(settings, "senders", "remove", "--account", account.id, "--channel", "WHATSAPP",
                           "--address", mine, "--json")
        assert removed.item == {"channel": "WHATSAPP", "address": mine, "accountId": account.id}
        assert await db.fetchval("select count(*) from sender_addresses where address = any($1)",
                                 [mine, theirs]) == 1
        assert (await ok(settings, "senders", "list", "--account", account.id)).out == "no routed addresses\n"


class TestUsers:
    """`users create|list`."""

    async def test_create_then_list(self, settings, account: Account) -> None:
        """create keeps its JSON under --json; list shows the account's users as the inbox API does."""
        created = (await ok(settings, "users", "create", "--account", account.id, "--name", "Ada",
                            "--email", "ada@example.com", "--json")).item
        assert set(created) == {"userId", "accountId", "name"} and created["accountId"] == account.id
        text = await ok(settings, "users", "create", "--account", account.id, "--name", "Grace")
        assert text.out.startswith("user ") and text.out.endswith(f" (Grace) of account {account.id}\n")

        listed = (await ok(settings, "users", "list", "--account", account.id, "--json")).items
        assert listed[0] == {"userId": created["userId"], "name": "Ada", "email": "ada@example.com",
                             "avatarUrl": None}
        assert [u["name"] for u in listed] == ["Ada", "Grace"]
        table = (await ok(settings, "users", "list", "--account", account.id)).out.splitlines()
        assert table[0].split() == ["userId", "name", "email"] and table[2].split()[1:] == ["Grace", "-"]


class TestJsonOfTheOtherCommands:
    """Commands that printed text only take --json too."""

    async def test_migrate_and_its_topics(self, settings, db: asyncpg.Pool) -> None:
        """`migrate --topics --json`: nothing to apply, the topics (created on the real Kafka)."""
        assert (await ok(settings, "migrate", "--json")).item == {"applied": [], "topics": None}
        result = (await ok(settings, "migrate", "--topics", "--json")).item
        assert result == {"applied": [], "topics": list(settings.topics.all())}

    async def test_sign(self, settings) -> None:
        """`sign --json` carries the three headers; text stays the curl header file."""
        signed = (await ok(settings, "sign", "--body", "{}", "--json")).item
        assert set(signed) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        text = (await ok(settings, "sign", "--body", "{}")).out.splitlines()
        assert [line.split(":")[0] for line in text] == ["webhook-id", "webhook-timestamp", "webhook-signature"]


#: Every command that reads or writes the database, with arguments it needs.
DATABASE_COMMANDS = [
    ("accounts list", ""), ("accounts create", "--name x"), ("accounts credit", "--account a --add 1"),
    ("accounts allow-ip", "--account a"), ("keys list", "--account a"), ("keys revoke", "--account a --key k"),
    ("webhooks show", "--account a"), ("webhooks recover", "--account a"), ("users list", "--account a"),
    ("users create", "--account a --name n"), ("senders list", ""),
    ("senders add", "--account a --channel SMS --address +1"),
    ("senders remove", "--account a --channel SMS --address +1"),
    ("socials revoke", "--account a --platform facebook --profile-id p"), ("history drop-month", "1999-01"),
    ("migrate", ""),
]

#: Every command that names an account, with the rest of the arguments it needs.
ACCOUNT_COMMANDS = [
    ("accounts credit", "--add 5"), ("accounts allow-ip", "--add 192.0.2.1"), ("keys list", ""),
    ("keys revoke", "--key k"), ("webhooks show", ""), ("webhooks recover", ""), ("users list", ""),
    ("users create", "--name n"), ("senders list", ""), ("senders add", "--channel SMS --address +15550000000"),
    ("senders remove", "--channel SMS --address +15550000000"),
    ("socials revoke", "--platform facebook --profile-id p"),
]


class TestErrors:
    """Each failure an operator can cause or meet is one line on stderr, exit code 1, never a traceback."""

    @pytest.mark.parametrize(("command", "args"), DATABASE_COMMANDS, ids=[c for c, _ in DATABASE_COMMANDS])
    async def test_a_stopped_database(self, settings, command: str, args: str) -> None:
        """Postgres not listening: the line says where it was looked for, without the password."""
        result = await run(settings, *command.split(), *args.split(), database_url=STOPPED_DATABASE)
        failed(result, command, "cannot connect to PostgreSQL at 127.0.0.1:1/qlara", "Connect call failed")
        assert "s3cret" not in result.err

    @pytest.mark.parametrize(("command", "args"), ACCOUNT_COMMANDS, ids=[c for c, _ in ACCOUNT_COMMANDS])
    async def test_an_unknown_account(self, settings, db: asyncpg.Pool, command: str, args: str) -> None:
        """No traceback from a missing row or a foreign key: `no account ID`, and nothing written."""
        nope = unknown()
        message = failed(await run(settings, *command.split(), "--account", nope, *args.split()), command)
        assert message == f"no account {nope}"
        for table in ("users", "sender_addresses", "account_networks"):
            assert await db.fetchval(f"select count(*) from {table} where account_id = $1", nope) == 0

    async def test_malformed_input_changes_nothing(self, settings, db: asyncpg.Pool, account: Account) -> None:
        """A bad amount, network, date or JSON, or a missing argument: named in one line before anything runs."""
        for amount in ("abc", "NaN", "Infinity", ""):
            failed(await run(settings, "accounts", "credit", "--account", account.id, "--add", amount),
                   "accounts credit", f"argument --add: not an amount: {amount!r}")
        failed(await run(settings, "accounts", "credit", "--account", account.id, "--add", "1e20"), "accounts credit",
               "database error: numeric field overflow DETAIL: A field with precision 14, scale 4")
        assert await db.fetchval("select credit from accounts where account_id = $1", account.id) == 0
        failed(await run(settings, "accounts", "allow-ip", "--account", account.id, "--add", "10.1.2.3/16"),
               "accounts allow-ip", "'10.1.2.3/16' has host bits set; did you mean 10.1.0.0/16?")
        failed(await run(settings, "socials", "connect", "--account", account.id, "--platform", "facebook",
                         "--profile-id", "p", "--token", "t", "--expires-at", "soon"), "socials connect",
               "argument --expires-at: not an ISO-8601 date-time: 'soon'")
        failed(await run(settings, "socials", "connect", "--account", account.id, "--platform", "facebook",
                         "--profile-id", "p", "--token", "t", "--pages", "[{"), "socials connect",
               "argument --pages: not JSON")
        failed(await run(settings, "accounts", "credit", "--account", account.id), "accounts credit",
               "the following arguments are required: --add")
        failed(await run(settings, "serve", "--role", "web"), "serve", "argument --role: roles are all, or")

    async def test_unknown_things_of_a_known_account(self, settings, account: Account) -> None:
        """An unknown key, social connection or month: named in one line."""
        failed(await run(settings, "keys", "revoke", "--account", account.id, "--key", "3f-no-such-key"),
               "keys revoke", f"account {account.id} has no active key 3f-no-such-key")
        failed(await run(settings, "socials", "revoke", "--account", account.id, "--platform", "tiktok",
                         "--profile-id", "p"), "socials revoke", f"account {account.id} has no tiktok connection p")
        failed(await run(settings, "history", "drop-month", "2025-13"), "history drop-month", "must look like")


def commands(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command (leaf) parser under ``p``."""
    groups = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield p
    for group in groups:
        for child in group.choices.values():
            yield from commands(child)


class TestHelp:
    """Every command's --help ends with a one-line example of itself that parses."""

    def test_every_command_has_an_example(self) -> None:
        """The example names the command, parses to it, and data commands offer --json."""
        leaves = list(commands(cli.parser()))
        assert {leaf.prog.removeprefix("qlara-events ") for leaf in leaves} == {
            "serve", "sandbox", "migrate", "history drop-month", "accounts create", "accounts list",
            "accounts credit", "accounts allow-ip", "keys list", "keys revoke", "webhooks show", "webhooks recover",
            "users create", "users list", "socials connect", "socials revoke", "senders add", "senders list",
            "senders remove", "sign"}
        for leaf in leaves:
            examples = [line for line in leaf.format_help().splitlines() if line.startswith("example: ")]
            assert len(examples) == 1, leaf.prog
            example = examples[0].removeprefix("example: ")
            assert example.startswith(leaf.prog + " "), example
            argv = shlex.split(example)[1:]
            argv = argv[:next((n for n, a in enumerate(argv) if a in ("<", ">", "|")), len(argv))]
            parsed = cli.parser().parse_args(argv)
            assert parsed.func is leaf.get_default("func") and parsed.prog == leaf.prog
            assert ("--json" in leaf.format_help()) == (leaf.prog not in ("qlara-events serve",
                                                                          "qlara-events sandbox")), leaf.prog
