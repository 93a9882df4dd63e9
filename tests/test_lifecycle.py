"""The key lifecycle rules, pure: states from times, the schedule's next step, emergency revoke."""

from __future__ import annotations

import msgspec

from authority.keys.lifecycle import KeyRecord, Plan, Schedule, plan, revoke, signer, state

SCHEDULE = Schedule(rotation_s=1000, prepublish_s=300, retention_s=500)
T0 = 1_000_000


def record(kid: str, activates_at: int, **times: int | bool | None) -> KeyRecord:
    return KeyRecord(
        kid=kid,
        alg="EdDSA",
        created_at=activates_at,
        activates_at=activates_at,
        encrypted=True,
        private_pem="",
        **times,  # type: ignore[arg-type]
    )


def applied(records: list[KeyRecord], step: Plan, kid: str = "new") -> list[KeyRecord]:
    changed = {r.kid: r for r in step.updates}
    out = [changed.pop(r.kid, r) for r in records if r.kid not in step.deletes] + list(changed.values())
    if step.new_key_at is not None:
        out.append(record(kid, step.new_key_at))
    return out


def test_first_start_creates_a_signer_at_once() -> None:
    assert plan([], T0, SCHEDULE) == Plan(new_key_at=T0)


def test_nothing_to_do_until_the_successor_must_be_published() -> None:
    assert plan([record("a", T0)], T0 + 699, SCHEDULE).empty


def test_successor_is_published_prepublish_before_it_signs() -> None:
    step = plan([record("a", T0)], T0 + 700, SCHEDULE)
    assert step.new_key_at == T0 + 1000
    (old,) = step.updates
    assert old.superseded_at == T0 + 1000
    assert old.retires_at == T0 + 1500


def test_a_late_round_still_prepublishes_in_full() -> None:
    """A replica that was down at the due time must not activate an unpublished key."""
    step = plan([record("a", T0)], T0 + 990, SCHEDULE)
    assert step.new_key_at == T0 + 990 + 300


def test_states_follow_the_clock_through_a_whole_rotation() -> None:
    keys = applied([record("a", T0)], plan([record("a", T0)], T0 + 700, SCHEDULE), kid="b")
    by_kid = {r.kid: r for r in keys}
    assert (state(by_kid["a"], T0 + 700), state(by_kid["b"], T0 + 700)) == ("active", "pending")
    assert signer(keys, T0 + 999) == by_kid["a"]
    assert (state(by_kid["a"], T0 + 1000), state(by_kid["b"], T0 + 1000)) == ("retiring", "active")
    assert signer(keys, T0 + 1000) == by_kid["b"]
    assert state(by_kid["a"], T0 + 1499) == "retiring"
    assert state(by_kid["a"], T0 + 1500) == "removed"
    assert plan(keys, T0 + 1500, SCHEDULE).deletes == ("a",)


def test_no_second_successor_while_one_is_pending() -> None:
    keys = applied([record("a", T0)], plan([record("a", T0)], T0 + 700, SCHEDULE))
    assert plan(keys, T0 + 800, SCHEDULE).empty
    assert plan(keys, T0 + 800, SCHEDULE, rotate_now=True).empty


def test_rotate_now_prepublishes_too() -> None:
    step = plan([record("a", T0)], T0 + 10, SCHEDULE, rotate_now=True)
    assert step.new_key_at == T0 + 310


def test_revoking_the_signer_without_successor_asks_for_a_new_key_now() -> None:
    step = revoke([record("a", T0)], "a", T0 + 5, SCHEDULE)
    assert step.new_key_at == T0 + 5
    assert state(step.updates[0], T0 + 5) == "removed"


def test_revoking_the_signer_promotes_the_pending_key() -> None:
    keys = applied([record("a", T0)], plan([record("a", T0)], T0 + 700, SCHEDULE), kid="b")
    step = revoke(keys, "a", T0 + 750, SCHEDULE)
    after = applied(keys, step)
    assert step.new_key_at is None
    assert signer(after, T0 + 750) == next(r for r in after if r.kid == "b")
    assert state(next(r for r in after if r.kid == "a"), T0 + 750) == "removed"


def test_revoking_a_pending_key_gives_the_signer_its_term_back() -> None:
    keys = applied([record("a", T0)], plan([record("a", T0)], T0 + 700, SCHEDULE), kid="b")
    after = applied(keys, revoke(keys, "b", T0 + 750, SCHEDULE))
    a = next(r for r in after if r.kid == "a")
    assert a.superseded_at is None
    assert state(a, T0 + 5000) == "active"


def test_revoking_a_retiring_key_removes_it_and_nothing_else() -> None:
    keys = [record("a", T0, superseded_at=T0 + 1000, retires_at=T0 + 1500), record("b", T0 + 1000)]
    after = applied(keys, revoke(keys, "a", T0 + 1100, SCHEDULE))
    assert [state(r, T0 + 1100) for r in after] == ["removed", "active"]


def test_with_no_signer_the_earliest_pending_key_signs_at_once() -> None:
    pending = record("p", T0 + 100)
    step = plan([pending], T0, SCHEDULE)
    assert step.updates == (msgspec.structs.replace(pending, activates_at=T0),)
