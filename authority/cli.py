"""``authority`` command line: ``serve`` the API, manage ``keys``, ``audit tail``, security ``events``, print a
demo ``dev-token``.

``--demo`` is the one switch that allows plain-PEM keys, a private embedded Redis and the demo issuer; nothing in
the environment can turn those on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec
import uvicorn
from redis.asyncio import Redis

from authority import callers, demo, demo_server, directory_file, logs, settings
from authority.app import create_app, freeze_startup
from authority.connection import REDIS_ERRORS, connect_redis
from authority.events.delivery import entry_time
from authority.events.outbox import outbox_stream
from authority.keys import KeyStoreError
from authority.keys.lifecycle import KeyRecord, state
from authority.keys.notices import KeyNotices
from authority.refusals import Refusal
from authority.services import (
    OPERATOR_ERRORS,
    RefusedStart,
    audit_stream,
    build,
    dead_letters,
    key_store,
    outbox_maxlen,
    say,
)

FOLLOW_BLOCK_MS = 1000  # how long one read of `audit tail --follow` waits on the server for new events
APPLIED_WAIT_S = 5.0  # how long key commands wait for running processes to confirm they re-read the records
# What an operator can fix (a setting, a key file, Redis): a one-line message, not a traceback.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # stream entries as redis-py returns them


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"demo": args.demo}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    config = settings.load(serving=True, **overrides)
    # From here a stop signal is a clean exit, so the ExitStack stops the private server rather than orphaning it
    # (while uvicorn runs, it takes SIGTERM and SIGINT itself, drains, then re-raises them here). Under --demo a
    # closed terminal (SIGHUP) is a stop like SIGTERM; otherwise SIGHUP is a daemon's reload: the directory re-read.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_cleanly)
    signal.signal(signal.SIGHUP, _hang_up if config.demo else directory_file.reread)
    with ExitStack() as stack:
        if config.demo:
            if not config.redis_url:
                server = stack.enter_context(demo_server.private_server(Path(config.data_dir), sys.stderr))
                config = msgspec.structs.replace(config, redis_url=server.url)
            config = _with_demo_issuer(config)
        logs.configure()
        app = RefusedStart(create_app(config))
        freeze_startup()
        options = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False)
        try:
            _AnnouncedServer(options, demo=config.demo).run()
        except SystemExit:
            if app.refused:  # said in one line each: the status of every other operator error
                return 2
            raise
    return 0


def _hang_up(signum: int, frame: object) -> None:
    """A hang-up stops the service as SIGTERM does (while uvicorn runs: drained first, then stopped)."""
    signal.raise_signal(signal.SIGTERM)


class _AnnouncedServer(uvicorn.Server):
    """uvicorn's server, saying on stderr where it listens once it does (uvicorn's own line is at INFO, below the
    level the service runs it at)."""

    def __init__(self, config: uvicorn.Config, *, demo: bool) -> None:
        super().__init__(config)
        self.demo = demo

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # returns listening: a failure to bind or to start the app exits
        port = self.servers[0].sockets[0].getsockname()[1]  # the port bound, also when asked for port 0
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        print(f"authority: listening on http://{host}:{port}{' (demo)' if self.demo else ''}", file=sys.stderr)


def _operator_settings(demo_flag: bool) -> settings.Settings:
    """Settings for a command acting on a running service; ``--demo`` finds the demo server started here."""
    config = settings.load(demo=demo_flag)
    if config.demo and not config.redis_url:
        config = msgspec.structs.replace(config, redis_url=demo_server.running_url(Path(config.data_dir)))
    return config


def _keys(args: argparse.Namespace) -> int:
    return asyncio.run(_keys_command(_operator_settings(args.demo), args))


def _audit(args: argparse.Namespace) -> int:
    config = _operator_settings(args.demo)
    return asyncio.run(_tail(config, audit_stream(config), args.lines, args.follow, _with_utc_time))


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_utc_time(fields: dict[bytes, bytes]) -> str:
    """An audit event as printed: its ``ts`` also as an ISO 8601 UTC time, first, for a reader."""
    event = msgspec.json.decode(fields[b"event"])
    return msgspec.json.encode({"time": _utc(event["ts"]), **event}).decode()


def _security_event(fields: dict[bytes, bytes]) -> str:
    """An outbox entry as printed: the event, its time in UTC first, and the one receiver of a redriven one."""
    event = msgspec.json.decode(fields[b"event"])
    to = {"to": fields[b"to"].decode()} if b"to" in fields else {}
    return msgspec.json.encode({"time": _utc(event["at"]), **event, **to}).decode()


def _events(args: argparse.Namespace) -> int:
    config = _operator_settings(args.demo)
    if args.events_command == "tail":
        stream = outbox_stream(audit_stream(config))
        return asyncio.run(_tail(config, stream, args.lines, args.follow, _security_event))
    return asyncio.run(_dead_letters(config, args))


async def _dead_letters(config: settings.Settings, args: argparse.Namespace) -> int:
    """``dead``: every dead letter (of ``--receiver``), oldest first, one JSON object a line. ``redrive``: put them
    back on the outbox, each for its own receiver."""
    redis = connect_redis(config)
    letters = dead_letters(config, redis)
    try:
        if args.events_command == "redrive":
            stream = outbox_stream(audit_stream(config))
            moved = await letters.redrive(stream, outbox_maxlen(config), args.receiver)
            print(f"redriven: {moved} dead letters{f' of {args.receiver}' if args.receiver else ''}", file=sys.stderr)
            return 0
        for letter in await letters.read():
            if args.receiver is None or letter.receiver == args.receiver:
                shown = {"time": _utc(entry_time(letter.id)), "receiver": letter.receiver, "cause": letter.cause}
                shown |= {"detail": letter.detail, "event": msgspec.json.decode(letter.event)}
                print(msgspec.json.encode(shown).decode(), flush=True)
    finally:
        await redis.aclose()
    return 0


async def _tail(
    config: settings.Settings, stream: str, lines: int, follow: bool, show: Callable[[dict[bytes, bytes]], str]
) -> int:
    """Print the newest entries of ``stream`` (``show`` makes each a line); ``follow`` keeps printing new ones until
    interrupted (Ctrl-C: status 130).

    Each blocking read waits ``FOLLOW_BLOCK_MS`` on the server, on a connection whose timeout is that plus a margin:
    the server ends a block on its timer tick (100 ms at the default ``hz``), so a read blocking as long as the
    configured timeout would read as Redis down on a quiet stream. An interrupt stops the loop between two reads:
    asyncio's own answer to SIGINT, cancelling the task, was lost in redis-py's read when it came just after an
    entry arrived (CPython 3.11, gh-86296: 4 of 5 tries hung in a reproduction), and the command went on."""
    patient = msgspec.structs.replace(config, redis_timeout_s=min(30.0, FOLLOW_BLOCK_MS / 1000 + 2))
    redis = connect_redis(patient)
    block_ms = FOLLOW_BLOCK_MS
    interrupted = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        # -n 0 reads the newest only to know where "from now on" starts
        entries = cast(_Entries, await redis.xrevrange(stream, count=max(lines, 1)))
        last = entries[0][0] if entries else b"0-0"  # with none yet, every entry to come is new
        entries = entries[:lines]
        for _, fields in reversed(entries):
            print(show(fields), flush=True)
        while follow and not interrupted.is_set():
            streams = cast(list[tuple[bytes, _Entries]], await redis.xread({stream: last}, block=block_ms) or [])
            for _, batch in streams:
                for entry_id, fields in batch:
                    print(show(fields), flush=True)
                    last = entry_id
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        await redis.aclose()
    return 130 if interrupted.is_set() else 0


async def _other_store_holds_keys(config: settings.Settings, redis: Redis) -> str | None:
    """The store this configuration does not use, if it holds key records (or files it cannot read as such): the
    sign of a command pointed at the wrong one (the default file store, say, beside a deployment whose keys live in
    Redis), or of a store left behind by a move to the other."""
    other = msgspec.structs.replace(config, key_store="redis" if config.key_store == "file" else "file")
    store = key_store(other, redis)
    try:
        found = await store.load()
    except (KeyStoreError, PermissionError):  # key files it cannot read: still something there, said as such
        return f"{store} (unreadable key files)"
    return f"{store} ({_keys_count(len(found))})" if found else None


def _keys_count(n: int) -> str:
    return f"{n} key{'s' if n != 1 else ''}"


async def _named_store_records(config: settings.Settings, command: str) -> list[KeyRecord]:
    """The records of the store the settings name, which is said first. Refused: an empty store while the other
    holds keys, or (to change keys) while service processes listen on this Redis prefix. Both holding keys: said,
    with which one the command acts on."""
    redis = connect_redis(config)
    try:
        store = key_store(config, redis)
        print(f"key store: {store} (AUTHORITY_KEY_STORE={config.key_store})", file=sys.stderr)
        records = await store.load()
        try:
            elsewhere = await _other_store_holds_keys(config, redis)
        except REDIS_ERRORS:
            if not records:
                raise
            elsewhere = None  # Redis down: the other store is unknown; this one's listing still stands
        if not records and elsewhere:
            raise settings.SettingsError(
                f"no keys in {store}, but {elsewhere} holds some: set AUTHORITY_KEY_STORE (and the Redis prefix or "
                "keys folder) to the deployment's"
            )
        if elsewhere:  # both hold keys: the command acts on the one named, as a service with these settings would
            print(
                f"warning: both key stores hold keys: {store} ({_keys_count(len(records))}) and {elsewhere}; "
                f"acting on {store}, the one AUTHORITY_KEY_STORE={config.key_store} names (a service reads only "
                "that one): if the service's AUTHORITY_KEY_STORE differs, stop and run this with its settings",
                file=sys.stderr,
            )
        if not records and command != "list" and (running := await KeyNotices(redis, config.redis_prefix).listening()):
            raise settings.SettingsError(
                f"no keys in {store}, but {running} running service processes share this Redis prefix: their keys "
                "are elsewhere; set AUTHORITY_KEYS_DIR (or AUTHORITY_KEY_STORE) as the service has it"
            )
    finally:
        await redis.aclose()
    return records


async def _keys_command(config: settings.Settings, args: argparse.Namespace) -> int:
    """Acts on the store the settings name, and says which (``_named_store_records``). ``list`` needs no
    passphrase: it reads records, it unseals nothing; ``rotate`` and ``retire`` unseal every record before they
    write one, so a wrong passphrase changes nothing."""
    records = await _named_store_records(config, args.keys_command)
    effect, before = None, records
    if args.keys_command != "list":
        services = build(config, log=None)  # audit events go to the stream, not into this table
        try:
            await services.keys.refresh()  # every record unsealed: a wrong passphrase stops here, nothing written
            if args.keys_command == "rotate":
                effect = await services.keys.rotate_now(wait_s=APPLIED_WAIT_S)
            elif args.keys_command == "retire":
                if args.kid not in {r.kid for r in records}:
                    raise ValueError(f"no key {args.kid}")
                effect = await services.keys.retire(args.kid, wait_s=APPLIED_WAIT_S)
            records = await services.keys.store.load()
        finally:
            await services.close()
    if effect is not None:
        print(f"in effect on {effect.confirmed} of {effect.listening} running service processes", file=sys.stderr)
    if args.keys_command == "rotate" and (standby := _standby(records, int(time.time()))):
        minutes = max(0, standby.activates_at - int(time.time())) // 60
        print(f"the standby {standby.kid} signs from {_when(standby.activates_at)} (in {minutes} min)", file=sys.stderr)
    if args.keys_command == "rotate" and (waiting := _already_due(before, records, int(time.time()))):
        print(
            f"nothing to bring forward: {waiting.kid} already signs from {_when(waiting.activates_at)}, as early as "
            "it may (every replica publishes a key AUTHORITY_KEY_PREPUBLISH_S before it signs); to stop a key now, "
            "use `keys retire`",
            file=sys.stderr,
        )
    now = int(time.time())
    print(f"{'kid':44} {'alg':6} {'state':9} {'created':20} {'activates':20} retires")
    for r in sorted(records, key=lambda r: r.activates_at):
        print(
            f"{r.kid:44} {r.alg:6} {'revoked' if r.revoked else state(r, now):9} {_when(r.created_at)} "
            f"{_when(r.activates_at)} "
            f"{_when(r.retires_at) if r.retires_at else '-'}"
        )
    return 0


def _standby(records: list[KeyRecord], now: int) -> KeyRecord | None:
    """The next key to sign: the earliest pending one."""
    pending = [r for r in records if state(r, now) == "pending"]
    return min(pending, key=lambda r: r.activates_at) if pending else None


def _already_due(before: list[KeyRecord], after: list[KeyRecord], now: int) -> KeyRecord | None:
    """The standby a ``rotate`` left as it was: it was already due at the earliest time it may sign."""
    standby = _standby(before, now)
    return standby if standby is not None and standby in after else None


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _dev_token(args: argparse.Namespace) -> int:
    config = settings.load()
    print(demo.dev_token(config.keys_path, role=args.role, sub=args.sub, location=args.location, ttl=args.ttl))
    return 0


def _with_demo_issuer(config: settings.Settings) -> settings.Settings:
    """Under ``--demo``, the demo issuer is trusted besides the configured ones."""
    issuers = [*config.trusted_issuers, demo.trusted_demo_issuer(config.keys_path)]
    return msgspec.structs.replace(config, trusted_issuers=issuers)


def _callers(args: argparse.Namespace) -> int:
    config = settings.load(demo=args.demo)
    config = _with_demo_issuer(config) if config.demo else config
    if args.callers_command == "token":
        issuer = callers.issuer_named(config, args.issuer)
        key, alg, made = callers.signing_key(issuer)
        print(f"signed as {issuer.issuer} with the {alg} test key in {issuer.jwks_file}", file=sys.stderr)
        if made:
            print("a new test key: restart the service, it reads jwks_file at start", file=sys.stderr)
        claims = {"role": args.role, "sub": args.sub, "location": args.location, "ttl": args.ttl}
        print(callers.caller_token(key, alg, issuer, **claims, now=int(time.time())))
        return 0
    given: str = args.token
    return asyncio.run(_check_caller(config, sys.stdin.read().strip() if given == "-" else given))


async def _check_caller(config: settings.Settings, token: str) -> int:
    """Read a bearer as the mint endpoints do; say who it names and which mint it may call, or why it is refused."""
    services = build(config, log=None)
    try:
        caller = await services.authenticator.authenticate(f"Bearer {token}", int(time.time()))
    except Refusal as refusal:
        print(f"refused: {refusal.status} {refusal.code}: {refusal.detail}")
        return 1
    finally:
        await services.close()
    print(
        f"issuer {caller.issuer}, subject {caller.subject!r}, role {caller.role!r}, location {caller.location!r}, "
        f"coworker id {caller.coworker_id}, expires {_when(caller.expires_at)}"
    )
    for line in callers.what_it_may_call(caller):
        print(line)
    return 0


def _events_parser(commands: Any, demo_after: argparse.ArgumentParser) -> None:
    events = commands.add_parser("events", help="security events: the outbox, dead letters, redrive")
    events.add_argument("--demo", action="store_true", help="act on the streams of a running `serve --demo` here")
    actions = events.add_subparsers(dest="events_command", required=True)
    tail = actions.add_parser("tail", parents=[demo_after], help="print the newest events written, one JSON a line")
    tail.add_argument("-n", "--lines", type=_count, default=20, help="how many of the newest (0: none)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    for action, what in (
        ("dead", "print the dead letters (refused, or past AUTHORITY_EVENT_MAX_AGE_S), oldest first"),
        ("redrive", "put the dead letters back on the outbox, each for its receiver (same jti: duplicates dropped)"),
    ):
        dead = actions.add_parser(action, parents=[demo_after], help=what)
        dead.add_argument("--receiver", help="only this receiver's (its name; its audience if it has none)")
    events.set_defaults(run=_events)


class _KidAndDemo(argparse.Action):
    """The words after ``keys retire``: one kid, and ``--demo`` on either side of it."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        words = list(values)
        kids = [word for word in words if word != "--demo"]
        if len(kids) != 1:
            parser.error(f"one KID, and --demo if you mean the demo server here (given: {' '.join(words)})")
        namespace.kid = kids[0]
        if len(kids) != len(words):  # only ever set: `keys --demo retire KID` was read by the parent
            namespace.demo = True


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="authority", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--demo", action="store_true", help="embedded Redis, plain demo keys, demo issuer")
    serve.add_argument("--host", help="listen address (AUTHORITY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (AUTHORITY_PORT)")
    serve.set_defaults(run=_serve)
    # `--demo` is read before or after the action (`keys --demo list`, `keys list --demo`); after it, it only ever
    # sets the flag, never clears what the parent read.
    demo_after = argparse.ArgumentParser(add_help=False)
    demo_after.add_argument(
        "--demo", action="store_true", default=argparse.SUPPRESS, help="act on the running `serve --demo` here"
    )
    keys = commands.add_parser("keys", help="list, rotate or retire signing keys (same settings as serve)")
    keys.add_argument("--demo", action="store_true", help="act on the keys of a running `serve --demo` here")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    actions.add_parser("list", parents=[demo_after], help="kid, alg, state, created, activates, retires")
    actions.add_parser(
        "rotate",
        parents=[demo_after],
        help="bring the standby forward: it signs once published for the pre-publish time",
    )
    # A kid is base64url and may begin with "-": nothing after `retire` is read as an option (no "-h" there either)
    # but `--demo`, before or after the kid (a kid is a 43-character thumbprint, never that word).
    retire = actions.add_parser(
        "retire", help="emergency: KID leaves the JWKS at once, the standby signs in its place", prefix_chars="+"
    )
    retire.add_argument("kid", nargs="+", action=_KidAndDemo, metavar="KID", help="the key's kid, [--demo] around it")
    keys.set_defaults(run=_keys)
    audit = commands.add_parser("audit", help="read the audit stream")
    audit.add_argument("--demo", action="store_true", help="read the stream of a running `serve --demo` here")
    audit_actions = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_actions.add_parser(
        "tail", parents=[demo_after], help="print the newest events, one JSON object a line"
    )
    tail.add_argument("-n", "--lines", type=_count, default=20, help="how many of the newest (0: none)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    audit.set_defaults(run=_audit)
    _events_parser(commands, demo_after)
    token = commands.add_parser("dev-token", help="print a caller bearer token from the demo issuer")
    token.add_argument("--role", required=True, choices=callers.ROLES)
    token.add_argument("--sub", required=True, help="caller id (a team admin's coworker id)")
    token.add_argument("--location", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token lives")
    token.set_defaults(run=_dev_token)
    caller = commands.add_parser("callers", help="try the caller contract: sign as a test issuer, check a bearer")
    caller.add_argument("--demo", action="store_true", help="the demo issuer is trusted too")
    caller_actions = caller.add_subparsers(dest="callers_command", required=True)
    sign = caller_actions.add_parser(
        "token",
        parents=[demo_after],
        help="print a bearer signed as a trusted issuer with a jwks_file (its test key is made on first use)",
    )
    sign.add_argument("--issuer", help="which trusted issuer (default: the only one)")
    sign.add_argument("--role", required=True, choices=callers.ROLES)
    sign.add_argument("--sub", required=True, help="caller id (a team admin's coworker id: digits)")
    sign.add_argument("--location", required=True)
    sign.add_argument("--ttl", type=int, default=3600, help="seconds the token lives")
    check = caller_actions.add_parser(
        "check", parents=[demo_after], help="read a bearer as the mint endpoints do and say what it may call"
    )
    check.add_argument("token", help="the bearer, or - to read it from standard input")
    caller.set_defaults(run=_callers)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        code: int = args.run(args)
    except OPERATOR_ERRORS as exc:
        say(exc, sys.stderr)
        return 2
    except KeyboardInterrupt:  # how one ends `tail --follow`: quietly, with the status a shell expects
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
