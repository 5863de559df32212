"""Property-based contract test: schemathesis generates requests for every operation of
`openapi.yaml` (valid and invalid ones) and sends them through the local cloud's gateway, exactly
as clients reach the functions in production. Each response must not be a server error and must
conform to the document: documented status, content type, headers and body schema.

Bounded and reproducible: at most `MAX_EXAMPLES` generated cases per operation in the fuzzing
phase (plus the explicit examples and the coverage phase's boundary cases), derandomized,
no example database, no deadline.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.e2e

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
MAX_EXAMPLES = 40
REQUEST_TIMEOUT_S = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

CONFIG = schemathesis.Config.from_dict({
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
})
schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)


_callers = itertools.count(1)


@schema.parametrize()
def test_api_conforms_to_openapi(case: schemathesis.Case[Any], stack: dict[str, Any]) -> None:
    # Each case comes from its own client address, so the per-caller rate limit (which would
    # otherwise answer most cases with 429 from one loopback address) lets them reach handlers.
    n = next(_callers)
    caller = {"X-Forwarded-For": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}
    case.call_and_validate(base_url=stack["gateway_url"], checks=CHECKS,
                           timeout=REQUEST_TIMEOUT_S, headers=caller)
