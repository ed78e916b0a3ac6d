"""The simulator's batch endpoints: create a batch (its items processed one by one after the
batch latency, on the simulator's event queue), list batches, read one and its items."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from connector.simulator.batches import BATCH_STATUSES, Batch, ItemResult, new_batch
from connector.simulator.messages import OBJECT_ID, Brand, Request, Response, json_body
from connector.simulator.problems import FieldError, ProblemError, problem_body, validation_error
from connector.simulator.validation import validate_contact

if TYPE_CHECKING:
    from connector.simulator.app import Simulator

_TRANSIENT_ITEM_CODES = (503, 429, 408)


class BatchesApi:
    """`POST /batches`, `GET /batches`, `GET /batches/{id}`, `GET /batches/{id}/items`."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def post(self, brand: Brand, request: Request, params: list[str]) -> Response:
        body = json_body(request)
        _validate_batch(body)
        now = self._sim.clock.now()
        batch = new_batch(
            body, now, now + self._sim.config.scaled(self._sim.config.batch_latency_s)
        )
        brand.batches[batch.id] = batch
        step = self._sim.config.scaled(self._sim.config.item_latency_s)
        for index in range(len(batch.items)):
            due = batch.start_at + step * (index + 1)
            self._sim.schedule(due, _bind_item(self._process_item, brand, batch, index))
        return Response(201, {"batchID": batch.id, "totalCount": len(batch.items)})

    def _process_item(self, brand: Brand, batch: Batch, index: int, at: float) -> None:
        if batch.ended_at is not None:
            return  # the batch was stopped; its remaining items are never processed
        item, item_id = batch.items[index], batch.item_ids[index]
        result = self._item_result(brand, batch, item, item_id, at)
        batch.results.append(result)
        if result.code >= 300:
            batch.errors_count += 1
        if batch.errors_count > self._sim.config.stop_after_item_errors:
            batch.stopped, batch.ended_at = True, at
        elif len(batch.results) == len(batch.items):
            batch.ended_at = at

    def _item_result(
        self, brand: Brand, batch: Batch, item: Any, item_id: str, at: float
    ) -> ItemResult:
        rate = self._sim.config.faults.item_error_rate
        if rate and self._sim.rng.random() < rate:
            code = self._sim.rng.choice(_TRANSIENT_ITEM_CODES)
            return ItemResult(
                item_id, item, code, problem_body(ProblemError(code, "Simulated item failure"))
            )
        if batch.endpoint != "contacts":
            # Assumed: other endpoints are accepted as they are; the simulator models contacts.
            return ItemResult(item_id, item, 200, {})
        errors = validate_contact(item, require_identifier=True)
        if errors:
            return ItemResult(item_id, item, 400, problem_body(validation_error(errors)))
        if _emails_of(item).intersection(self._sim.config.faults.refused_emails):
            refused = ProblemError(400, "Contact refused (simulated)")
            return ItemResult(item_id, item, 400, problem_body(refused))
        try:
            contact, created = brand.contacts.upsert(item, at)
        except ProblemError as exc:
            return ItemResult(item_id, item, exc.status, problem_body(exc))
        return ItemResult(item_id, item, 201 if created else 200, None, contact.id)

    def list_batches(self, brand: Brand, request: Request, params: list[str]) -> Response:
        query, now = request.query, self._sim.clock.now()
        errors = _list_batches_errors(query)
        if errors:
            raise validation_error(errors)
        offset, limit = int(query.get("offset", "0")), int(query.get("limit", "100"))
        matching = (
            b
            for b in reversed(brand.batches.values())  # newest first (assumed)
            if b.endpoint == query["endpoint"] and query.get("status") in (None, b.status(now))
        )
        # Only as many as the page needs, and one more to know whether there is a next page.
        batches = list(itertools.islice(matching, offset + limit + 1))
        page = batches[offset : offset + limit]
        paging: dict[str, Any] = {"offset": offset, "limit": limit}
        if offset + limit < len(batches):
            paging["next"] = self._batches_url(query, offset + limit, limit)
        if offset > 0:
            paging["previous"] = self._batches_url(query, max(0, offset - limit), limit)
        return Response(200, {"batches": [b.summary(now) for b in page], "paging": paging})

    def _batches_url(self, query: dict[str, str], offset: int, limit: int) -> str:
        args = {**query, "offset": str(offset), "limit": str(limit)}
        return f"{self._sim.base_url}/batches?{urlencode(args)}"

    def get(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return Response(200, self._batch(brand, params[0]).summary(self._sim.clock.now()))

    def items(self, brand: Brand, request: Request, params: list[str]) -> Response:
        batch = self._batch(brand, params[0])
        body = batch.summary(self._sim.clock.now())
        rendered = [self._render_item(brand, r) for r in batch.results]
        body["responses"] = [r for r in rendered if r["responseCode"] < 300]
        body["errors"] = [r for r in rendered if r["responseCode"] >= 300]
        return Response(200, body)

    @staticmethod
    def _render_item(brand: Brand, result: ItemResult) -> dict[str, Any]:
        response = result.response
        if response is None and result.contact_id is not None:
            # Rendered when read (assumed equivalent): the contact as it is now.
            response = brand.contacts.by_id[result.contact_id].render()
        return {
            "itemID": result.item_id,
            "request": result.request,
            "responseCode": result.code,
            "response": response,
            "status": "finished",
        }

    @staticmethod
    def _batch(brand: Brand, batch_id: str) -> Batch:
        if not OBJECT_ID.match(batch_id):
            raise validation_error(
                [FieldError("batchID", "invalid_format", "Must be a 24-character hex id")]
            )
        batch = brand.batches.get(batch_id)
        if batch is None:
            raise ProblemError(404, "Batch not found")
        return batch


def _bind_item(
    fn: Callable[[Brand, Batch, int, float], None], brand: Brand, batch: Batch, index: int
) -> Callable[[float], None]:
    return lambda at: fn(brand, batch, index, at)


def _validate_batch(body: Any) -> None:
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        raise validation_error([FieldError("body", "invalid_type", "Must be a JSON object")])
    if body.get("method") not in ("POST", "PUT"):
        errors.append(FieldError("method", "invalid_value", "Must be one of: POST, PUT"))
    if body.get("endpoint") not in ("products", "contacts", "events", "categories"):
        errors.append(
            FieldError(
                "endpoint",
                "invalid_value",
                "Must be one of: products, contacts, events, categories",
            )
        )
    elif body.get("endpoint") == "contacts" and body.get("method") == "PUT":
        errors.append(FieldError("method", "invalid_value", "Contacts support POST batches only"))
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        errors.append(FieldError("items", "invalid_value", "Must be an array of 1 to 100 items"))
    if errors:
        raise validation_error(errors)


def _list_batches_errors(query: dict[str, str]) -> list[FieldError]:
    errors: list[FieldError] = []
    if query.get("endpoint") not in ("products", "contacts", "events"):
        errors.append(
            FieldError("endpoint", "required", "endpoint is required: products, contacts or events")
        )
    if "status" in query and query["status"] not in BATCH_STATUSES:
        errors.append(
            FieldError("status", "invalid_value", "Must be one of: " + ", ".join(BATCH_STATUSES))
        )
    offset, limit = query.get("offset", "0"), query.get("limit", "100")
    if not offset.isdigit():
        errors.append(FieldError("offset", "invalid_value", "Must be 0 or more"))
    if not limit.isdigit() or not 1 <= int(limit) <= 250:
        errors.append(FieldError("limit", "out_of_range", "Must be between 1 and 250"))
    return errors


def _emails_of(item: dict[str, Any]) -> set[str]:
    return {i["id"] for i in item["identifiers"] if i.get("type") == "email"}
