"""Per-brand sliding-window limits, 429 RateLimitProblem and an exactly honourable retryAfter."""

from __future__ import annotations

from tests.simulator.conftest import MakeSim, Sim, contact


def _get(sim: Sim, key: str = "test-key") -> int:
    return sim.api.get(
        "/contacts", headers={"Authorization": f"Omnisend-API-Key {key}"}
    ).status_code


def test_request_after_the_limit_gets_429_with_retry_after(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=5)
    for _ in range(5):
        assert _get(sim) == 200
        sim.clock.advance(1.5)  # five requests at t=0, 1.5, 3, 4.5, 6
    r = sim.api.get("/contacts")
    assert r.status_code == 429
    body = r.json()
    # The request at t=0 leaves the 60 s window at t=60; it is t=7.5 now.
    assert body["retryAfter"] == 53
    assert body["type"] == "https://problems.omnisend.com/rate-limit-exceeded"


def test_retry_after_is_honoured_exactly(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=3)
    for _ in range(3):
        _get(sim)
        sim.clock.advance(0.25)  # requests at t=0, 0.25, 0.5
    sim.clock.advance(0.25)
    retry_after = sim.api.get("/contacts").json()["retryAfter"]
    assert retry_after == 59  # at t=1 the first request leaves the window at t=60
    sim.clock.advance(retry_after - 0.5)
    assert _get(sim) == 429  # a little early is still too early
    sim.clock.advance(0.5)
    assert _get(sim) == 200


def test_rejected_requests_do_not_count(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=2)
    _get(sim)
    _get(sim)
    for _ in range(10):
        assert _get(sim) == 429
    sim.clock.advance(60)
    assert [_get(sim), _get(sim), _get(sim)] == [200, 200, 429]
    assert sim.inspect("stats")["rateLimitedTotal"] == 11


def test_window_slides_rather_than_resets(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=2)
    _get(sim)  # t=0
    sim.clock.advance(40)
    _get(sim)  # t=40
    sim.clock.advance(21)  # t=61: the first left the window, the second has not
    assert [_get(sim), _get(sim)] == [200, 429]


def test_tag_calls_have_their_own_limit_and_count_in_the_shared_one(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=10, tag_requests_per_window=3)
    body = {"emails": ["a@example.com"], "tags": ["t"]}
    statuses = [sim.api.post("/contacts/tags", json=body).status_code for _ in range(2)]
    statuses.append(sim.api.request("DELETE", "/contacts/tags", json=body).status_code)
    statuses.append(sim.api.post("/contacts/tags", json=body).status_code)
    assert statuses == [202, 202, 202, 429]
    assert [_get(sim) for _ in range(8)] == [200] * 7 + [429]  # 3 tag calls used 3 of 10
    assert sim.inspect("stats")["rateLimited"] == {"brand-1:tags": 1, "brand-1:all": 1}


def test_limits_are_per_brand(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=1)
    assert _get(sim) == 200
    assert _get(sim) == 429
    assert _get(sim, "other-key") == 200


def test_time_scale_shrinks_the_window(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=1, time_scale=0.1)
    _get(sim)
    r = sim.api.get("/contacts")
    assert r.json()["retryAfter"] == 6
    sim.clock.advance(6)
    assert _get(sim) == 200


def test_unlimited_mode(make_sim: MakeSim) -> None:
    sim = make_sim(requests_per_window=1, unlimited=True)
    assert all(
        sim.api.post("/contacts", json=contact(f"u{i}@example.com")).status_code == 201
        for i in range(20)
    )
