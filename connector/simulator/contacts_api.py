"""The simulator's contact endpoints: list, create or update, patch, get."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.simulator.contacts import Contact, check_list_filters
from connector.simulator.messages import OBJECT_ID, Brand, Request, Response, TagOp, json_body
from connector.simulator.problems import FieldError, ProblemError, validation_error
from connector.simulator.validation import validate_contact, validate_tag_call

if TYPE_CHECKING:
    from connector.simulator.app import Simulator


class ContactsApi:
    """`GET/POST/PATCH /contacts`, `GET/PATCH /contacts/{id}` and the tag calls
    `POST/DELETE /contacts/tags` (queued, applied after the tag delay)."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def list_contacts(self, brand: Brand, request: Request, params: list[str]) -> Response:
        check_list_filters(request.query)
        return Response(200, brand.contacts.list(request.query))

    def post(self, brand: Brand, request: Request, params: list[str]) -> Response:
        body = json_body(request)
        errors = validate_contact(body, require_identifier=True)
        if errors:
            raise validation_error(errors)
        contact, created = brand.contacts.upsert(body, self._sim.clock.now())
        return Response(201 if created else 200, contact.render())

    def patch_by_email(self, brand: Brand, request: Request, params: list[str]) -> Response:
        email = request.query.get("email")
        if not email:
            raise validation_error([FieldError("email", "required", "Query parameter is required")])
        return self._patch(brand, brand.contacts.find("email", email), request)

    def patch_by_id(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return self._patch(brand, self._contact_by_id(brand, params[0]), request)

    def _patch(self, brand: Brand, contact: Contact | None, request: Request) -> Response:
        body = json_body(request)
        errors = validate_contact(body, require_identifier=False)
        if errors:
            raise validation_error(errors)
        if contact is None:
            raise ProblemError(404, "Contact not found")
        brand.contacts.patch(contact, body, self._sim.clock.now())
        return Response(200, contact.render())

    def get(self, brand: Brand, request: Request, params: list[str]) -> Response:
        contact = self._contact_by_id(brand, params[0])
        if contact is None:
            raise ProblemError(404, "Contact not found")
        return Response(200, contact.render())

    @staticmethod
    def _contact_by_id(brand: Brand, contact_id: str) -> Contact | None:
        if not OBJECT_ID.match(contact_id):
            raise validation_error(
                [FieldError("id", "invalid_format", "Must be a 24-character hex id")]
            )
        return brand.contacts.by_id.get(contact_id)

    def add_tags(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return self._queue_tags(brand, request, add=True)

    def remove_tags(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return self._queue_tags(brand, request, add=False)

    def _queue_tags(self, brand: Brand, request: Request, *, add: bool) -> Response:
        body = json_body(request)
        errors = validate_tag_call(body)
        if errors:
            raise validation_error(errors)
        delay = self._sim.config.scaled(self._sim.config.tag_delay_s)
        if self._sim.config.faults.tag_reorder:
            # Queued operations overtake each other: each waits between 1 and 3 delays.
            delay *= 1.0 + 2.0 * self._sim.rng.random()
        op = TagOp(brand.name, add, body)
        self._sim.schedule(self._sim.clock.now() + delay, lambda at: self._apply_tags(op))
        return Response(202)

    def _apply_tags(self, op: TagOp) -> None:
        store = self._sim.brands[op.brand].contacts
        targets: dict[str, Contact] = {}
        for email in op.body.get("emails") or []:
            if (contact := store.find("email", email)) is None:
                self._sim.tag_emails_ignored += 1  # unknown emails are silently ignored
            else:
                targets[contact.id] = contact
        for phone in op.body.get("phones") or []:
            if (contact := store.find("phone", phone)) is not None:
                targets[contact.id] = contact
        for contact_id in op.body.get("contactIDs") or []:
            if (contact := store.by_id.get(contact_id)) is not None:
                targets[contact.id] = contact
        for contact in targets.values():
            store.retag(contact, op.body["tags"], op.add)
        self._sim.tag_ops_applied += 1
