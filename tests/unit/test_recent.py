"""The compact bounded map: it remembers the latest values of at least the `max / 2` most
recently used keys, never more than `max` keys, in the memory it promises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.recent import IntTable, RecentMap

ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "get"]),
        st.integers(0, 60),  # the key
        st.integers(-(2**63), 2**63 - 1),  # a value, any 64-bit one
    ),
    max_size=400,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, max_entries=st.integers(2, 40))
def test_recently_used_keys_are_remembered_with_their_latest_values(
    ops: list[tuple[str, int, int]], max_entries: int
) -> None:
    recent = RecentMap(max_entries, width=2)
    latest: dict[int, int] = {}
    used: list[int] = []  # most recent last, each key once
    for op, key, value in ops:
        if op == "put":
            recent.put(("k", key), value, -value if value != -(2**63) else 0)
            latest[key] = value
        else:
            must_know = key in used[len(used) - max_entries // 2 :]
            found = recent.get(("k", key))
            if found is None:
                assert not must_know, f"{key} was forgotten too early"
                continue
            assert found[0] == latest[key]
        if key in used:
            used.remove(key)
        used.append(key)
        assert len(recent) <= max_entries + 1


def test_a_million_entries_fit_the_promised_memory() -> None:
    recent = RecentMap(1_000_000, width=2)
    for i in range(1_000_000):
        recent.put(f"contact-{i}@example.com", i, i)
    assert recent.bytes <= RecentMap.full_bytes(1_000_000, 2) <= 37_000_000
    assert recent.get("contact-999999@example.com") == (999_999, 999_999)
    assert "contact-600000@example.com" in recent
    assert "nobody@example.com" not in recent


def test_nothing_is_remembered_with_a_size_of_zero_and_a_set_has_no_values() -> None:
    off = RecentMap(0)
    off.put("a", 1)
    assert "a" not in off
    seen = RecentMap(10, width=0)
    seen.put("event-1")
    assert seen.get("event-1") == ()
    assert "event-2" not in seen


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)),
        max_size=300,
    ),
    collide=st.integers(0, 3),
    width=st.integers(0, 3),
    bound=st.sampled_from([None, 460, 1024]),
)
def test_the_table_holds_what_a_dict_holds_through_growth_and_wrap_around(
    ops: list[tuple[int, int]], collide: int, width: int, bound: int | None
) -> None:
    """From a capacity of 2, so that probing wraps around the end, clusters form and the table
    grows many times (doubling, or quadrupling up to its bound); fingerprints share low bits
    when `collide` says so; each width copies its values when it grows."""
    table = IntTable(width, capacity=2, max_capacity=bound)
    reference: dict[int, tuple[int, ...]] = {}
    for n, (key, value) in enumerate(ops):
        fp = (key & ~0xFF) | collide if collide else key
        fp = fp or 1  # 0 marks an empty slot: fingerprints never are
        values = tuple(value ^ (i * n) for i in range(width))  # distinct, within 64 bits
        table.put(fp, values)
        reference[fp] = values
        assert len(table) == len(reference)
    assert dict(table.items()) == reference
    for fp, values in reference.items():
        assert table.get(fp) == values
        assert fp in table
    assert len(table) <= table.limit <= table.capacity * 2 / 3
    if bound is not None:
        assert table.capacity <= bound
