"""`openapi.yaml` and the code agree: every route of every function in the manifest is documented
(and nothing else is), validated bodies have the schema the router enforces, and every operation
documents problem+json errors and the trace headers.

Path normalization: a route `R` of function `F` is served at `/F` + `R` (production URL and local
gateway alike). The router ignores trailing slashes (`request.path.rstrip("/")`), so both sides are
compared with trailing slashes stripped: the root route `/` of `outbox_relay` is the operation
`/outbox_relay`. The document spells that root route `/outbox_relay/` (the production URL form);
a separate test pins that spelling and forbids two document paths with the same canonical form.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs  # schemathesis's own JSON Schema engine (a dependency of it, not an addition)
import pytest
import schemathesis
import yaml
from schemathesis.core.result import Ok

# Plain `pytest` (no rootdir pythonpath config) does not put the repo root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.topology import TOPOLOGY, Trigger
from shared import errors
from shared.http import Route, Router

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROBLEM_JSON = errors.PROBLEM_JSON
TRACE_HEADERS = ("X-Trace-Id", "X-Request-Id", "traceparent")
# JSON Schema keywords that only annotate; the document may add them to a route's body schema.
ANNOTATIONS = frozenset({"title", "description", "examples", "example", "deprecated",
                         "readOnly", "writeOnly", "$comment"})

OperationKey = tuple[str, str]  # (METHOD, canonical path)


# --- loading -------------------------------------------------------------------------------------


def canonical(path: str) -> str:
    """The path as the router matches it: trailing slashes do not matter."""
    return path.rstrip("/") or "/"


def _load_function(name: str) -> Router:
    path = REPO / "functions" / name / "main.py"
    module_name = f"_openapi_contract_{name}_main"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    app = getattr(module, "app", None)
    assert isinstance(app, Router), f"functions/{name}/main.py must expose `app`, a shared Router"
    return app


@pytest.fixture(scope="module")
def routers() -> Iterator[dict[str, Router]]:
    """Each manifest function's router, imported from its file as the runtime does."""
    import shared.bootstrap
    from shared.config import get_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APP_ENV", "test")
        mp.syspath_prepend(str(REPO))
        # `init()` at import would replace the root logger's handlers for the whole test session.
        mp.setattr(shared.bootstrap, "setup_logging", lambda *_args, **_kwargs: None)
        get_settings.cache_clear()
        try:
            yield {f.name: _load_function(f.name) for f in TOPOLOGY.functions}
        finally:
            get_settings.cache_clear()


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    with SPEC_PATH.open(encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def code_operations(routers: dict[str, Router]) -> dict[OperationKey, tuple[str, Route]]:
    operations: dict[OperationKey, tuple[str, Route]] = {}
    for name, router in routers.items():
        for route in router.routes:
            key = (route.method, canonical(f"/{name}{route.path}"))
            assert key not in operations, f"{name} declares {key} twice"
            operations[key] = (name, route)
    return operations


@pytest.fixture(scope="module")
def spec_operations(spec: dict[str, Any]) -> dict[OperationKey, tuple[str, dict[str, Any]]]:
    """(METHOD, canonical path) -> (path as written, the operation with its $refs resolved)."""
    operations: dict[OperationKey, tuple[str, dict[str, Any]]] = {}
    for path, item in spec.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                key = (method.upper(), canonical(path))
                assert key not in operations, f"{key} is documented twice"
                operations[key] = (path, deref(item[method], spec))
    return operations


def pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def deref(node: Any, document: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """`node` with every local `$ref` replaced by its target (siblings of `$ref` win)."""
    if isinstance(node, list):
        return [deref(item, document, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        assert ref not in seen, f"recursive $ref {ref} is not supported here"
        target = deref(pointer(document, ref), document, (*seen, ref))
        siblings = {k: deref(v, document, seen) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings} if isinstance(target, dict) else target
    return {key: deref(value, document, seen) for key, value in node.items()}


def strip_annotations(schema: Any) -> Any:
    """A JSON schema without annotation keywords, at schema positions only (never inside
    `properties` names or `enum`/`const` values)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key in ("properties", "patternProperties", "$defs"):
            out[key] = {name: strip_annotations(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "contains", "propertyNames"):
            out[key] = strip_annotations(value)
        elif key in ("allOf", "anyOf", "oneOf", "prefixItems"):
            out[key] = [strip_annotations(sub) for sub in value]
        else:
            out[key] = value
    return out


def _responses(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(status): response for status, response in operation.get("responses", {}).items()}


# --- the document itself -------------------------------------------------------------------------


def test_document_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    assert str(spec.get("openapi", "")).startswith("3.1."), "the document is OpenAPI 3.1"
    loaded = schemathesis.openapi.from_path(SPEC_PATH)
    loaded.validate()  # the official OpenAPI 3.1 meta-schema; raises on the first violation
    results = list(loaded.get_all_operations())
    problems = [str(result.err()) for result in results if not isinstance(result, Ok)]
    assert not problems, problems
    assert results, "the document has operations"


def test_every_reference_resolves_and_every_schema_is_valid_json_schema(
    spec: dict[str, Any],
) -> None:
    def walk(node: Any, where: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            yield where, node
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}/{i}")

    for where, node in walk(spec, "#"):
        if isinstance(node.get("$ref"), str):
            pointer(spec, node["$ref"])
        is_schema = where.endswith("/schema") or (
            where.startswith("#/components/schemas/") and where.count("/") == 3)
        if is_schema:
            jsonschema_rs.meta.validate(deref(node, spec))  # Draft 2020-12, the 3.1 dialect


def test_operation_ids_are_unique(spec_operations: dict[OperationKey, Any]) -> None:
    ids = [op.get("operationId") for _, op in spec_operations.values()]
    assert all(ids), "every operation has an operationId"
    assert len(ids) == len(set(ids)), sorted(ids)


def test_servers_are_production_and_the_local_gateway(spec: dict[str, Any]) -> None:
    urls = [server["url"] for server in spec["servers"]]
    assert "https://{region}-{project}.cloudfunctions.net" in urls
    assert "http://127.0.0.1:{port}" in urls
    for server in spec["servers"]:
        names = set(re.findall(r"\{(\w+)\}", server["url"]))
        assert names == set(server.get("variables", {})), server["url"]


# --- document vs code ----------------------------------------------------------------------------


def test_every_route_is_documented_and_nothing_else(
    code_operations: dict[OperationKey, Any], spec_operations: dict[OperationKey, Any],
) -> None:
    in_code, in_spec = set(code_operations), set(spec_operations)
    assert in_code - in_spec == set(), "routes missing from openapi.yaml"
    assert in_spec - in_code == set(), "operations in openapi.yaml that no function serves"


def test_paths_name_their_function(spec: dict[str, Any]) -> None:
    names = {f.name for f in TOPOLOGY.functions}
    assert [tag["name"] for tag in spec.get("tags", [])] == [f.name for f in TOPOLOGY.functions]
    canonical_paths: set[str] = set()
    for path, item in spec["paths"].items():
        function = path.split("/")[1]
        assert function in names, f"{path} does not start with a manifest function's name"
        assert item.get("x-function") == function, f"{path}: x-function must be {function}"
        if canonical(path) == f"/{function}":
            assert path == f"/{function}/", f"spell the root route of {function} as /{function}/"
        assert canonical(path) not in canonical_paths, f"{path} differs only by a trailing slash"
        canonical_paths.add(canonical(path))
        for method in HTTP_METHODS:
            if method in item:
                assert item[method].get("tags") == [function], f"{method.upper()} {path} tags"


def test_summaries_match_the_routes(
    code_operations: dict[OperationKey, tuple[str, Route]],
    spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    for key, (_, route) in code_operations.items():
        if route.summary and key in spec_operations:
            assert spec_operations[key][1].get("summary") == route.summary, key


def test_request_bodies_are_the_schemas_the_router_enforces(
    code_operations: dict[OperationKey, tuple[str, Route]],
    spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    for key, (_, route) in code_operations.items():
        if route.body is None or key not in spec_operations:
            continue
        body = spec_operations[key][1].get("requestBody")
        assert body is not None, f"{key} validates a body but documents none"
        assert body.get("required") is True, f"{key}: the body is required"
        content = body.get("content", {})
        assert "application/json" in content, f"{key}: the body is application/json"
        documented = strip_annotations(content["application/json"]["schema"])
        assert documented == route.body.json_schema(), key
        # The router answers 413, 415 and 422 for bodies it cannot accept.
        assert {"413", "415", "422"} <= set(_responses(spec_operations[key][1])), key


def test_routes_with_a_role_require_credentials(
    code_operations: dict[OperationKey, tuple[str, Route]],
    spec: dict[str, Any],
    spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    for key, (_, route) in code_operations.items():
        if route.role is None or key not in spec_operations:
            continue
        operation = spec_operations[key][1]
        security = operation.get("security", spec.get("security", []))
        assert security and all(requirement for requirement in security), (
            f"{key} needs role {route.role!r}: its security must not be optional")
        assert {"401", "403"} <= set(_responses(operation)), key


def test_push_consumers_document_the_push_contract(
    spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    for function in TOPOLOGY.functions:
        if function.trigger is Trigger.HTTP:
            continue
        key = ("POST", f"/{function.name}")
        assert key in spec_operations, f"{function.name} is a push consumer: POST /"
        operation = spec_operations[key][1]
        assert operation.get("security") == [{}, {"pubsubOidc": []}], key
        responses = _responses(operation)
        assert {"204", "400", "422"} <= set(responses), key
        assert "content" not in responses["204"], key
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["message"], key


def test_health_routes_answer_the_health_schema(
    spec: dict[str, Any], routers: dict[str, Router],
    spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    health = jsonschema_rs.validator_for(deref(spec["components"]["schemas"]["Health"], spec))
    for name, router in routers.items():
        operation = spec_operations[("GET", f"/{name}/healthz")][1]
        schema = _responses(operation)["200"]["content"]["application/json"]["schema"]
        assert schema == deref(spec["components"]["schemas"]["Health"], spec)
        health.validate(router._health(None))  # type: ignore[arg-type]


# --- errors and headers --------------------------------------------------------------------------


def test_every_operation_documents_problem_errors(
    spec: dict[str, Any], spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    problem = deref(spec["components"]["schemas"]["Problem"], spec)
    for key, (_, operation) in spec_operations.items():
        responses = _responses(operation)
        errors_documented = [s for s in responses if s[0] in "45"]
        assert errors_documented, f"{key} documents no error response"
        assert "500" in responses, f"{key}: every operation can fail with 500"
        for status in errors_documented:
            content = responses[status].get("content", {})
            assert list(content) == [PROBLEM_JSON], f"{key} {status} must be problem+json"
            assert content[PROBLEM_JSON]["schema"] == problem, f"{key} {status}"
        if "405" in responses:
            assert "Allow" in responses["405"].get("headers", {}), f"{key} 405 names Allow"


def test_every_response_documents_the_trace_headers(
    spec_operations: dict[OperationKey, tuple[str, dict[str, Any]]],
) -> None:
    for key, (_, operation) in spec_operations.items():
        for status, response in _responses(operation).items():
            headers = {name.lower(): h for name, h in response.get("headers", {}).items()}
            for name in TRACE_HEADERS:
                assert name.lower() in headers, f"{key} {status} lacks {name}"
                assert headers[name.lower()].get("required") is True, f"{key} {status} {name}"


def test_problem_schema_describes_what_the_code_sends(spec: dict[str, Any]) -> None:
    problem = jsonschema_rs.validator_for(deref(spec["components"]["schemas"]["Problem"], spec))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    samples = [cls() for cls in _error_classes()]
    samples.append(errors.MethodNotAllowed("GET is not allowed here", headers={"Allow": "POST"}))
    try:
        from shared.validation import Field, Schema

        Schema({"name": Field("string", required=True)}).validate({"other": 1})
    except errors.ValidationFailed as exc:
        samples.append(exc)
    for error in samples:
        problem.validate(errors.problem(error, trace_id, "/healthz"))
        problem.validate(errors.problem(error, None))
    assert any("errors" in errors.problem(e, trace_id) for e in samples)


def _error_classes() -> list[type[errors.AppError]]:
    found: list[type[errors.AppError]] = [errors.AppError]
    pending = [errors.AppError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


def test_trace_header_patterns_match_what_the_code_sends(spec: dict[str, Any]) -> None:
    from shared import context

    headers = spec["components"]["headers"]
    ctx = context.from_headers({})
    continued = context.from_headers({"traceparent": ctx.traceparent, "X-Request-Id": "req-1"})
    for trace in (ctx, continued):
        for name, value in (("X-Trace-Id", trace.trace_id), ("X-Request-Id", trace.request_id),
                            ("traceparent", trace.traceparent)):
            jsonschema_rs.validator_for(headers[name]["schema"]).validate(value)
