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
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


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


def _schema():  # type: ignore[no-untyped-def]
    import schemathesis

    # tus bodies are raw bytes: serialised like application/octet-stream.
    schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
    return schemathesis.openapi.from_dict(SPEC)


schema = _schema()


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schemathesis_finds_no_500_and_no_undocumented_status(case, live_edge: str) -> None:  # type: ignore[no-untyped-def]
    from schemathesis.specs.openapi.checks import status_code_conformance

    case.call_and_validate(base_url=live_edge, checks=[no_internal_error, status_code_conformance], timeout=30)


def no_internal_error(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    """schemathesis's own not_a_server_error refuses every 5xx; a 503 without a farm (documented,
    with Retry-After) is the right answer here, a 500 never is."""
    assert response.status_code != 500, f"500 from {case.method} {case.path}: {response.text[:500]}"
