"""Reconnect delays (backoff.py): exponential growth, jitter bounds, cap, reset, slow retry."""
from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from soca_appliance.backoff import Backoff

BASES = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def delays(b: Backoff, n: int) -> list[float]:
    return [b.next_delay() for _ in range(n)]


def test_without_jitter_the_delays_double_to_the_cap() -> None:
    assert delays(Backoff(jitter=0.0), len(BASES)) == BASES


@pytest.mark.parametrize("seed", range(20))
def test_jittered_delays_stay_within_bounds(seed: int) -> None:
    b = Backoff(rng=random.Random(seed))
    for base, got in zip(BASES, delays(b, len(BASES))):
        assert base * 0.8 <= got <= min(30.0, base * 1.2), (base, got)


def test_jitter_actually_spreads_the_delays() -> None:
    firsts = {Backoff(rng=random.Random(seed)).next_delay() for seed in range(50)}
    assert len(firsts) == 50
    assert min(firsts) < 0.45 and max(firsts) > 0.55


def test_delays_grow_on_average() -> None:
    b = Backoff(rng=random.Random(1))
    got = delays(b, 6)
    assert all(later > earlier for earlier, later in zip(got, got[1:]))


def test_cap_holds_forever() -> None:
    b = Backoff(rng=random.Random(3))
    got = delays(b, 200)                      # 2 ** 200 would overflow without the clamp
    assert all(0.0 <= d <= 30.0 for d in got)
    assert all(d >= 24.0 for d in got[6:])


def test_a_million_attempts_neither_overflow_nor_leave_the_cap() -> None:
    b = Backoff(jitter=0.0, attempts=10**6)        # 2.0 ** 1e6 would raise OverflowError
    assert b.next_delay() == 30.0


def test_custom_parameters() -> None:
    b = Backoff(initial=1.0, cap=10.0, factor=3.0, jitter=0.0)
    assert delays(b, 5) == [1.0, 3.0, 9.0, 10.0, 10.0]


def test_reset_starts_over() -> None:
    b = Backoff(jitter=0.0)
    delays(b, 5)
    assert b.attempts == 5
    b.reset()
    assert b.attempts == 0
    assert delays(b, 2) == [0.5, 1.0]


def test_slow_is_jittered_around_the_given_delay() -> None:
    b = Backoff(rng=random.Random(7))
    got = [b.slow(60.0) for _ in range(100)]
    assert all(48.0 <= d <= 72.0 for d in got)
    assert len(set(got)) > 1
    assert b.attempts == 100


def test_slow_is_not_capped_by_the_fast_backoff_cap() -> None:
    b = Backoff(jitter=0.0)
    assert b.slow(60.0) == 60.0


def test_slow_then_reset() -> None:
    b = Backoff(jitter=0.0)
    b.slow(60.0)
    b.reset()
    assert b.next_delay() == 0.5


def test_deterministic_with_a_seeded_rng() -> None:
    a = Backoff(rng=random.Random(1234))
    b = Backoff(rng=random.Random(1234))
    assert delays(a, 12) + [a.slow(60)] == delays(b, 12) + [b.slow(60)]
    c = Backoff(rng=random.Random(4321))
    assert delays(c, 12) != delays(Backoff(rng=random.Random(1234)), 12)


def test_default_instances_do_not_share_an_rng() -> None:
    a, b = Backoff(), Backoff()
    assert a.rng is not b.rng


@settings(max_examples=200, deadline=None)
@given(initial=st.floats(0.01, 5.0), cap=st.floats(0.01, 120.0), factor=st.floats(1.0, 4.0),
       jitter=st.floats(0.0, 0.9), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 80))
# Found by hypothesis: the exponent stopped at 64 attempts, so a slowly growing series
# (1.125 ** 64 * 0.01 = 18.8) never reached its 19 s cap.
@example(initial=0.01, cap=19.0, factor=1.125, jitter=0.0, seed=0, n=66)
@example(initial=0.01, cap=19.0, factor=1.125, jitter=0.2, seed=1, n=80)
def test_property_delays_never_negative_or_above_the_cap(initial: float, cap: float,
                                                         factor: float, jitter: float,
                                                         seed: int, n: int) -> None:
    """Never negative, never above the cap; without jitter the delays start at ``initial``,
    grow by ``factor`` and then stay at the cap once the series passes it; jitter stays
    within +/- ``jitter`` of those delays. (How the exponent is bounded is not the test's
    business.)"""
    bases = delays(Backoff(initial=initial, cap=cap, factor=factor, jitter=0.0), n)
    assert bases[0] == min(initial, cap)
    for earlier, later in zip(bases, bases[1:]):
        assert earlier <= later <= cap
        assert later == cap or later == pytest.approx(earlier * factor, rel=1e-9)
    passes_cap, value = 0, initial            # the first attempt whose series reaches the cap
    while value < cap and passes_cap < n:
        value, passes_cap = value * factor, passes_cap + 1
    assert all(d == cap for d in bases[passes_cap + 1:])

    b = Backoff(initial=initial, cap=cap, factor=factor, jitter=jitter, rng=random.Random(seed))
    for base, d in zip(bases, delays(b, n)):
        assert 0.0 <= d <= cap
        assert base * (1 - jitter) - 1e-9 <= d <= min(cap, base * (1 + jitter)) + 1e-9
