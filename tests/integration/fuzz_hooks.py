"""Schemathesis hooks for tests/test_fuzz_openapi.py (loaded through ``SCHEMATHESIS_HOOKS``): OTLP
answers to protobuf requests are protobuf, so decode them into their JSON mapping — the form the
document's schema describes — and check them like the JSON answers."""

from __future__ import annotations

from typing import Any

import schemathesis
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse


@schemathesis.deserializer("application/x-protobuf")
def otlp_protobuf(_: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    """200: an ExportTraceServiceResponse; any other status: a google.rpc.Status."""
    message = ExportTraceServiceResponse() if response.status_code == 200 else Status()
    message.ParseFromString(response.content)
    return json_format.MessageToDict(message)
