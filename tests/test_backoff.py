"""The one retry policy (dffmpeg/backoff.py): growing, capped, jittered, resettable."""

from __future__ import annotations

import random

import pytest

from dffmpeg.backoff import MINIMUM_SHARE, Backoff


def test_delays_grow_to_the_maximum_and_stay_within_their_band() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0, rng=random.Random(3).random)
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(2.0, 0.1 * 2**attempt)
        assert MINIMUM_SHARE * ceiling <= delay <= ceiling
    assert max(delays) <= 2.0 and delays[-1] >= MINIMUM_SHARE * 2.0
    assert backoff.attempts == 12


def test_jitter_spreads_parties_that_failed_together() -> None:
    # A hundred parties whose requests failed at the same moment do not come back at
    # the same moment: their fifth retries are spread over half the band at least.
    fifth = []
    for seed in range(100):
        backoff = Backoff(rng=random.Random(seed).random)
        fifth.append([backoff.next_delay() for _ in range(5)][-1])
    assert max(fifth) - min(fifth) > 0.4 * max(fifth)
    assert len({round(d, 6) for d in fifth}) > 90


def test_reset_starts_over() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(("lease", "maximum"), [(15, 3.75), (3, 0.75), (60, 10.0), (0.4, 0.2)])
def test_a_party_with_a_lease_retries_well_within_it(lease: float, maximum: float) -> None:
    backoff = Backoff.for_lease(lease)
    assert backoff.maximum == pytest.approx(maximum)
    assert all(backoff.next_delay() <= lease / 4 or backoff.maximum == 0.2 for _ in range(20))


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0, maximum=1)
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)
