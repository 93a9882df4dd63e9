"""The operator's CLI: ``authority keys list|rotate|retire`` against a real Redis, and its clear refusals."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from authority.cli import main, parser
from authority.embedded import EmbeddedRedis, free_port
from authority.keys import FileKeyStore
from authority.keys.keyring import new_record
from tests.helpers import PASSPHRASE, Stack


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> None:
    for name, value in {
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": f"cli{uuid.uuid4().hex[:8]}:",
        "AUTHORITY_KEYS_DIR": str(tmp_path / "keys"),
        "AUTHORITY_KEY_PASSPHRASE": PASSPHRASE,
        "AUTHORITY_KEY_STORE": "redis",
    }.items():
        monkeypatch.setenv(name, value)


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    """Run ``authority keys ...``; the listing as kid -> state."""
    assert main(["keys", *args]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    return {row.split()[0]: row.split()[2] for row in rows}


@pytest.mark.usefixtures("env")
def test_rotate_and_retire_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys(capsys, "list") == {}
    first = keys(capsys, "rotate")  # nobody signs yet: the first key signs at once, a standby is published
    assert sorted(first.values()) == ["active", "pending"]
    active, standby = sorted(first, key=lambda kid: first[kid])

    # a standby can be withdrawn; another replaces it; revoked records stay listed (as removed) until deleted
    listed = keys(capsys, "retire", standby)
    assert (listed[active], listed[standby]) == ("active", "revoked")
    (replacement,) = [kid for kid, state in listed.items() if state == "pending"]

    after = keys(capsys, "retire", active)  # emergency: the standby every consumer holds signs, the old key out
    assert (after[active], after[replacement]) == ("revoked", "active")
    assert sorted(after.values()) == ["active", "pending", "revoked"]  # the withdrawn standby is deleted by now


@pytest.mark.usefixtures("env")
def test_rotate_says_when_the_standby_is_already_due(capsys: pytest.CaptureFixture[str]) -> None:
    """A second ``rotate`` brings the standby forward; a third cannot (it already signs as early as it may) and
    says so, rather than print the same table as if something had happened."""
    keys(capsys, "rotate")  # the first signer and its standby
    assert main(["keys", "rotate"]) == 0
    said = capsys.readouterr().err
    assert "nothing to bring forward" not in said
    assert re.search(r"the standby \S+ signs from \d{4}-\d\d-\d\dT\S+Z \(in \d+ min\)", said), said
    assert main(["keys", "rotate"]) == 0
    said = capsys.readouterr().err
    assert "nothing to bring forward" in said
    assert "AUTHORITY_KEY_PREPUBLISH_S" in said


@pytest.mark.usefixtures("env")
def test_retiring_an_unknown_kid_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "retire", "nope"]) == 2
    assert "no key nope" in capsys.readouterr().err


@pytest.mark.usefixtures("env")
def test_wrong_passphrase_is_refused_with_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys(capsys, "rotate")
    keys(capsys, "list")
    monkeypatch.setenv("AUTHORITY_KEY_PASSPHRASE", "wrong")
    assert main(["keys", "rotate"]) == 2
    assert "AUTHORITY_KEY_PASSPHRASE" in capsys.readouterr().err


def test_bad_settings_stop_the_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHORITY_KEY_PREPUBLISH_S", "10")
    assert main(["keys", "list"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "authority: AUTHORITY_KEY_PREPUBLISH_S=10 must be ≥ AUTHORITY_JWKS_MAX_AGE_S=300: every cached JWKS must hold "
        "a key before it signs"
    ]


def test_keys_demo_needs_a_running_demo_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "--demo", "list"]) == 2
    assert "no demo server" in capsys.readouterr().err
    (tmp_path / ".authority").mkdir()
    (tmp_path / ".authority" / "redis.url").write_text(f"redis://127.0.0.1:{free_port()}/0")  # a server long gone
    assert main(["keys", "--demo", "list"]) == 2
    assert "no demo server is running here" in capsys.readouterr().err


@pytest.mark.parametrize("kid", ["-Abc", "--xyz", "-h"])
def test_a_kid_beginning_with_a_dash_is_a_kid(kid: str) -> None:
    """RFC 7638 thumbprints are base64url: one in 64 begins with "-" (the suite once drew one)."""
    assert parser().parse_args(["keys", "retire", kid]).kid == kid


@pytest.mark.usefixtures("env")
def test_the_keys_commands_name_their_store_and_keep_the_audit_out_of_the_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["keys", "rotate"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("key store: redis hash ")
    assert all(not line.startswith("{") for line in out.splitlines() + err.splitlines())  # no audit JSON
    monkeypatch.delenv("AUTHORITY_KEY_PASSPHRASE")
    assert len(keys(capsys, "list")) == 2  # listing reads records; it unseals nothing, so needs no passphrase


@pytest.mark.usefixtures("env")
def test_a_command_pointed_at_the_wrong_store_refuses_instead_of_making_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The deployment keeps its keys in Redis; an operator forgets AUTHORITY_KEY_STORE (the default is the file
    store): rotate must not make a fresh key set in ./keys and report success."""
    keys(capsys, "rotate")
    monkeypatch.setenv("AUTHORITY_KEY_STORE", "file")
    assert main(["keys", "rotate"]) == 2
    err = capsys.readouterr().err
    assert "no keys in" in err
    assert "redis hash" in err
    assert not list((tmp_path / "keys").glob("*.json"))


@pytest.mark.parametrize(
    ("argv", "demo"),
    [(["keys", "--demo", "list"], True), (["keys", "list", "--demo"], True), (["keys", "list"], False),
     (["audit", "tail", "--demo"], True), (["audit", "--demo", "tail"], True), (["keys", "rotate", "--demo"], True),
     (["keys", "retire", "KID", "--demo"], True), (["keys", "retire", "--demo", "KID"], True),
     (["keys", "--demo", "retire", "KID"], True), (["keys", "retire", "KID"], False)],
)  # fmt: skip
def test_demo_is_read_before_or_after_the_action(argv: list[str], demo: bool) -> None:
    assert parser().parse_args(argv).demo is demo


@pytest.mark.parametrize("argv", [["keys", "retire"], ["keys", "retire", "--demo"], ["keys", "retire", "a", "b"]])
def test_retire_takes_exactly_one_kid(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parser().parse_args(argv)
    assert refused.value.code == 2
    assert "KID" in capsys.readouterr().err


def test_retire_with_demo_after_the_kid_acts_on_the_demo_server(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    private_redis: EmbeddedRedis,
) -> None:
    """`keys retire KID --demo`, as `keys list --demo` is written: it was read as a second kid and refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".authority").mkdir()
    (tmp_path / ".authority" / "redis.url").write_text(private_redis.url)  # as a running `serve --demo` leaves it
    first = keys(capsys, "rotate", "--demo")
    (standby,) = [kid for kid, state in first.items() if state == "pending"]
    after = keys(capsys, "retire", standby, "--demo")
    assert after[standby] == "revoked"


def sealed_file_key(keys_dir: Path) -> str:
    now = int(time.time())
    record = new_record("ES256", PASSPHRASE, now=now, activates_at=now)
    asyncio.run(FileKeyStore(keys_dir).save([record]))
    return record.kid


@pytest.mark.usefixtures("env")
def test_both_stores_holding_keys_are_named_and_the_one_acted_on_is_the_one_configured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Keys in Redis (the deployment's) and a key set left in the keys folder (a move from the file store, say):
    every command names both and acts on the one AUTHORITY_KEY_STORE names, as the service does; the other is left
    as it was. A warning, not a refusal: after a move, the old folder is there until someone deletes it, and the
    service itself reads only the store it is configured with."""
    in_redis = keys(capsys, "rotate")
    in_file = sealed_file_key(tmp_path / "keys")
    folder = str((tmp_path / "keys").absolute())
    assert main(["keys", "rotate"]) == 0
    out, err = capsys.readouterr()
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1, err
    assert re.match(r"warning: both key stores hold keys: redis hash cli\w+:keys \(2 keys\) and ", warning[0])
    assert f"and {folder} (1 key); acting on redis hash " in warning[0]
    assert "the one AUTHORITY_KEY_STORE=redis names" in warning[0]
    assert in_file not in out  # the table is the Redis store's
    assert set(in_redis) <= {row.split()[0] for row in out.splitlines()[1:]}
    assert [p.stem for p in (tmp_path / "keys").glob("*.json")] == [in_file]  # the folder untouched

    monkeypatch.setenv("AUTHORITY_KEY_STORE", "file")
    listed = keys(capsys, "list")
    assert list(listed) == [in_file]
    assert main(["keys", "list"]) == 0
    err = capsys.readouterr().err
    assert f"warning: both key stores hold keys: {folder} (1 key) and redis hash " in err
    assert f"acting on {folder}, the one AUTHORITY_KEY_STORE=file names" in err


@pytest.mark.usefixtures("env")
def test_a_wrong_passphrase_changes_nothing_in_the_store(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """`rotate` with a wrong passphrase used to seal a new standby with it before failing on the old keys: the
    store then held keys under two passphrases, and the next start with the right one failed on the new key."""
    keys(capsys, "rotate")
    stored = f"{os.environ['AUTHORITY_REDIS_PREFIX']}keys"
    with redis.Redis.from_url(redis_url) as direct:
        before = direct.hgetall(stored)
        monkeypatch.setenv("AUTHORITY_KEY_PASSPHRASE", "wrong")
        for command in (["rotate"], ["retire", next(iter(before)).decode()]):
            assert main(["keys", *command]) == 2
            assert "wrong AUTHORITY_KEY_PASSPHRASE" in capsys.readouterr().err
            assert direct.hgetall(stored) == before


def test_rotate_refuses_an_empty_keys_folder_beside_a_running_service(
    make_stack: Callable[..., Stack],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The operator's slip: `keys rotate` run where AUTHORITY_KEYS_DIR is not the service's. It must not make a
    key set nobody serves, report it "in effect" and audit it: it names the folder and the running processes."""
    stack = make_stack()
    with stack.client():  # a running service: its keys in its folder, listening for key changes on its prefix
        for name, value in {
            "AUTHORITY_REDIS_URL": stack.settings.redis_url or "",
            "AUTHORITY_REDIS_PREFIX": stack.settings.redis_prefix,
            "AUTHORITY_KEYS_DIR": str(tmp_path / "elsewhere"),
            "AUTHORITY_KEY_PASSPHRASE": PASSPHRASE,
        }.items():
            monkeypatch.setenv(name, value)
        assert main(["keys", "rotate"]) == 2
        said = capsys.readouterr().err
        assert str((tmp_path / "elsewhere").absolute()) in said
        assert "running service processes share this Redis prefix" in said
        assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())
