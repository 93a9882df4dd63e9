"""The key lifecycle rules, pure: states from times, the schedule's next step with its standby, emergency revoke."""

from __future__ import annotations

import msgspec

from authority.keys.lifecycle import KeyRecord, Plan, Schedule, chain, plan, revoke, signer, state

SCHEDULE = Schedule(rotation_s=1000, prepublish_s=300, retention_s=500, serve_lag_s=3)
T0 = 1_000_000
ALG = "ES256"


def record(
    kid: str, activates_at: int, *, created_at: int | None = None, alg: str = ALG, **times: int | bool
) -> KeyRecord:
    return KeyRecord(
        kid=kid,
        alg=alg,
        created_at=activates_at if created_at is None else created_at,
        activates_at=activates_at,
        encrypted=True,
        private_pem="",
        **times,  # type: ignore[arg-type]
    )


def applied(records: list[KeyRecord], step: Plan, now: int, kids: str = "xyz") -> list[KeyRecord]:
    """``step`` applied as the manager does: updates, deletes, then new keys chained one after the other."""
    changed = {r.kid: r for r in step.updates}
    out = [changed.pop(r.kid, r) for r in records if r.kid not in step.deletes] + list(changed.values())
    made = [record(kid, at, created_at=now) for kid, at in zip(kids, step.new_keys, strict=False)]
    return out + chain(made, SCHEDULE)


def by_kid(records: list[KeyRecord]) -> dict[str, KeyRecord]:
    return {r.kid: r for r in records}


def started(now: int = T0) -> list[KeyRecord]:
    return applied([], plan([], now, SCHEDULE, alg=ALG), now, kids="ab")


def test_first_start_makes_a_signer_and_a_published_standby() -> None:
    step = plan([], T0, SCHEDULE, alg=ALG)
    assert step.new_keys == (T0, T0 + 1000)
    keys = by_kid(started())
    assert (state(keys["a"], T0), state(keys["b"], T0)) == ("active", "pending")
    assert keys["a"].superseded_at == T0 + 1000
    assert keys["a"].retires_at == T0 + 1500


def test_nothing_to_do_while_signer_and_standby_exist() -> None:
    keys = started()
    for now in (T0, T0 + 500, T0 + 999):
        assert plan(keys, now, SCHEDULE, alg=ALG).empty


def test_when_the_standby_takes_over_a_new_standby_is_made_for_the_next_term() -> None:
    keys = started()
    assert signer(keys, T0 + 1000) == by_kid(keys)["b"]
    step = plan(keys, T0 + 1001, SCHEDULE, alg=ALG)
    assert step.new_keys == (T0 + 2000,)
    (old,) = step.updates
    assert (old.kid, old.superseded_at) == ("b", T0 + 2000)


def test_a_late_round_still_publishes_the_standby_in_full() -> None:
    """A replica that was down when the standby took over must not let an unserved key sign: pre-publication counts
    from when every replica serves it, ``serve_lag_s`` after it is written."""
    keys = started()
    step = plan(keys, T0 + 1990, SCHEDULE, alg=ALG)
    assert step.new_keys == (T0 + 1990 + 300 + 3,)


def test_states_follow_the_clock_through_a_whole_rotation() -> None:
    keys = by_kid(started())
    assert signer(list(keys.values()), T0 + 999) == keys["a"]
    assert (state(keys["a"], T0 + 1000), state(keys["b"], T0 + 1000)) == ("retiring", "active")
    assert state(keys["a"], T0 + 1499) == "retiring"
    assert state(keys["a"], T0 + 1500) == "removed"
    assert "a" in plan(list(keys.values()), T0 + 1500, SCHEDULE, alg=ALG).deletes


def test_rotate_now_brings_the_standby_forward_once_it_has_been_served_long_enough() -> None:
    keys = started()
    young = plan(keys, T0 + 10, SCHEDULE, alg=ALG, rotate_now=True)
    moved = by_kid(applied(keys, young, T0 + 10))
    assert moved["b"].activates_at == T0 + 303  # written at T0, served everywhere by T0 + 3, published 300 s
    assert moved["a"].superseded_at == T0 + 303
    old_enough = by_kid(applied(keys, plan(keys, T0 + 400, SCHEDULE, alg=ALG, rotate_now=True), T0 + 400))
    assert old_enough["b"].activates_at == T0 + 400


def test_revoking_the_signer_promotes_the_standby_every_consumer_holds_and_makes_a_new_one() -> None:
    keys = started()
    step = revoke(keys, "a", T0 + 750, SCHEDULE, alg=ALG)
    after = by_kid(applied(keys, step, T0 + 750, kids="c"))
    assert state(after["a"], T0 + 750) == "removed"
    assert signer(list(after.values()), T0 + 750) == after["b"]  # published since T0, not made now
    assert state(after["c"], T0 + 750) == "pending"
    assert after["c"].activates_at >= T0 + 750 + 303


def test_revoking_the_standby_replaces_it_and_never_shortens_the_signer() -> None:
    keys = started()
    after = by_kid(applied(keys, revoke(keys, "b", T0 + 750, SCHEDULE, alg=ALG), T0 + 750, kids="c"))
    assert state(after["b"], T0 + 750) == "removed"
    assert after["a"].superseded_at == after["c"].activates_at == T0 + 1053  # not before c is published in full


def test_revoking_a_retiring_key_removes_it_and_nothing_else() -> None:
    keys = [
        record("a", T0, superseded_at=T0 + 1000, retires_at=T0 + 1500),
        record("b", T0 + 1000),
        record("c", T0 + 2000),
    ]
    keys[1] = msgspec.structs.replace(keys[1], superseded_at=T0 + 2000, retires_at=T0 + 2500)
    after = applied(keys, revoke(keys, "a", T0 + 1100, SCHEDULE, alg=ALG), T0 + 1100)
    assert [state(r, T0 + 1100) for r in after] == ["removed", "active", "pending"]


def test_with_no_signer_the_earliest_standby_signs_at_once() -> None:
    standby = record("p", T0 + 100)
    step = plan([standby], T0, SCHEDULE, alg=ALG)
    (promoted,) = step.updates
    assert (promoted.activates_at, promoted.superseded_at) == (T0, T0 + 1000)
    assert step.new_keys == (T0 + 1000,)


def test_a_changed_alg_replaces_the_standby_through_full_pre_publication() -> None:
    """The old-alg signer keeps signing; a standby of the new alg is published in full before it takes over."""
    keys = started()
    step = plan(keys, T0 + 900, SCHEDULE, alg="EdDSA")
    assert step.deletes == ("b",)  # the ES256 standby never signed
    assert step.new_keys == (T0 + 1203,)
    after = by_kid(applied(keys, step, T0 + 900, kids="e"))
    assert signer(list(after.values()), T0 + 1202) == after["a"]
    assert after["a"].superseded_at == T0 + 1203


def test_two_signers_from_two_rotators_leave_one() -> None:
    keys = [*started(), record("z", T0 + 5)]
    step = plan(keys, T0 + 10, SCHEDULE, alg=ALG)
    assert [r.kid for r in step.updates if r.superseded_at == T0 + 10] == ["a"]
