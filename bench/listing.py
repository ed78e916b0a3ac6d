"""The simulator's contact listing: CPU per page of `GET /contacts?tag=...` (250 a page) with
many contacts, first page and the pages after it, beside the cost of filtering and sorting every
contact for each page (what each page cost before listings were kept between pages).

    python -m bench.listing [--contacts 100000 1000000]

A `reconcile` pages through every tag of a segment: a page must cost O(page), not O(contacts).
"""

from __future__ import annotations

import argparse
import time

from connector.simulator.contacts import ContactStore, _matches

PAGE = 250
PAGES = 20


def _store(count: int) -> ContactStore:
    store = ContactStore()
    for i in range(count):
        body = {"identifiers": [{"type": "email", "id": f"c{i}@example.com"}], "tags": ["vip"]}
        store.upsert(body, float(i))
    return store


def _cpu(fn: object) -> float:
    start = time.process_time()
    fn()  # type: ignore[operator]
    return time.process_time() - start


def measure(count: int) -> dict[str, float]:
    store = _store(count)
    query = {"tag": "vip", "limit": str(PAGE)}
    cursor: list[str] = []

    def first() -> None:
        page = store.list(query)
        cursor.append(page["paging"]["cursors"]["after"])

    first_s = _cpu(first)

    def following() -> None:
        for _ in range(PAGES):
            page = store.list({**query, "after": cursor[-1]})
            cursor.append(page["paging"]["cursors"]["after"])

    next_s = _cpu(following) / PAGES

    def whole() -> None:  # filter and sort every contact, as every page did before
        contacts = [c for c in store.by_id.values() if _matches(c, query)]
        contacts.sort(key=lambda c: (c.created_at, c.seq), reverse=True)

    return {"first": first_s, "next": next_s, "unkept": _cpu(whole)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    print(f"{'contacts':>10} {'first page':>12} {'next pages':>12} {'unkept page':>12}  ratio")
    for count in args.contacts:
        m = measure(count)
        ratio = m["unkept"] / m["next"] if m["next"] else float("inf")
        print(
            f"{count:>10,} {m['first'] * 1000:>10.1f}ms {m['next'] * 1000:>10.2f}ms "
            f"{m['unkept'] * 1000:>10.1f}ms  {ratio:,.0f}x"
        )


if __name__ == "__main__":
    main()
