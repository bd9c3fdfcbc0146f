"""The OpenAPI description of the service's report API (served at api/v1/openapi.json; the
reference page docs/reference/usage-api.md describes the same)."""

from __future__ import annotations

from typing import Any

_PERIOD = [
    {
        "name": "since",
        "in": "query",
        "schema": {"type": "string", "format": "date"},
        "description": "First UTC day (default: the first of this month).",
    },
    {
        "name": "until",
        "in": "query",
        "schema": {"type": "string", "format": "date"},
        "description": "The day after the last (exclusive; default: the first of next month).",
    },
]
_ERRORS = {
    "400": {
        "description": "A parameter is wrong; `message` says which and what is allowed.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "403": {
        "description": "Not logged in, or not allowed to read what was asked.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}


def _ok(schema: str, description: str, csv: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    }
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    return {"200": {"description": description, "content": content}, **_ERRORS}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "gpuhub usage API",
        "version": "1",
        "description": "GPU-hours and cost from the gpuhub billing ledger. Authenticate with a "
        "JupyterHub login or API token (`Authorization: token ...`). Scope "
        "`custom:gpu-usage:read` reads every team; `custom:gpu-usage:read!group=<team>` one "
        "team; without them, your own usage only.",
    },
    "servers": [{"url": "/services/gpu-usage/api/v1"}],
    "paths": {
        "/usage": {
            "get": {
                "summary": "GPU-hours and cost, per team and currency and the chosen groupings",
                "parameters": [
                    {
                        "name": "team",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A team (repeatable). Default: every team you may read.",
                    },
                    {
                        "name": "by",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["user", "profile", "gpu_type", "day", "session", "end_reason"],
                        },
                        "description": "Grouping (repeatable or comma-separated). `session`: "
                        "one row per ledger session, e.g. `by=session,user,profile` for the "
                        "raw records of a chargeback. `end_reason`: how the sessions ended "
                        "(`stopped`, `culled-gpu-idle`, `budget`, ...; `running` if open).",
                    },
                    {
                        "name": "user",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Only this user's sessions.",
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["json", "csv"]},
                        "description": "csv streams the rows (also with `Accept: text/csv`).",
                    },
                    *_PERIOD,
                ],
                "responses": _ok("Usage", "The report.", csv=True),
            }
        },
        "/allocations": {
            "get": {
                "summary": "Servers holding GPUs now",
                "responses": _ok("Allocations", "Live allocations."),
            }
        },
        "/budget": {
            "get": {
                "summary": "This month's burn-down of a team's GPU-hour budget",
                "parameters": [
                    {"name": "team", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _ok("Budget", "The burn-down and projection."),
            }
        },
        "/catalog": {
            "get": {
                "summary": "The catalog in force and its last failed reload (admins)",
                "responses": _ok("Catalog", "The catalog's status."),
            }
        },
        "/status": {
            "get": {
                "summary": "The service's ticks: counts and times only (public, no login)",
                "responses": {
                    "200": {
                        "description": "The service's status.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}
                        },
                    }
                },
            }
        },
        "/status/detail": {
            "get": {
                "summary": "The service's status with its last failed tick's error (admins)",
                "responses": _ok("StatusDetail", "The status and the last error."),
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            },
            "UsageRow": {
                "type": "object",
                "required": ["team", "gpu_hours", "cost", "currency", "sessions"],
                "properties": {
                    "team": {"type": "string", "nullable": True},
                    "day": {"type": "string", "format": "date"},
                    "user": {"type": "string"},
                    "profile": {"type": "string"},
                    "gpu_type": {"type": "string", "nullable": True},
                    "session": {"type": "integer", "description": "Ledger session id."},
                    "end_reason": {"type": "string", "description": "How they ended."},
                    "gpu_hours": {"type": "number"},
                    "cost": {"type": "number"},
                    "currency": {"type": "string"},
                    "idle_gpu_hours": {
                        "type": "number",
                        "nullable": True,
                        "description": "GPU-hours idle (waste) by the notebook extension's "
                        "reports; null when no session of the row was sampled.",
                    },
                    "sessions": {"type": "integer"},
                },
            },
            "Usage": {
                "type": "object",
                "properties": {
                    "since": {"type": "string", "format": "date"},
                    "until": {"type": "string", "format": "date"},
                    "by": {"type": "array", "items": {"type": "string"}},
                    "teams": {"type": "array", "items": {"type": "string"}, "nullable": True},
                    "rows": {"type": "array", "items": {"$ref": "#/components/schemas/UsageRow"}},
                },
            },
            "Allocations": {
                "type": "object",
                "properties": {
                    "allocations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "user": {"type": "string"},
                                "server_name": {"type": "string"},
                                "team": {"type": "string", "nullable": True},
                                "profile": {"type": "string"},
                                "gpu_type": {"type": "string", "nullable": True},
                                "gpu_count": {"type": "integer"},
                                "since": {"type": "string", "format": "date-time"},
                                "gpu_hours": {"type": "number"},
                                "cost": {"type": "number"},
                                "currency": {"type": "string"},
                            },
                        },
                    }
                },
            },
            "Budget": {
                "type": "object",
                "properties": {
                    "team": {"type": "string"},
                    "month": {"type": "string"},
                    "budget_gpu_hours": {"type": "number", "nullable": True},
                    "used_gpu_hours": {"type": "number"},
                    "remaining_gpu_hours": {"type": "number", "nullable": True},
                    "used_ratio": {"type": "number", "nullable": True},
                    "days": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "day": {"type": "string", "format": "date"},
                                "used_gpu_hours": {"type": "number"},
                            },
                        },
                    },
                    "runs_out_on": {"type": "string", "format": "date", "nullable": True},
                },
            },
            "Status": {
                "type": "object",
                "properties": {
                    "runtime": {"type": "string", "enum": ["local", "kubernetes"]},
                    "started_at": {"type": "string", "format": "date-time"},
                    "ticks": {"type": "integer", "description": "Successful ticks."},
                    "last_tick_at": {"type": "string", "format": "date-time", "nullable": True},
                    "failing": {"type": "boolean", "description": "The last tick failed."},
                    "failing_since": {
                        "type": "string",
                        "format": "date-time",
                        "nullable": True,
                        "description": "The first of the failed ticks since the last good one.",
                    },
                    "failed_ticks": {"type": "integer", "description": "Failed ticks."},
                    "adopted": {"type": "integer"},
                    "closed": {"type": "integer"},
                    "strays_ended": {"type": "integer"},
                    "budget_stops": {"type": "integer"},
                },
            },
            "StatusDetail": {
                "allOf": [
                    {"$ref": "#/components/schemas/Status"},
                    {
                        "type": "object",
                        "properties": {
                            "last_error": {
                                "type": "string",
                                "nullable": True,
                                "description": "The last failed tick's error, first line; "
                                "null once a tick succeeds.",
                            }
                        },
                    },
                ]
            },
            "Catalog": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "version": {"type": "string"},
                    "digest": {"type": "string"},
                    "loaded_at": {"type": "string", "format": "date-time"},
                    "teams": {"type": "array", "items": {"type": "string"}},
                    "last_error": {
                        "type": "object",
                        "nullable": True,
                        "properties": {
                            "failed_at": {"type": "string", "format": "date-time"},
                            "digest": {"type": "string"},
                            "problems": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        }
    },
}
