"""The directory file, live: its format (the first one still reads, and the new fields), a changed file read again
(in place, atomically replaced, a new inode behind the same size and mtime, on ``reload()``), a bad new file that
keeps the last good data and says why once, the last good data kept on disk for a process that starts on a bad
file (none kept yet: stopped in one line), and SIGHUP: to the image's granian, which restarts the workers, each
reading the file at its start (a bad one: the copy kept), and to ``authority serve``, which reads it again."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from authority import demo
from authority.directory import CoworkerEntry, LocationEntry, Membership
from authority.directory_file import CHECK_S, DEMO_DIRECTORY, FileDirectory, LastGood, parse
from authority.embedded import free_port
from tests.helpers import (
    BIN,
    PASSPHRASE,
    READYZ,
    STAFF,
    Clock,
    Served,
    collected,
    poll,
    the_images_command,
    wait_until_ready,
)

# --- the format -----------------------------------------------------------------------------------------------

# The demo directory as the first format wrote it: coworkers as plain ids, no `impersonation`.
FIRST_FORMAT = {
    "locations": {
        "1": {"coworkers": [5, 42, 43, 99], "teams": {"7": {"admins": [5], "members": [42, 43]}}},
        "2": {"coworkers": [200], "teams": {}},
    }
}


def encoded(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_the_first_format_still_reads() -> None:
    snapshot = parse(encoded(FIRST_FORMAT))
    assert snapshot.locations == {"1": LocationEntry("1", impersonation=True), "2": LocationEntry("2", True)}
    admin = CoworkerEntry(id=5, impersonable=True, staff=False, teams=(Membership("7", "admin"),))
    member = CoworkerEntry(id=42, impersonable=True, staff=False, teams=(Membership("7", "member"),))
    assert snapshot.coworkers["1", 5] == admin
    assert snapshot.coworkers["1", 42] == member
    assert admin.administers(member)
    assert snapshot.coworkers["1", 99] == CoworkerEntry(id=99, impersonable=True, staff=False, teams=())
    assert snapshot.coworkers["2", 200].teams == ()
    assert ("2", 42) not in snapshot.coworkers  # a coworker of one location is not one of another
    assert len(snapshot.coworkers) == 5


def test_the_new_fields_read_as_the_portal_would_answer() -> None:
    """Coworker objects with the flags that differ from the defaults, a location's kill switch, and a coworker among
    a team's admins and its members, who is an admin of it."""
    document = {
        "locations": {
            "1": {
                "coworkers": [5, {"id": 60, "impersonable": False}, {"id": 70, "staff": True}, {"id": 8}],
                "teams": {"9": {"admins": [8], "members": [60]}, "7": {"admins": [5], "members": [5, 60, 70]}},
            },
            "3": {"impersonation": False, "coworkers": [300]},
        }
    }
    snapshot = parse(encoded(document))
    assert snapshot.locations["1"] == LocationEntry("1", impersonation=True)
    assert snapshot.locations["3"] == LocationEntry("3", impersonation=False)
    assert snapshot.coworkers["1", 5].teams == (Membership("7", "admin"),)  # admin and member of 7: its admin
    assert snapshot.coworkers["1", 60] == CoworkerEntry(
        id=60, impersonable=False, staff=False, teams=(Membership("7", "member"), Membership("9", "member"))
    )
    assert snapshot.coworkers["1", 70] == CoworkerEntry(
        id=70, impersonable=True, staff=True, teams=(Membership("7", "member"),)
    )
    assert snapshot.coworkers["1", 8] == CoworkerEntry(
        id=8, impersonable=True, staff=False, teams=(Membership("9", "admin"),)
    )
    assert snapshot.coworkers["3", 300].teams == ()


def test_the_demo_directory_reads() -> None:
    snapshot = parse(DEMO_DIRECTORY.read_bytes())
    assert snapshot.locations["3"].impersonation is False
    assert snapshot.coworkers["1", 60].impersonable is False
    assert snapshot.coworkers["1", 70].staff is True


@pytest.mark.parametrize(
    ("document", "refusal"),
    [
        ({"locations": {}, "location": {}}, "unknown field `location`"),
        ({"locations": {"1": {"coworkers": [], "impersonaton": False}}},
         'unknown field `impersonaton` - at `$.locations["1"]`'),
        ({"locations": {"1": {"coworkers": [5, {"id": 42, "impersonable ": False}]}}},
         'unknown field `impersonable ` - at `$.locations["1"].coworkers[1]`'),
        ({"locations": {"1": {"coworkers": [5], "teams": {"7": {"admins": [5], "members": [], "owners": [5]}}}}},
         'unknown field `owners` - at `$.locations["1"].teams["7"]`'),
    ],
)  # fmt: skip
def test_a_field_we_do_not_know_is_refused_naming_it_and_where(document: dict[str, Any], refusal: str) -> None:
    """The operator writes this file: a typo must stop it, not be ignored (``"impersonaton": false`` ignored would
    leave the location's kill switch off)."""
    with pytest.raises(ValueError, match=re.escape(refusal)):
        parse(encoded(document))


@pytest.mark.parametrize(
    ("document", "refusal"),
    [
        ({"locations": {"1": {"coworkers": [{"id": 42, "staff": "yes"}]}}},
         'Expected `bool`, got `str` - at `$.locations["1"].coworkers[0].staff`'),
        ({"locations": {"1": {"coworkers": ["42"]}}},
         'Expected `int | object`, got `str` - at `$.locations["1"].coworkers[0]`'),
        ({"locations": {"1": {"coworkers": [], "impersonation": "false"}}},
         'Expected `bool`, got `str` - at `$.locations["1"].impersonation`'),
        ({"locations": {"x y": {"coworkers": [], "teams": {"7": {"admins": [], "members": ["2"]}}}}},
         'Expected `int`, got `str` - at `$.locations["x y"].teams["7"].members[0]`'),
        ({"locations": {"1": {"teams": {}}}}, 'missing required field `coworkers` - at `$.locations["1"]`'),
        ({"locations": {"1": [42]}}, 'Expected `object`, got `array` - at `$.locations["1"]`'),
        ({"locations": {"1": {"coworkers": [42, {"id": 42, "staff": True}]}}},
         'coworker 42 is listed twice, with different flags - at `$.locations["1"].coworkers`'),
    ],
)  # fmt: skip
def test_a_wrong_value_is_refused_saying_where(document: dict[str, Any], refusal: str) -> None:
    with pytest.raises(ValueError, match=re.escape(refusal)):
        parse(encoded(document))


def test_the_same_coworker_twice_is_harmless() -> None:
    """The first format read coworkers as a set: a repeated id was fine there, and stays fine."""
    snapshot = parse(encoded({"locations": {"1": {"coworkers": [42, 42, {"id": 43}, 43]}}}))
    assert sorted(snapshot.coworkers) == [("1", 42), ("1", 43)]


def test_malformed_json_is_refused() -> None:
    with pytest.raises(ValueError, match=r"JSON is malformed: trailing comma"):
        parse(b'{"locations": {"1": {"coworkers": [42],}}}')
    with pytest.raises(ValueError, match=r"Input data was truncated"):
        parse(b'{"locations": {"1": {"coworkers": [42]')


# --- live: a changed file is read again -----------------------------------------------------------------------


def with_coworkers(*ids: int) -> bytes:
    return encoded({"locations": {"1": {"coworkers": list(ids)}}})


def known(directory: FileDirectory, coworker_id: int) -> bool:
    return asyncio.run(directory.coworker("1", coworker_id)) is not None


def stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def replace_atomically(path: Path, data: bytes, *, mtime_ns: int | None = None) -> None:
    """As a deploy tool does: a new file beside it, renamed over it (``mtime_ns``: the new file's, set first)."""
    staged = path.with_suffix(".new")
    staged.write_bytes(data)
    if mtime_ns is not None:
        os.utime(staged, ns=(mtime_ns, mtime_ns))
    os.replace(staged, path)


def rewrite_in_place_unseen(path: Path, data: bytes) -> None:
    """The same inode, the same size, the mtime put back: a change the stamp cannot see."""
    before = path.stat()
    assert len(data) == before.st_size
    with path.open("r+b") as file:
        file.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert stamp(path) == (before.st_ino, before.st_size, before.st_mtime_ns)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    written = tmp_path / "directory.json"
    written.write_bytes(with_coworkers(42))
    return written


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def kept(tmp_path: Path) -> Path:
    """This test's folder of last good copies (the service's is ``runtime_folder()``)."""
    return tmp_path / "kept"


@pytest.fixture
def directory(path: Path, clock: Clock, kept: Path) -> FileDirectory:
    return FileDirectory(path, clock=clock, keep_in=kept)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    with collected("authority") as records:
        yield records


def lines(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records]


def test_a_file_changed_in_place_is_read_after_check_s_not_before(
    path: Path, clock: Clock, directory: FileDirectory
) -> None:
    inode = path.stat().st_ino
    path.write_bytes(with_coworkers(42, 43))  # truncated and written: the same inode, a new size
    assert path.stat().st_ino == inode
    clock.now += CHECK_S - 0.25
    assert not known(directory, 43)
    clock.now += 0.25
    assert known(directory, 43)
    # The same size, a new mtime.
    path.write_bytes(with_coworkers(42, 44))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert known(directory, 43)  # checked just now: not again before CHECK_S
    clock.now += CHECK_S
    assert known(directory, 44)
    assert not known(directory, 43)


def test_an_atomically_replaced_file_is_read(path: Path, clock: Clock, directory: FileDirectory) -> None:
    replace_atomically(path, with_coworkers(24))
    assert known(directory, 42)
    clock.now += CHECK_S
    assert known(directory, 24)
    assert not known(directory, 42)


def test_a_new_inode_is_seen_behind_the_same_size_and_mtime(path: Path, clock: Clock, directory: FileDirectory) -> None:
    """An atomic replace with a file of the same size whose mtime was set back (a copy keeping times, a clock
    behind): the inode alone tells it is another file."""
    before = stamp(path)
    replace_atomically(path, with_coworkers(24), mtime_ns=before[2])
    after = stamp(path)
    assert after[1:] == before[1:]
    assert after[0] != before[0]
    clock.now += CHECK_S
    assert known(directory, 24)


def test_a_fresh_lookup_looks_at_the_file_now(path: Path, directory: FileDirectory) -> None:
    """The exchange's re-check does not wait for CHECK_S: a file replaced a moment ago is read."""
    replace_atomically(path, with_coworkers(24))
    assert known(directory, 42)  # the clock has not moved: not looked at
    assert asyncio.run(directory.coworker("1", 24, fresh=True)) is not None
    assert not known(directory, 42)


def test_a_change_the_stamp_cannot_see_is_read_on_reload_only(
    path: Path, clock: Clock, directory: FileDirectory
) -> None:
    """``reload()`` reads the file, changed or not; the check every CHECK_S reads it only when its stamp changed."""
    rewrite_in_place_unseen(path, with_coworkers(24))
    clock.now += 10 * CHECK_S
    assert known(directory, 42)
    assert not known(directory, 24)
    directory.reload()
    assert known(directory, 24)


def test_reload_reads_a_change_at_once(path: Path, directory: FileDirectory) -> None:
    replace_atomically(path, with_coworkers(24))
    directory.reload()  # the clock has not moved
    assert known(directory, 24)


@pytest.mark.parametrize(
    "case",
    [
        (b'{"locations": {"1": {"coworkers": [24', "Input data was truncated"),
        (encoded({"locations": {"1": {"coworkers": [24], "impersonation": "no"}}}),
         'Expected `bool`, got `str` - at `$.locations["1"].impersonation`'),
        (encoded({"locations": {"1": {"coworkers": [{"id": 24, "impersonable ": False}]}}}),
         'unknown field `impersonable ` - at `$.locations["1"].coworkers[0]`'),
    ],
)  # fmt: skip
def test_a_bad_new_file_keeps_the_last_good_data_and_says_why_once(
    path: Path, clock: Clock, directory: FileDirectory, logged: list[logging.LogRecord], case: tuple[bytes, str]
) -> None:
    bad, reason = case
    replace_atomically(path, bad)
    for _ in range(5):  # five checks: one line
        clock.now += CHECK_S
        assert known(directory, 42)
        assert not known(directory, 24)
    [(level, message)] = lines(logged)
    assert level == "ERROR"
    assert message.startswith(f"directory file {path}: ")
    assert reason in message
    assert message.endswith("; still serving the directory read before")
    directory.reload()  # asked again, the same cause: not said again
    assert len(logged) == 1

    replace_atomically(path, with_coworkers(24))
    for _ in range(3):
        clock.now += CHECK_S
        assert known(directory, 24)
    assert lines(logged)[1:] == [("WARNING", f"directory file {path} read again: 1 locations")]

    replace_atomically(path, bad)  # the same mistake again, after a good file: a new episode, said again
    clock.now += CHECK_S
    assert known(directory, 24)
    assert len(logged) == 3
    assert reason in logged[2].getMessage()


def test_a_second_different_mistake_is_said_too(
    path: Path, clock: Clock, directory: FileDirectory, logged: list[logging.LogRecord]
) -> None:
    replace_atomically(path, b"{")
    clock.now += CHECK_S
    assert known(directory, 42)
    replace_atomically(path, encoded({"locations": {"1": {"coworkers": [], "typo": 1}}}))
    clock.now += CHECK_S
    assert known(directory, 42)
    assert [level for level, _ in lines(logged)] == ["ERROR", "ERROR"]
    assert "truncated" in logged[0].getMessage()
    assert "unknown field `typo`" in logged[1].getMessage()


def test_a_deleted_file_keeps_the_last_good_data_and_says_so_once(
    path: Path, clock: Clock, directory: FileDirectory, logged: list[logging.LogRecord]
) -> None:
    away = path.with_suffix(".away")
    path.rename(away)
    for _ in range(5):
        clock.now += CHECK_S
        assert known(directory, 42)
    assert lines(logged) == [
        ("ERROR", f"directory file {path}: No such file or directory; still serving the directory read before")
    ]
    # Back unchanged (renamed back: the same stamp): its data is what is served; said, so the error is not the
    # last word, and a second removal is said again.
    away.rename(path)
    clock.now += CHECK_S
    assert known(directory, 42)
    assert lines(logged)[1:] == [("WARNING", f"directory file {path} is back, unchanged")]
    path.unlink()
    clock.now += CHECK_S
    assert known(directory, 42)
    assert len(logged) == 3
    assert "No such file or directory" in logged[2].getMessage()
    path.write_bytes(with_coworkers(24))  # a new file where it was
    clock.now += CHECK_S
    assert known(directory, 24)
    assert lines(logged)[3:] == [("WARNING", f"directory file {path} read again: 1 locations")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        (b"{", "Input data was truncated"),
        (encoded({"locations": {"1": {"coworkers": [], "impersonaton": False}}}), "unknown field `impersonaton`"),
    ],
)
def test_a_bad_or_missing_file_stops_the_start_naming_it(
    tmp_path: Path, kept: Path, content: bytes | None, reason: str
) -> None:
    """At the first start there is no last good data to keep."""
    path = tmp_path / "directory.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^directory file {re.escape(str(path))}: .*{re.escape(reason)}"):
        FileDirectory(path, keep_in=kept)


# --- the last good data, kept on disk -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(encoded({"locations": {"1": {"coworkers": [24], "typo": 1}}}), "unknown field `typo`"),
     (None, "No such file or directory")],
    ids=["malformed", "missing"],
)  # fmt: skip
def test_a_process_starting_on_a_bad_file_starts_on_the_last_good_copy_saying_why(
    path: Path, kept: Path, logged: list[logging.LogRecord], bad: bytes | None, reason: str
) -> None:
    """What a worker restarted by granian's SIGHUP does: it has no data in memory, so it takes the copy the last
    good read kept, and says in one line when that was read and why the file was refused."""
    before = time.time()
    FileDirectory(path, keep_in=kept)  # a good read: kept
    if bad is None:
        path.unlink()
    else:
        replace_atomically(path, bad)
    clock = Clock(1000.0)
    restarted = FileDirectory(path, clock=clock, keep_in=kept)
    assert known(restarted, 42)
    [(level, message)] = lines(logged)
    assert level == "ERROR"
    assert message.startswith(f"directory file {path}: ")
    assert reason in message
    read_at = re.search(r"; still serving the last good directory, read at (\S+) \(kept in (.+)\)$", message)
    assert read_at is not None, message
    assert abs(datetime.fromisoformat(read_at[1]).timestamp() - before) < 2
    assert Path(read_at[2]).parent == kept
    for _ in range(3):  # refused once: not said again at every check
        clock.now += CHECK_S
        assert known(restarted, 42)
    assert len(logged) == 1
    path.write_bytes(with_coworkers(24))  # fixed: read, and kept in turn
    clock.now += CHECK_S
    assert known(restarted, 24)
    assert lines(logged)[1:] == [("WARNING", f"directory file {path} read again: 1 locations")]
    replace_atomically(path, b"{")
    assert known(FileDirectory(path, keep_in=kept), 24)


def test_the_copy_is_owner_only_and_names_its_file(path: Path, kept: Path) -> None:
    FileDirectory(path, keep_in=kept)
    [copy] = kept.iterdir()
    assert (kept.stat().st_mode & 0o777, copy.stat().st_mode & 0o777) == (0o700, 0o600)
    assert json.loads(copy.read_bytes())["source"] == str(path.absolute())
    other = path.with_name("other.json")  # another file: another copy, never this one
    other.write_bytes(with_coworkers(7))
    FileDirectory(other, keep_in=kept)
    assert len(list(kept.iterdir())) == 2
    other.write_bytes(b"{")
    with pytest.raises(ValueError, match="truncated"):
        FileDirectory(other, keep_in=kept.with_name("elsewhere"))  # no copy there


def test_a_folder_not_ours_alone_is_not_used(path: Path, kept: Path, logged: list[logging.LogRecord]) -> None:
    """A copy says who may be impersonated: one in a folder others may write in could have been planted."""
    FileDirectory(path, keep_in=kept)
    kept.chmod(0o777)
    FileDirectory(path, keep_in=kept)  # nor written to
    assert f"{kept} is not a folder of this user's alone" in logged[0].getMessage()
    replace_atomically(path, b"{")
    with pytest.raises(ValueError, match="truncated"):
        FileDirectory(path, keep_in=kept)


def test_a_folder_that_cannot_be_used_is_said_once_and_the_service_goes_on(
    path: Path, tmp_path: Path, clock: Clock, logged: list[logging.LogRecord]
) -> None:
    """A read-only file system, say: the copy is a convenience, never a reason to stop."""
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")
    directory = FileDirectory(path, clock=clock, keep_in=blocked)
    for coworkers in ((42, 43), (42, 44)):
        path.write_bytes(with_coworkers(*coworkers))
        clock.now += CHECK_S
        assert known(directory, coworkers[1])
    warnings = [m for _, m in lines(logged) if "no copy of it can be kept" in m]
    assert warnings == [
        f"directory file {path}: no copy of it can be kept in {blocked} ({blocked} is not a folder of this user's "
        "alone); a worker that starts on a bad file will stop instead of serving the last good data"
    ]
    assert LastGood(path, blocked).load() is None


def production_env(tmp_path: Path, directory_file: Path) -> dict[str, str]:
    issuer = demo.trusted_demo_issuer(tmp_path / "portal")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AUTHORITY_", "PROMETHEUS_"))},
        "AUTHORITY_REDIS_URL": "redis://127.0.0.1:1/0",  # never connected to: the start stops before
        "AUTHORITY_ISSUER": "https://authority.example",
        "AUTHORITY_KEYS_DIR": str(tmp_path / "keys"),
        "AUTHORITY_KEY_PASSPHRASE": PASSPHRASE,
        "AUTHORITY_DIRECTORY_FILE": str(directory_file),
        "AUTHORITY_TRUSTED_ISSUERS": json.dumps(
            [{"issuer": issuer.issuer, "audiences": issuer.audiences, "jwks_file": issuer.jwks_file}]
        ),
    }


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-c", "import authority.asgi"], [str(BIN / "authority"), "serve"]],
    ids=["asgi", "cli"],
)
def test_a_bad_directory_file_stops_the_service_in_one_line(tmp_path: Path, command: list[str]) -> None:
    """The ASGI entry point (what granian and uvicorn load) and ``authority serve``: one line naming the file and
    the mistake, no traceback, exit 2."""
    path = tmp_path / "directory.json"
    path.write_bytes(encoded({"locations": {"1": {"coworkers": [{"id": 42, "impersonable ": False}]}}}))
    env = production_env(tmp_path, path)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"authority: directory file {path}: Object contains unknown field `impersonable ` - at "
        '`$.locations["1"].coworkers[0]`'
    ]


def test_a_file_is_checked_before_it_is_put_in_place(tmp_path: Path) -> None:
    """``python -m authority.directory_file FILE``: what the service would say of it, before a restart reads it."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(DEMO_DIRECTORY.read_bytes())
    bad.write_bytes(encoded({"locations": {"1": {"coworkers": [42], "impersonaton": False}}}))
    checked = [
        subprocess.run([sys.executable, "-m", "authority.directory_file", str(file)], capture_output=True, text=True,
                       timeout=30, check=False)
        for file in (good, bad)
    ]  # fmt: skip
    assert (checked[0].returncode, checked[0].stdout) == (0, f"directory file {good}: 3 locations, 10 coworkers\n")
    assert checked[1].returncode == 1
    assert checked[1].stderr == (
        f'directory file {bad}: Object contains unknown field `impersonaton` - at `$.locations["1"]`\n'
    )


# --- SIGHUP under the image's granian -------------------------------------------------------------------------

NO_LIMITS = {"mint_rate_per_actor": "1000000", "mint_rate_per_location": "1000000"}


def minted(served: Served, coworker: int) -> int:
    """The status of a staff mint for ``coworker`` in location 1, on a new connection (either worker's)."""
    try:
        return httpx.get(
            f"{served.base}{STAFF}", params={"coworkerId": coworker}, headers=served.bearer("7")
        ).status_code
    except httpx.TransportError:
        return 0


def workers(served: Served) -> set[int]:
    return {child.pid for child in psutil.Process(served.process.pid).children()}


def in_a_row(times: int, check: Callable[[], bool]) -> Callable[[], bool]:
    """A check for ``poll`` that passes once ``check`` has passed ``times`` times in a row."""
    run = 0

    def step() -> bool:
        nonlocal run
        run = run + 1 if check() else 0
        return run >= times

    return step


def test_sighup_restarts_granians_workers_and_they_read_the_file_again(redis_url: str, tmp_path: Path) -> None:
    """The image's command on a directory file rewritten so that only a new read can see it (in place, the same
    size, the mtime put back): a mint for the new coworker stays 404 past CHECK_S; after SIGHUP to granian's
    master, the new workers read the file at their start and it is 200 on every worker."""
    path = tmp_path / "directory.json"
    path.write_bytes(with_coworkers(42))
    with the_images_command(redis_url, tmp_path, directory_file=str(path), **NO_LIMITS) as served:
        # Both workers serving (a just-started one may answer 503 for a moment, before it holds its signer).
        poll("ten 200s in a row for coworker 42", in_a_row(10, lambda: minted(served, 42) == 200), 30, served)
        assert minted(served, 24) == 404
        rewrite_in_place_unseen(path, with_coworkers(24))  # 42 -> 24: two digits swapped
        rewritten = time.monotonic()

        # Without SIGHUP: past CHECK_S, on new connections (both workers), no 200 (the stamp was defeated).
        answers: list[tuple[float, int]] = []
        while time.monotonic() < rewritten + CHECK_S + 0.5:
            answers.append((time.monotonic() - rewritten, minted(served, 24)))
        assert 200 not in {status for _, status in answers}, answers
        assert sum(status == 404 for after, status in answers if after > CHECK_S) >= 2, answers

        old = workers(served)
        assert len(old) == 2
        os.kill(served.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        poll("a 200 for coworker 24", lambda: minted(served, 24) == 200, 30, served)

        def replaced() -> bool:
            now = workers(served)
            return len(now) == 2 and not now & old

        poll("two new workers", replaced, deadline - time.monotonic(), served)
        # Every worker now, on new connections (a just-started worker may answer 503 for a moment, before it holds
        # its signer).
        poll("ten 200s in a row", in_a_row(10, lambda: minted(served, 24) == 200), deadline - time.monotonic(), served)
        assert minted(served, 42) == 404
        assert served.process.poll() is None


def test_sighup_with_a_bad_file_keeps_granian_serving_the_last_good_data(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP restarts every worker, and a new worker starts on the bad file: it takes the copy the old workers kept,
    and says why in one line; granian goes on serving the last good data on every worker."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "run"))  # the workers' runtime folder: this test's
    (tmp_path / "run").mkdir()
    path = tmp_path / "directory.json"
    path.write_bytes(with_coworkers(42))
    with the_images_command(redis_url, tmp_path, directory_file=str(path), **NO_LIMITS) as served:
        poll("ten 200s in a row for coworker 42", in_a_row(10, lambda: minted(served, 42) == 200), 30, served)
        replace_atomically(path, encoded({"locations": {"1": {"coworkers": [24], "typo": 1}}}))

        def refused() -> bool:
            assert minted(served, 42) == 200  # the last good data, served meanwhile
            return "unknown field `typo`" in served.output()

        poll("the bad file refused by a running worker", refused, 10, served)
        old = workers(served)
        os.kill(served.process.pid, signal.SIGHUP)

        def replaced() -> bool:
            now = workers(served)
            return len(now) == 2 and not now & old

        poll("two new workers", replaced, 30, served)
        poll("ten 200s in a row", in_a_row(10, lambda: minted(served, 42) == 200), 30, served)
        assert minted(served, 24) == 404
        said = [line for line in served.output().splitlines() if "still serving the last good directory" in line]
        assert len(said) == 2, served.output()  # one line per new worker
        assert all('unknown field `typo` - at `$.locations[\\"1\\"]`' in line for line in said), said
        assert "Traceback" not in served.output()
        assert served.process.poll() is None


# --- SIGHUP under `authority serve` ---------------------------------------------------------------------------


def test_sighup_makes_authority_serve_read_the_file_again_keeping_the_last_good_data(
    redis_url: str, tmp_path: Path
) -> None:
    """The daemon's reload: a change the stamp cannot see is read on SIGHUP, and a bad file then is refused, said,
    and the last good data served; the process keeps running. (Under ``--demo`` a hang-up stops it:
    test_demo_server.)"""
    path = tmp_path / "directory.json"
    path.write_bytes(with_coworkers(42))
    port = free_port()
    env = production_env(tmp_path, path) | {
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": f"serve{port}:",
        "AUTHORITY_KEY_STORE": "redis",
        "AUTHORITY_MINT_RATE_PER_ACTOR": "1000000",
        "AUTHORITY_MINT_RATE_PER_LOCATION": "1000000",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([str(BIN / "authority"), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    served = Served(process, port, env, tmp_path / "portal", log)
    try:
        wait_until_ready(f"{served.base}{READYZ}", process)
        assert minted(served, 42) == 200
        rewrite_in_place_unseen(path, with_coworkers(24))
        os.kill(process.pid, signal.SIGHUP)
        poll("a 200 for coworker 24", lambda: minted(served, 24) == 200, 10, served)
        assert minted(served, 42) == 404
        replace_atomically(path, encoded({"locations": {"1": {"coworkers": [42], "typo": 1}}}))
        os.kill(process.pid, signal.SIGHUP)
        poll("the bad file refused", lambda: "unknown field `typo`" in served.output(), 10, served)
        assert "still serving the directory read before" in served.output()
        assert minted(served, 24) == 200
        assert minted(served, 42) == 404
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
