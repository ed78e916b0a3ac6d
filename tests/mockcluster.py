"""librdkafka's mock cluster through ctypes on the library bundled in confluent-kafka: topics with
a chosen partition count, and brokers that go down and come back with their data (tansu loses
everything on a restart). Only for tests; confluent-kafka is pinned, and `test_mock_cluster_smoke`
checks the wrapper still works."""

from __future__ import annotations

import ctypes
import glob
import os
from types import TracebackType

import confluent_kafka

_LIB_GLOBS = ("confluent_kafka.libs/librdkafka*.so*", "confluent_kafka/.dylibs/librdkafka*")


def _library() -> ctypes.CDLL:
    site = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    for pattern in _LIB_GLOBS:
        found = glob.glob(os.path.join(site, pattern))
        if found:
            lib = ctypes.CDLL(found[0])
            break
    else:
        raise RuntimeError("the librdkafka bundled with confluent-kafka was not found")
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures = {
        "rd_kafka_conf_new": (p, []),
        "rd_kafka_new": (p, [i, p, s, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [p]),
        "rd_kafka_mock_cluster_new": (p, [p, i]),
        "rd_kafka_mock_cluster_destroy": (None, [p]),
        "rd_kafka_mock_cluster_bootstraps": (s, [p]),
        "rd_kafka_mock_topic_create": (i, [p, s, i, i]),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": (None, [p, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_down": (i, [p, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_up": (i, [p, ctypes.c_int32]),
        "rd_kafka_mock_topic_set_error": (None, [p, s, i]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class MockCluster:
    """One mock broker (id 1) in this process."""

    def __init__(self) -> None:
        self._lib = _library()
        errstr = ctypes.create_string_buffer(512)
        self._handle = self._lib.rd_kafka_new(0, self._lib.rd_kafka_conf_new(), errstr, 512)
        if not self._handle:
            raise RuntimeError(errstr.value.decode())
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._handle, 1)
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, 0)
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, name: str, partitions: int) -> None:
        err = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
        if err:
            raise RuntimeError(f"mock topic_create failed with error {err}")

    def refuse_topic(self, name: str, error_code: int) -> None:
        """Answer every metadata request about the topic with this Kafka error code (e.g. 29,
        TOPIC_AUTHORIZATION_FAILED: a topic this client may not write)."""
        self._lib.rd_kafka_mock_topic_set_error(self._cluster, name.encode(), error_code)

    def broker_down(self) -> None:
        self._lib.rd_kafka_mock_broker_set_down(self._cluster, 1)

    def broker_up(self) -> None:
        self._lib.rd_kafka_mock_broker_set_up(self._cluster, 1)

    def close(self) -> None:
        self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
        self._lib.rd_kafka_destroy(self._handle)

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
