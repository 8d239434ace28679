"""The OpenAPI document matches the edge: every API route documented, and schemathesis against a
live ``streamgate edge`` finds no 500 and no undocumented status (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import free_port, streamgate_env
from hypothesis import HealthCheck, settings
from support import terminate, wait_healthy

from streamgate.edge.openapi import SPEC


@pytest.fixture(scope="module")
def live_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``streamgate edge`` process for the module: sign-in optional, limits off (a 429 would
    hide the routes behind it from the fuzzer)."""
    root = tmp_path_factory.mktemp("openapi-edge")
    port = free_port()
    env = streamgate_env(root / "data", port, STREAMGATE__EDGE__RATE_LIMIT__ENABLED="false",
                         STREAMGATE__UPLOADS__MAX_SIZE="1MiB")
    env.pop("STREAMGATE_CONFIG", None)
    log = root / "edge.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamgate", "edge", "--workers", "1"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url + "/health", log, what="streamgate edge /health")
        yield url
    finally:
        terminate(proc)
        text = log.read_text()
        # A client's mistake is answered, never logged as the edge's own failure (issue 14).
        assert "Traceback" not in text and " ERROR " not in text, text[-4000:]


def test_the_document_is_served_and_names_every_api_route(live_edge: str) -> None:
    with urllib.request.urlopen(live_edge + "/api/v1/openapi.json", timeout=10) as r:
        served = json.load(r)
    assert served == SPEC and served["openapi"].startswith("3.1")
    from streamgate.common.config import config_from_tree
    from streamgate.edge.app import build_app

    app = build_app(config_from_tree({"server": {"host": "127.0.0.1"}}))
    # Not part of the public API: the web UI's own feeds, tus's X-HTTP-Method-Override shim and
    # OPTIONS of an upload (the collection's discovery answer again); HEAD of a GET is aiohttp's.
    internal = {("/api/v1/uploads/{upload_id}", "post"), ("/api/v1/uploads/{upload_id}", "options")}
    routes = {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
              if route.resource is not None and route.resource.canonical.startswith("/api/v1/")
              and not route.resource.canonical.startswith("/api/v1/web/")}
    gets = {path for path, method in routes if method == "get"}
    routes = {(p, m) for p, m in routes if not (m == "head" and p in gets)} - internal
    documented = {(path, method) for path, ops in SPEC["paths"].items() for method in ops}
    assert routes <= documented, routes - documented
    # tus 1.0 mandates 412 for a missing or unsupported Tus-Resumable: generic checks must accept it.
    for method in ("head", "patch", "delete"):
        assert "412" in SPEC["paths"]["/api/v1/uploads/{upload_id}"][method]["responses"]
    assert "412" in SPEC["paths"]["/api/v1/uploads"]["post"]["responses"]
    for ops in SPEC["paths"].values():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if int(status) >= 400 and op is not SPEC["paths"]["/api/v1/health"]["get"]:
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def _schema(mode: str):  # type: ignore[no-untyped-def]
    import schemathesis

    # tus bodies are raw bytes: serialised like application/octet-stream.
    schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
    loaded = schemathesis.openapi.from_dict(SPEC)
    # One mode per run (schemathesis 4 mixes both by default): each run's examples all count.
    loaded.config.generation.update(modes=[schemathesis.GenerationMode(mode)])
    return loaded


schema = _schema("positive")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schemathesis_finds_no_500_and_no_undocumented_status(case, live_edge: str) -> None:  # type: ignore[no-untyped-def]
    from schemathesis.specs.openapi.checks import status_code_conformance

    case.call_and_validate(base_url=live_edge, checks=[no_internal_error, status_code_conformance], timeout=30)


def _negative_schema():  # type: ignore[no-untyped-def]
    negative = _schema("negative")
    # No made-up extra headers or query keys: HTTP lets a server ignore what it does not know.
    negative.config.generation.update(allow_extra_parameters=False)
    # tus 1.0 answers a missing or wrong Tus-Resumable with 412, as the document says.
    rejection = negative.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "412"]
    return negative


negative_schema = _negative_schema()


# Negative data: values the document forbids (wrong types, out-of-range numbers, ids off the
# pattern, missing required headers, bodies of the wrong shape). 20 per operation, 15 operations:
# well under a minute on the 2-core machine.
@negative_schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schemathesis_negative_data_gets_documented_json_refusals(case, live_edge: str) -> None:  # type: ignore[no-untyped-def]
    from schemathesis.specs.openapi.checks import negative_data_rejection, status_code_conformance

    case.call_and_validate(base_url=live_edge, checks=[no_internal_error, status_code_conformance,
                                                       json_error_body, negative_data_rejection], timeout=30)


def json_error_body(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    """Every refusal is the edge's error shape (edge/errors.py), whatever the input."""
    if response.status_code < 400 or case.method.upper() == "HEAD" or case.path == "/api/v1/health":
        return  # HEAD has no body; readiness answers its own object with 503
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        f"{response.status_code} from {case.method} {case.path} is not JSON: {response.text[:300]}")
    body = json.loads(response.text)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), (
        f"{response.status_code} from {case.method} {case.path}: {response.text[:300]}")


def no_internal_error(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    """schemathesis's own not_a_server_error refuses every 5xx; a 503 without a farm (documented,
    with Retry-After) is the right answer here, a 500 never is."""
    assert response.status_code != 500, f"500 from {case.method} {case.path}: {response.text[:500]}"
