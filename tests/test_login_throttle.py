"""The failed-login throttle (vizgate.login_throttle), on a clock the test moves."""

from __future__ import annotations

import pytest

from vizgate.login_throttle import ADDRESS_FACTOR, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_account_is_refused_at_an_address_after_its_failures_until_the_first_expires(
    clock: Clock,
) -> None:
    throttle = LoginThrottle(3, 60, clock=clock)
    assert not throttle.failed("ada", "192.0.2.1")
    clock.now += 10
    assert not throttle.failed("ada", "192.0.2.1")
    assert throttle.retry_after("ada", "192.0.2.1") == 0
    clock.now += 10
    assert throttle.failed("ada", "192.0.2.1"), "the third failure locks"
    assert throttle.retry_after("ada", "192.0.2.1") == pytest.approx(40)
    # Elsewhere the account is not locked, nor are other accounts here.
    assert throttle.retry_after("ada", "192.0.2.2") == 0
    assert throttle.retry_after("bob", "192.0.2.1") == 0
    clock.now += 40
    assert throttle.retry_after("ada", "192.0.2.1") == 0, "the first failure has expired"
    assert throttle.failed("ada", "192.0.2.1")
    assert throttle.retry_after("ada", "192.0.2.1") == pytest.approx(10)


def test_a_success_forgets_the_accounts_failures_at_that_address(clock: Clock) -> None:
    throttle = LoginThrottle(3, 60, clock=clock)
    throttle.failed("ada", "192.0.2.1")
    throttle.failed("ada", "192.0.2.1")
    throttle.failed("ada", "192.0.2.2")
    throttle.succeeded("ada", "192.0.2.1")
    assert not throttle.failed("ada", "192.0.2.1")
    assert not throttle.failed("ada", "192.0.2.1")
    assert throttle.failed("ada", "192.0.2.1"), "three since the success"
    # The failures at the other address are still counted.
    assert not throttle.failed("ada", "192.0.2.2")
    assert throttle.failed("ada", "192.0.2.2")


def test_an_address_failing_across_many_accounts_is_refused(clock: Clock) -> None:
    throttle = LoginThrottle(2, 60, clock=clock)
    for number in range(2 * ADDRESS_FACTOR - 1):
        assert not throttle.failed(f"user{number}", "198.51.100.9")
        clock.now += 0.5
    assert throttle.failed("one-more", "198.51.100.9")
    assert throttle.retry_after("anyone", "198.51.100.9") > 0
    assert throttle.retry_after("anyone", "198.51.100.10") == 0


def test_no_limit_when_turned_off(clock: Clock) -> None:
    throttle = LoginThrottle(0, 60, clock=clock)
    for _ in range(100):
        assert not throttle.failed("ada", "192.0.2.1")
    assert throttle.retry_after("ada", "192.0.2.1") == 0


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="failures must be >= 0"):
        LoginThrottle(-1, 60)
    with pytest.raises(ValueError, match="the window > 0"):
        LoginThrottle(3, 0)
