"""A Confluent-compatible Schema Registry for tests: subjects, versions and ids, in memory, with
schema types (AVRO, JSON, PROTOBUF) and references. `available = False` makes it answer 503, like
a registry that is down; `requests` counts what it was asked."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer

    def do_GET(self) -> None:
        registry = self.server
        registry.requests.append(self.path)
        if not registry.available:
            return self._send(503, {"error_code": 50301, "message": "unavailable"})
        if match := re.fullmatch(r"/schemas/ids/(\d+)", self.path):
            return self._by_id(int(match.group(1)))
        if match := re.fullmatch(r"/subjects/([^/]+)/versions/(\d+)", self.path):
            return self._by_version(match.group(1), int(match.group(2)))
        if self.path == "/subjects":
            return self._send(200, sorted(registry.subjects))
        if match := re.fullmatch(r"/subjects/([^/]+)/versions", self.path):
            return self._send(
                200, list(range(1, len(registry.subjects.get(match.group(1), [])) + 1))
            )
        return self._send(404, {"error_code": 404, "message": "not found"})

    def _by_id(self, schema_id: int) -> None:
        if schema_id not in self.server.schemas:
            return self._send(404, {"error_code": 40403, "message": "Schema not found"})
        return self._send(200, self.server.answer(schema_id))

    def _by_version(self, subject: str, version: int) -> None:
        ids = self.server.subjects.get(subject, [])
        if not 1 <= version <= len(ids):
            return self._send(404, {"error_code": 40402, "message": "Version not found"})
        answer = self.server.answer(ids[version - 1])
        return self._send(200, {"subject": subject, "version": version, **answer})

    def do_POST(self) -> None:
        match = re.fullmatch(r"/subjects/([^/]+)/versions", self.path)
        if match is None:
            return self._send(404, {"error_code": 404, "message": "not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        schema_id = self.server.register(
            match.group(1), body["schema"], body.get("schemaType"), body.get("references")
        )
        return self._send(200, {"id": schema_id})

    def _send(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas: dict[int, str] = {}
        self.types: dict[int, str] = {}
        self.references: dict[int, list[dict[str, Any]]] = {}
        self.subjects: dict[str, list[int]] = {}
        self.available = True
        self.requests: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._lock = threading.Lock()

    def register(
        self,
        subject: str,
        schema: str,
        schema_type: str | None = None,
        references: list[dict[str, Any]] | None = None,
    ) -> int:
        """The schema's id (the same text and type keep their id, as in the real registry)."""
        with self._lock:
            known = {
                (text, self.types.get(schema_id)): schema_id
                for schema_id, text in self.schemas.items()
            }
            schema_id = known.get((schema, schema_type), len(self.schemas) + 1)
            self.schemas[schema_id] = schema
            if schema_type is not None:
                self.types[schema_id] = schema_type
            if references:
                self.references[schema_id] = references
            self.subjects.setdefault(subject, []).append(schema_id)
            return schema_id

    def answer(self, schema_id: int) -> dict[str, Any]:
        """What `/schemas/ids/{id}` says: the type and references only when there are some."""
        body: dict[str, Any] = {"schema": self.schemas[schema_id]}
        if schema_id in self.types:
            body["schemaType"] = self.types[schema_id]
        if schema_id in self.references:
            body["references"] = self.references[schema_id]
        return body

    def start(self) -> RegistryServer:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
