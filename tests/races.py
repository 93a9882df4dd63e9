"""Races shared by the single-server tests (test_accountability) and the Cluster ones (test_topologies): a bulk
revocation racing 100 exchanges, and pages read while sessions are added."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import patch

from authority.app import create_app
from authority.sessions import SessionTrail
from tests.helpers import EXCHANGE, INTROSPECT, REVOKE_ALL, SESSIONS, STAFF, Stack, concurrently_served

OPERATOR = ("operator", "7")

RACING: dict[str, Any] = {"mint_rate_per_actor": 10_000, "mint_rate_per_location": 10_000, "redis_timeout_s": 10}
"""No rate limit in the way, and the patience a busy machine needs with many requests sharing one event loop."""


async def race_a_bulk_revocation(stack: Stack, clients: int = 8) -> list[str]:
    """100 impersonation tokens minted first, then exchanged by ``clients`` concurrent clients on the real app
    (one event loop, each request its own round trips to Redis), each taking the next token as soon as its last
    answer arrived, and a bulk revocation of their actor sent once 30 exchanges have answered, while exchanges
    are in flight and more start while it runs. The session ids, as their 200s arrived.

    What the code guarantees (the exchange writes the trail before it answers; the revocation reads the actor's
    index once, then ends each live session it found): the revocation ends exactly the sessions on the trail
    when it read it. So every exchange that answered before the revocation was sent is revoked; a session it
    left alive was written to the trail after that read, so its exchange answered after the revocation was sent
    (whenever its token was spent); nothing it found escapes it, and nothing else is touched."""
    operator, admin = stack.bearer(*OPERATOR), stack.bearer("admin", "1")
    app = create_app(stack.settings)
    async with concurrently_served(app) as client:
        tokens = []
        for n in range(100):
            minted = await client.get(STAFF, params={"coworkerId": 42 + n % 2}, headers=operator)
            assert minted.status_code == 200, minted.text
            tokens.append(minted.json()["token"])
        trail: SessionTrail = app.state.services.authority.trail
        read: list[list[str]] = []  # what the revocation found on the trail, as it read it
        read_trail = trail.live

        async def live(index: str, since: int) -> list[str]:
            found = await read_trail(index, since)
            read.append(found)
            return found

        answered: list[str] = []  # session ids, in the order their 200s arrived
        access: dict[str, str] = {}
        in_flight = [0]
        some_answered = asyncio.Event()
        waiting = iter(tokens)

        async def exchange() -> None:
            for token in waiting:
                status = None
                in_flight[0] += 1
                try:
                    response = await client.post(EXCHANGE, json={"token": token})
                    status = response.status_code
                    assert status == 200, response.text
                    answered.append(response.json()["session_id"])
                    access[answered[-1]] = response.json()["access_token"]
                finally:
                    in_flight[0] -= 1
                    if status != 200 or len(answered) >= 30:  # a failure wakes the race up, to be reported
                        some_answered.set()

        with patch.object(trail, "live", live):
            racing = [asyncio.create_task(exchange()) for _ in range(clients)]
            await asyncio.wait_for(some_answered.wait(), 120)
            before = set(answered)  # every exchange whose 200 arrived before the revocation is sent
            racing_it = in_flight[0]
            revocation = await client.post(REVOKE_ALL, json={"actor": "7"}, headers=admin)
            while_it_ran = len(answered) - len(before)
            await asyncio.wait_for(asyncio.gather(*racing), 120)
        assert revocation.status_code == 200, revocation.text
        assert len(answered) == len(set(answered)) == 100
        assert 30 <= len(before) < 100
        assert racing_it > 0  # sent while exchanges were in flight
        assert len(read) == 1
        caught = set(read[0])
        assert before <= caught
        assert revocation.json() == {"revoked": len(caught)}
        after = 100 - len(before) - while_it_ran
        print(f"answered before the revocation: {len(before)}, in flight as it was sent: {racing_it}, answered "
              f"while it ran: {while_it_ran}, after: {after}; it caught {len(caught)}")  # fmt: skip

        async def is_active(sid: str) -> bool:
            answer = await client.post(INTROSPECT, data={"token": access[sid]}, headers=operator)
            return bool(answer.json()["active"])

        activity = dict(zip(answered, await asyncio.gather(*(is_active(sid) for sid in answered)), strict=True))
        assert {sid for sid, alive in activity.items() if not alive} == caught  # every one revoked, no other
        assert not {sid for sid, alive in activity.items() if alive} & before
        listed = await client.get(SESSIONS, params={"state": "revoked", "limit": 100}, headers=admin)
        assert {i["session_id"] for i in listed.json()["items"]} == caught
        # once every exchange has answered, a second revocation catches exactly the rest
        second = await client.post(REVOKE_ALL, json={"actor": "7"}, headers=admin)
        assert second.json() == {"revoked": 100 - len(caught)}
        assert not any(await asyncio.gather(*(is_active(sid) for sid in answered)))
    return answered


async def page_while_inserting(
    stack: Stack, *, query: dict[str, str] | None = None, existing: int = 24, limit: int = 3
) -> tuple[list[str], list[str], int]:
    """Page through the staff's list (``query``: its filters) while three background tasks keep exchanging new
    sessions (for customers 42 and 43, by operator 7), each page read with inserts in flight and at least one
    insert landed since the page before. Asserts that of the ``existing`` sessions opened before paging began
    (alternately for 42 and 43) none is repeated or skipped, newest first, and that nothing is listed twice. The
    ids listed, the ids inserted meanwhile, and how many pages came short of ``limit`` with a cursor."""
    operator, admin = stack.bearer(*OPERATOR), stack.bearer("admin", "1")
    async with concurrently_served(create_app(stack.settings)) as client:

        async def open_session(coworker: int) -> str:
            minted = await client.get(STAFF, params={"coworkerId": coworker}, headers=operator)
            assert minted.status_code == 200, minted.text
            exchanged = await client.post(EXCHANGE, json={"token": minted.json()["token"]})
            assert exchanged.status_code == 200, exchanged.text
            sid: str = exchanged.json()["session_id"]
            return sid

        made = [await open_session(42 + n % 2) for n in range(existing)]
        inserted: list[str] = []
        paged, landed = asyncio.Event(), asyncio.Event()

        async def insert(coworker: int) -> None:
            while not paged.is_set():
                inserted.append(await open_session(coworker))
                landed.set()

        inserting = [asyncio.create_task(insert(c)) for c in (42, 43, 42)]
        seen: list[str] = []
        cursor: str | None = None
        short = 0
        try:
            while True:
                landed.clear()
                await asyncio.wait_for(landed.wait(), 60)  # an insert landed since the page before; more in flight
                params = {**(query or {}), "limit": str(limit), **({"cursor": cursor} if cursor else {})}
                page = await client.get(SESSIONS, params=params, headers=admin)
                assert page.status_code == 200, page.text
                seen += [i["session_id"] for i in page.json()["items"]]
                cursor = page.json().get("next")
                if cursor is None:
                    break
                short += len(page.json()["items"]) < limit
        finally:
            paged.set()
            await asyncio.wait_for(asyncio.gather(*inserting), 60)
        assert inserted
        everything: list[str] = []  # the same listing once nothing is added any more: the order to match
        cursor = None
        while True:
            params = {**(query or {}), "limit": "100", **({"cursor": cursor} if cursor else {})}
            page = await client.get(SESSIONS, params=params, headers=admin)
            everything += [i["session_id"] for i in page.json()["items"]]
            if (cursor := page.json().get("next")) is None:
                break
    assert len(seen) == len(set(seen))  # nothing listed twice
    wanted = set(made) if not query else set(made[0::2])  # the filtered queries here keep customer 42's
    assert [sid for sid in seen if sid in set(made)] == [sid for sid in reversed(made) if sid in wanted]
    assert seen == [sid for sid in everything if sid in set(seen)]  # newest first: in the index's own order
    return seen, inserted, short
