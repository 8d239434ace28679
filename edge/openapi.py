"""The public API as an OpenAPI 3.1 document, served at ``/api/v1/openapi.json``.

Built from one dict so the routes, their statuses and the error shape are stated in one place;
tests/edge/test_openapi.py runs schemathesis against a live edge to keep it true. Every error is
``{"error", "detail"}`` (edge/errors.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from streamgate.edge.access.ratelimit import enforce

_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad request: a malformed header, query or body",
    401: "Sign in (a missing or invalid bearer token)", 403: "Another wallet's resource",
    404: "No such resource", 405: "Method not allowed", 409: "Upload-Offset does not match the stored offset",
    410: "The upload was terminated or expired",
    412: "Tus-Resumable missing or not 1.0.0 (tus 1.0: the server MUST answer 412 Precondition Failed)",
    413: "Larger than uploads.max_size, or past Upload-Length",
    415: "Content-Type must be application/offset+octet-stream", 423: "Another request is writing this upload",
    429: "Rate limited: see Retry-After", 460: "Upload-Checksum mismatch (tus checksum extension)",
    503: "A dependency (catalog, farm) is unavailable: see Retry-After",
    507: "The data dir is full",
}

_ERROR = {"type": "object", "required": ["error", "detail"],
          "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
_VIDEO_ID = {"name": "video_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_TUS_RESUMABLE = {"name": "Tus-Resumable", "in": "header", "required": True,
                  "schema": {"type": "string", "enum": ["1.0.0"]}}
_NULLABLE_STRING = {"type": ["string", "null"]}
_VIDEO = {
    "type": "object",
    "required": ["id", "title", "status", "progress", "hls_url", "dash_url", "created_at"],
    "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "filename": {"type": "string"},
        "status": {"enum": ["uploading", "queued", "transcoding", "ready", "failed"]},
        "progress": {"type": "number"}, "eta_s": {"type": ["number", "null"]},
        "error": _NULLABLE_STRING, "duration": {"type": ["number", "null"]},
        "renditions": {"type": "array", "items": {"type": "object"}},
        "hls_url": _NULLABLE_STRING, "dash_url": _NULLABLE_STRING, "poster_url": _NULLABLE_STRING,
        "visibility": {"enum": ["public", "private"]}, "owner": _NULLABLE_STRING,
        "priority": {"type": "integer"}, "size": {"type": ["integer", "null"]},
        "sha256": _NULLABLE_STRING, "created_at": {"type": "string"},
    },
}
_SIGNED = {"type": "object", "required": ["hls_url", "dash_url", "token", "expires_at"],
           "properties": {k: {"type": "string"} for k in ("hls_url", "dash_url", "token", "expires_at")}}


def _responses(ok: dict[int, Any], *errors: int) -> dict[str, Any]:
    """``ok``: status -> body schema (None: no body); ``errors``: statuses answered with the error shape.
    Every route may answer 400 (aiohttp refuses a malformed request) and 429."""
    out: dict[str, Any] = {}
    for status, schema in ok.items():
        entry: dict[str, Any] = {"description": _REASONS[status]}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": schema}}
        out[str(status)] = entry
    for status in sorted({400, 429, *errors}):
        out[str(status)] = {"description": _REASONS[status],
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def _op(summary: str, responses: dict[str, Any], *, parameters: list[Any] | None = None,
        body: dict[str, Any] | None = None, auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, "parameters": parameters or []}
    if body is not None:
        op["requestBody"] = body
    if auth:
        op["security"] = [{}, {"bearer": []}]  # optional: writes need it when auth.required
    return op


_TUS_WRITE = (401, 403, 404, 409, 410, 412, 413, 415, 423, 460, 503, 507)

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "StreamGate edge API", "version": "1",
             "description": "Uploads over tus 1.0.0, the video catalog, Sign-In with Ethereum, "
                            "signed playback URLs. Errors are JSON {\"error\", \"detail\"}."},
    "components": {
        "schemas": {"Error": _ERROR, "Video": _VIDEO},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "token from POST /api/v1/auth/verify"}},
    },
    "paths": {
        "/api/v1/videos": {"get": _op("Public videos newest first; mine=1: the caller's own", _responses(
            {200: {"type": "object", "required": ["videos", "total", "limit", "offset", "next"],
                   "properties": {"videos": {"type": "array", "items": {"$ref": "#/components/schemas/Video"}},
                                  "total": {"type": "integer"}, "limit": {"type": "integer"},
                                  "offset": {"type": "integer"}, "next": _NULLABLE_STRING}}}, 401),
            parameters=[
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "mine", "in": "query",
                 "schema": {"type": "string", "enum": ["1", "true", "yes", "0", "false", "no"]}},
                {"name": "after", "in": "query", "schema": {"type": "string", "pattern": "^[0-9.e+-]+_[0-9a-f]{32}$"},
                 "description": "the cursor of a next link: the last video of the previous page"},
            ])},
        "/api/v1/videos/{video_id}": {
            "get": _op("One video", _responses({200: {"$ref": "#/components/schemas/Video"}}, 401, 403, 404),
                       parameters=[_VIDEO_ID]),
            "delete": _op("Delete a video: job cancelled, media, source and partial upload removed",
                          _responses({204: None}, 401, 403, 404), parameters=[_VIDEO_ID]),
        },
        "/api/v1/videos/{video_id}/playback-url": {"post": _op(
            "A signed, expiring /s/{token}/videos/{id}/ URL", _responses({200: _SIGNED}, 401, 403, 404),
            parameters=[_VIDEO_ID, {"name": "ttl", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1}}])},
        "/api/v1/auth/nonce": {"get": _op("A single-use sign-in nonce", _responses(
            {200: {"type": "object", "required": ["nonce"], "properties": {"nonce": {"type": "string"}}}}),
            auth=False)},
        "/api/v1/auth/verify": {"post": _op("Sign-In with Ethereum (EIP-4361 message, EIP-191 signature)",
            _responses({200: {"type": "object", "required": ["token", "address", "expires_at"],
                              "properties": {k: {"type": "string"} for k in ("token", "address", "expires_at")}}},
                       401),
            body={"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["message", "signature"],
                "properties": {"message": {"type": "string"}, "signature": {"type": "string"}}}}}},
            auth=False)},
        "/api/v1/uploads": {
            "post": _op("tus creation (and creation-with-upload); Location names the upload", _responses(
                {201: None}, *_TUS_WRITE), parameters=[
                    _TUS_RESUMABLE,
                    {"name": "Upload-Length", "in": "header", "required": True,
                     "schema": {"type": "integer", "minimum": 0}},
                    {"name": "Upload-Metadata", "in": "header", "schema": {"type": "string"},
                     "description": "filename, title, visibility (public/private), priority; values Base64"},
                ]),
            "options": _op("tus discovery: Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm",
                           {"204": {"description": _REASONS[204]}}, auth=False),
        },
        "/api/v1/uploads/{upload_id}": {
            "head": _op("tus: the stored offset", _responses({200: None}, 401, 403, 404, 410, 412),
                        parameters=[_UPLOAD_ID, _TUS_RESUMABLE]),
            "patch": _op("tus: append bytes at Upload-Offset", _responses({204: None}, *_TUS_WRITE),
                         parameters=[_UPLOAD_ID, _TUS_RESUMABLE,
                                     {"name": "Upload-Offset", "in": "header", "required": True,
                                      "schema": {"type": "integer", "minimum": 0}}],
                         body={"required": True, "content": {"application/offset+octet-stream": {
                             "schema": {"type": "string", "format": "binary"}}}}),
            "delete": _op("tus termination", _responses({204: None}, 401, 403, 404, 410, 412, 423),
                          parameters=[_UPLOAD_ID, _TUS_RESUMABLE]),
        },
        "/api/v1/farm/metrics": {"get": _op("The broker's farm figures", _responses(
            {200: {"type": "object"}}, 503), auth=False)},
        "/api/v1/health": {"get": _op("Readiness: disk, Redis, the object store; the broker advisory", {
            "200": {"description": "ready to serve players (an advisory check failing is named in warnings)", "content": {"application/json": {"schema": {"type": "object"}}}},
            "503": {"description": "degraded", "content": {"application/json": {"schema": {"type": "object"}}}},
        }, auth=False)},
        "/health": {"get": _op("Liveness", {"200": {"description": "alive", "content": {
            "application/json": {"schema": {"type": "object"}}}}}, auth=False)},
        "/api/v1/openapi.json": {"get": _op("This document", {"200": {"description": "OpenAPI 3.1", "content": {
            "application/json": {"schema": {"type": "object"}}}}}, auth=False)},
    },
}


async def openapi(request: web.Request) -> web.Response:
    await enforce(request, "api")
    return web.json_response(SPEC, headers={"Cache-Control": "public, max-age=300"})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi)
