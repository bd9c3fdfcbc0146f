"""The OpenAPI description of the service's report API, its wait-list API, and of the activity
API its notebook servers call (served at api/v1/openapi.json; the reference page
docs/reference/usage-api.md describes the same)."""

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


def _json(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _ok(schema: str, description: str, csv: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    }
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    return {"200": {"description": description, "content": content}, **_ERRORS}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_REQUEST_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The request's `id`.",
}
_NOT_FOUND = {"404": _error("No such request, or another user's that you may not read.")}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "gpuhub usage API",
        "version": "1",
        "description": "GPU-hours and cost from the gpuhub billing ledger. Authenticate with a "
        "JupyterHub login or API token (`Authorization: token ...`). Scope "
        "`custom:gpu-usage:read` reads every team; `custom:gpu-usage:read!group=<team>` one "
        "team; without them, your own usage only. `activity` and `keep` are for gpuhub's "
        "notebook extension, with a server's own token. `waitlist`: a place in line for a GPU "
        "profile, for yourself (or, with JupyterHub's `servers` scope for a user, for them).",
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
        "/rightsizing": {
            "get": {
                "summary": "Right-sizing hints per team, user and profile; the possible saving",
                "parameters": [
                    {
                        "name": "team",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A team (repeatable). Default: every team you may read.",
                    },
                    {
                        "name": "user",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Only this user's sessions.",
                    },
                    *_PERIOD,
                ],
                "responses": _ok("Hints", "The hints, the largest saving first in each team."),
            }
        },
        "/borrowing": {
            "get": {
                "summary": "GPU-hours each team borrowed, lent and lost to reclaim",
                "parameters": [
                    {
                        "name": "team",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A team (repeatable). Default: every team you may read. "
                        "A team's rows: its borrowed servers, and other teams' servers on its "
                        "quota (lent).",
                    },
                    {
                        "name": "by",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["user", "day", "gpu_type"]},
                        "description": "Grouping (repeatable or comma-separated). Lent hours "
                        "name no user: by user, they are in the team's row without one.",
                    },
                    {
                        "name": "user",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Only this user's borrowed servers (no lent hours).",
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["json", "csv"]},
                        "description": "csv: the same rows (also with `Accept: text/csv`).",
                    },
                    *_PERIOD,
                ],
                "responses": _ok("Borrowing", "The borrowing report.", csv=True),
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
        "/activity": {
            "post": {
                "summary": "A notebook server's GPU samples (its own token; not for people)",
                "description": "What gpuhub's notebook extension posts every few seconds, "
                "with the server's JupyterHub token (a token reports only for its owner's "
                "servers). Answered whether or not the service culls.",
                "requestBody": _json("ActivityReport"),
                "responses": _ok(
                    "ActivityAnswer",
                    "The server's warning, budget notice and what its GPU meter shows.",
                ),
            }
        },
        "/keep": {
            "post": {
                "summary": "The user clicked Keep: the idle clocks start again",
                "description": "A warning Keep cannot delay (max-age, budget) stays. 404 when "
                "the server does not run.",
                "requestBody": _json("ServerName"),
                "responses": _ok("ActivityAnswer", "The server's warning and budget notice."),
            }
        },
        "/waitlist": {
            "post": {
                "summary": "Wait in line for a GPU profile",
                "description": "`options` are the user options a spawn takes; top-level "
                "`profile` and `team` are copied into them (a different value there is a 400). "
                "Whatever a spawn would refuse but waiting cannot cure (profile not allowed, "
                "budget spent, the user's cap, bad options, a profile without GPUs) is a 400 "
                "with the spawn's own message. A GPU free right now gives state `held` "
                "(start `ask`) or `starting` (start `auto`: the service asks the hub to start "
                "the server at once).",
                "requestBody": _json("JoinRequest"),
                "responses": {
                    "201": {
                        "description": "In line (or given its turn at once).",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/WaitRequest"}
                            }
                        },
                    },
                    "400": _ERRORS["400"],
                    "403": _error(
                        "Not logged in, or `user` is someone else and the token may not start "
                        "their servers."
                    ),
                    "409": _error(
                        "The user already waits for that server, or it runs or is starting."
                    ),
                },
            },
            "get": {
                "summary": "Your requests not yet ended (a team's, for its leads and admins)",
                "parameters": [
                    {
                        "name": "team",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "That team's requests (needs read access to the team).",
                    }
                ],
                "responses": _ok("WaitRequests", "Live requests, oldest first."),
            },
        },
        "/waitlist/preview": {
            "get": {
                "summary": "The place and estimate a join would get now",
                "parameters": [
                    {
                        "name": "options",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "The spawn's user options, as JSON.",
                    },
                    {
                        "name": "server",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "The server's name ('' for the default).",
                    },
                ],
                "responses": _ok("WaitPreview", "Where a join would stand."),
            }
        },
        "/waitlist/{id}": {
            "get": {
                "summary": "One request (yours, or of a team you read)",
                "parameters": [_REQUEST_ID],
                "responses": {**_ok("WaitRequest", "The request."), **_NOT_FOUND},
            },
            "delete": {
                "summary": "Cancel a request (its GPU goes to the next person)",
                "description": "Answers the final request, also when repeated. A cancel after "
                "the start was asked for stops the server.",
                "parameters": [_REQUEST_ID],
                "responses": {
                    **_ok("WaitRequest", "The request as it ended."),
                    **_NOT_FOUND,
                    "502": _error("Cancelled, but the hub did not stop the server."),
                },
            },
        },
        "/waitlist/{id}/start": {
            "post": {
                "summary": "Start the server of an `ask` request whose GPU is held",
                "parameters": [_REQUEST_ID],
                "responses": {
                    **_ok("WaitRequest", "The request, now `starting`."),
                    **_NOT_FOUND,
                    "409": _error("The request has ended."),
                },
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
                    "session": {
                        "type": "string",
                        "description": "The session's key (a UUID's 32 hex digits; the id as "
                        "text for sessions from before keys), unique across restores.",
                    },
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
                    "busy_gpu_hours": {
                        "type": "number",
                        "nullable": True,
                        "description": "GPU-hours above the culling threshold, of those measured; "
                        "null when none was measured.",
                    },
                    "measured_gpu_hours": {
                        "type": "number",
                        "description": "GPU-hours whose utilisation the notebook extension's "
                        "reports measured (0 where none: no extension, MIG slices).",
                    },
                    "utilization": {
                        "type": "number",
                        "nullable": True,
                        "description": "busy_gpu_hours / measured_gpu_hours (0 to 1); null when "
                        "nothing was measured (never counted as idle).",
                    },
                },
            },
            "Hints": {
                "type": "object",
                "properties": {
                    "since": {"type": "string", "format": "date"},
                    "until": {"type": "string", "format": "date"},
                    "teams": {"type": "array", "items": {"type": "string"}, "nullable": True},
                    "rows": {"type": "array", "items": {"$ref": "#/components/schemas/Hint"}},
                },
            },
            "Hint": {
                "type": "object",
                "properties": {
                    "team": {"type": "string", "nullable": True},
                    "user": {"type": "string"},
                    "profile": {"type": "string"},
                    "gpu_type": {"type": "string"},
                    "sessions": {"type": "integer"},
                    "measured_sessions": {
                        "type": "integer",
                        "description": "Sessions the notebook extension's reports measured (the "
                        "ones judged and saved on).",
                    },
                    "gpu_hours": {"type": "number", "description": "Held in the period."},
                    "observed_hours": {"type": "number"},
                    "busy_percent": {"type": "integer", "nullable": True},
                    "p95_percent": {"type": "integer", "nullable": True},
                    "peak_memory_mib": {"type": "integer", "nullable": True},
                    "memory_total_mib": {"type": "integer", "nullable": True},
                    "suggested_profile": {"type": "string", "nullable": True},
                    "suggested_price_per_hour": {"type": "number", "nullable": True},
                    "price_per_hour": {"type": "number", "nullable": True},
                    "possible_saving": {
                        "type": "number",
                        "description": "What the suggestion would have saved in the period.",
                    },
                    "currency": {"type": "string"},
                    "hint": {"type": "string", "description": "The suggestion, or why none."},
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
            "Borrowing": {
                "type": "object",
                "properties": {
                    "since": {"type": "string", "format": "date"},
                    "until": {"type": "string", "format": "date"},
                    "by": {"type": "array", "items": {"type": "string"}},
                    "teams": {"type": "array", "items": {"type": "string"}, "nullable": True},
                    "rows": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/BorrowingRow"},
                    },
                },
            },
            "BorrowingRow": {
                "type": "object",
                "properties": {
                    "team": {"type": "string", "nullable": True},
                    "user": {
                        "type": "string",
                        "nullable": True,
                        "description": "Who ran the borrowed servers; null in a row of lent hours.",
                    },
                    "day": {"type": "string", "format": "date"},
                    "gpu_type": {"type": "string", "nullable": True},
                    "borrowed_gpu_hours": {
                        "type": "number",
                        "description": "The team's borrowed servers (charged to it).",
                    },
                    "borrowed_sessions": {"type": "integer"},
                    "lent_gpu_hours": {
                        "type": "number",
                        "description": "Other teams' borrowed servers on the team's quota: "
                        "their billed hours times the GPUs of the loan.",
                    },
                    "lent_sessions": {"type": "integer"},
                    "reclaimed_gpu_hours": {
                        "type": "number",
                        "description": "Of the borrowed GPU-hours, those of servers that were "
                        "reclaimed (ended `reclaimed`).",
                    },
                    "reclaims": {
                        "type": "integer",
                        "description": "The team's borrowed servers reclaimed, on the day each "
                        "was stopped.",
                    },
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
                                "install": {"type": "string", "nullable": True},
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
                    "turns_given": {"type": "integer", "description": "Wait-list turns."},
                    "budget_alerts": {"type": "integer", "description": "Alerts queued."},
                    "reclaims_chosen": {
                        "type": "integer",
                        "description": "Borrowed servers chosen to give their GPUs back.",
                    },
                    "reclaims_stopped": {
                        "type": "integer",
                        "description": "Borrowed servers whose stop was asked for when their "
                        "notice was over (each once).",
                    },
                },
            },
            "ServerName": {
                "type": "object",
                "properties": {
                    "server_name": {"type": "string", "description": "'' for the default."}
                },
            },
            "ActivityReport": {
                "allOf": [
                    {"$ref": "#/components/schemas/ServerName"},
                    {
                        "type": "object",
                        "properties": {
                            "gpus": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {
                                    "type": "object",
                                    "required": ["uuid"],
                                    "properties": {
                                        "uuid": {"type": "string"},
                                        "name": {"type": "string"},
                                        "is_mig": {"type": "boolean"},
                                        "utilization": {"type": "integer", "nullable": True},
                                        "memory_used": {"type": "integer"},
                                        "memory_total": {"type": "integer"},
                                        "processes": {"type": "integer"},
                                        "error": {"type": "string", "nullable": True},
                                    },
                                },
                            },
                            "kernel_busy": {"type": "boolean"},
                        },
                    },
                ]
            },
            "ActivityAnswer": {
                "type": "object",
                "properties": {
                    "running": {
                        "type": "boolean",
                        "description": "False (and nothing recorded) without a running session.",
                    },
                    "activity": {
                        "type": "string",
                        "enum": ["busy", "idle", "unknown", "none"],
                        "nullable": True,
                    },
                    "gpu_utilization_percent": {"type": "integer"},
                    "warning": {
                        "type": "object",
                        "nullable": True,
                        "description": "The culler's warning of a coming stop.",
                        "properties": {
                            "message": {"type": "string"},
                            "cull_at": {"type": "string", "format": "date-time"},
                            "reason": {
                                "type": "string",
                                "enum": ["culled-idle", "culled-gpu-idle", "max-age", "budget"],
                            },
                            "keep": {
                                "type": "boolean",
                                "description": "Whether Keep can delay this stop (idleness).",
                            },
                            "advice": {
                                "type": "string",
                                "description": "When Keep cannot: what to do and whom to ask "
                                "(the leads of the server's team); '' otherwise.",
                            },
                        },
                    },
                    "kept_at": {"type": "string", "format": "date-time", "nullable": True},
                    "budget": {
                        "type": "object",
                        "nullable": True,
                        "description": "The budget notice of the team a GPU server is charged "
                        "to, from its warning threshold on; null below it, without a budget, "
                        "and for CPU servers.",
                        "properties": {
                            "team": {"type": "string"},
                            "team_name": {"type": "string"},
                            "level": {"type": "string", "enum": ["warning", "used-up"]},
                            "percent_used": {"type": "integer"},
                            "resets_at": {"type": "string", "format": "date-time"},
                            "stop_at": {
                                "type": "string",
                                "format": "date-time",
                                "nullable": True,
                                "description": "When the team's running GPU servers are "
                                "stopped for the budget; null: they are not (yet).",
                            },
                            "leads": {"type": "string", "description": "Whom to ask."},
                            "message": {"type": "string"},
                        },
                    },
                    "session": {"$ref": "#/components/schemas/MeterSession"},
                },
            },
            "MeterSession": {
                "type": "object",
                "nullable": True,
                "description": "What the server's GPU meter in JupyterLab shows of its session; "
                "null without a running session.",
                "properties": {
                    "started_at": {"type": "string", "format": "date-time", "nullable": True},
                    "profile": {"type": "string"},
                    "profile_name": {"type": "string"},
                    "gpu_type": {"type": "string", "nullable": True},
                    "gpu_type_name": {"type": "string", "nullable": True},
                    "gpu_count": {"type": "integer"},
                    "team": {"type": "string", "nullable": True},
                    "team_name": {"type": "string", "nullable": True},
                    "price_per_hour": {
                        "type": "number",
                        "description": "The server's price (all its GPUs) as admitted.",
                    },
                    "currency": {"type": "string"},
                    "cost": {
                        "type": "number",
                        "description": "At `cost_at`: seconds since `started_at` times "
                        "`price_per_hour` over 3,600 (the ledger's billing rule); for a "
                        "borrowed server that became own, its borrowed part's cost plus the own "
                        "part's since then.",
                    },
                    "cost_at": {"type": "string", "format": "date-time"},
                    "borrowed": {
                        "type": "boolean",
                        "description": "It runs on other teams' idle quota (and may be "
                        "reclaimed: see `deadlines`).",
                    },
                    "budget": {
                        "type": "object",
                        "nullable": True,
                        "description": "The charged team's GPU-hours this month, for a team "
                        "with a monthly budget; null otherwise.",
                        "properties": {
                            "monthly_gpu_hours": {"type": "number"},
                            "gpu_hours_used": {"type": "number"},
                            "gpu_hours_left": {
                                "type": "number",
                                "description": "0 at or past 100 %.",
                            },
                            "percent_used": {"type": "integer"},
                            "resets_at": {"type": "string", "format": "date-time"},
                        },
                    },
                    "deadlines": {
                        "type": "array",
                        "description": "Every rule that can stop the server, the soonest first.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "reason": {
                                    "type": "string",
                                    "enum": [
                                        "max-age",
                                        "budget",
                                        "reclaimed",
                                        "culled-gpu-idle",
                                        "culled-idle",
                                    ],
                                },
                                "at": {
                                    "type": "string",
                                    "format": "date-time",
                                    "nullable": True,
                                    "description": "Null while the rule's clock is not running "
                                    "(budget not used up, a GPU busy) and, for culled-idle, "
                                    "until the culler warns.",
                                },
                                "after_seconds": {
                                    "type": "integer",
                                    "description": "The rule's length: max_age, an idle "
                                    "timeout, the budget's grace.",
                                },
                                "keep": {
                                    "type": "boolean",
                                    "description": "Whether Keep can delay this stop.",
                                },
                            },
                        },
                    },
                    "rightsizing": {
                        "type": "object",
                        "nullable": True,
                        "description": "The cheapest profile the server's user may start for "
                        "its team that would have done for the session's GPU use so far (the "
                        "right-sizing rule the leads' hints follow), worked out at most once a "
                        "minute; null for a server without GPUs, under 30 minutes measured, or "
                        "when nothing cheaper fits.",
                        "properties": {
                            "suggested_profile": {"type": "string"},
                            "suggested_profile_name": {"type": "string"},
                            "suggested_price_per_hour": {
                                "type": "number",
                                "description": "At the catalog's price.",
                            },
                            "price_per_hour": {
                                "type": "number",
                                "description": "The server's price as admitted.",
                            },
                            "currency": {"type": "string"},
                            "observed_hours": {"type": "number"},
                            "busy_percent": {
                                "type": "integer",
                                "nullable": True,
                                "description": "Percent of the observed time any GPU was "
                                "busy; null for a MIG slice (NVML tells no utilisation).",
                            },
                            "p95_percent": {"type": "integer", "nullable": True},
                            "peak_memory_mib": {"type": "integer"},
                            "memory_total_mib": {"type": "integer"},
                            "hint": {"type": "string", "description": "The suggestion in words."},
                        },
                    },
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
            "JoinRequest": {
                "type": "object",
                "properties": {
                    "user": {
                        "type": "string",
                        "description": "Whose server (default: the token's owner).",
                    },
                    "server_name": {"type": "string", "description": "'' for the default."},
                    "profile": {"type": "string"},
                    "team": {"type": "string"},
                    "options": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "example": {"profile": "h100-single", "image": "pytorch"},
                    },
                    "start": {
                        "type": "string",
                        "enum": ["auto", "ask"],
                        "default": "ask",
                        "description": "`auto`: start the server as soon as it is your turn. "
                        "`ask`: hold the GPU for `waitlist.hold` and let you start it.",
                    },
                },
            },
            "WaitRequest": {
                "type": "object",
                "required": ["id", "state", "position", "estimated_start"],
                "properties": {
                    "id": {"type": "string"},
                    "user": {"type": "string"},
                    "server_name": {"type": "string"},
                    "team": {"type": "string"},
                    "profile": {"type": "string"},
                    "gpu_type": {"type": "string"},
                    "gpu_count": {"type": "integer"},
                    "options": {"type": "object", "additionalProperties": {"type": "string"}},
                    "start": {"type": "string", "enum": ["auto", "ask"]},
                    "state": {
                        "type": "string",
                        "enum": [
                            "waiting",
                            "held",
                            "starting",
                            "started",
                            "expired",
                            "cancelled",
                            "failed",
                        ],
                        "description": "Live: waiting, held (a GPU is held: start it before "
                        "`hold_until`), starting. Ended: started, expired, cancelled, failed "
                        "(`message` says why).",
                    },
                    "position": {
                        "type": "integer",
                        "minimum": 1,
                        "nullable": True,
                        "description": "Place in line while waiting; null otherwise.",
                    },
                    "estimated_start": {
                        "type": "string",
                        "format": "date-time",
                        "nullable": True,
                        "description": "When a GPU should come free for it (UTC); null when "
                        "it cannot be told, or not waiting.",
                    },
                    "blocked": {
                        "type": "string",
                        "nullable": True,
                        "description": "Why it is skipped for now though it keeps its place "
                        "(its team's quota or budget).",
                    },
                    "reclaim_at": {
                        "type": "string",
                        "format": "date-time",
                        "nullable": True,
                        "description": "Borrowed GPUs of its type are being reclaimed for its "
                        "team: when the first borrowed server is stopped (UTC); null otherwise.",
                    },
                    "joined_at": {"type": "string", "format": "date-time"},
                    "turn_at": {"type": "string", "format": "date-time", "nullable": True},
                    "hold_until": {"type": "string", "format": "date-time", "nullable": True},
                    "ended_at": {"type": "string", "format": "date-time", "nullable": True},
                    "message": {"type": "string", "nullable": True},
                },
            },
            "WaitRequests": {
                "type": "object",
                "properties": {
                    "requests": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/WaitRequest"},
                    }
                },
            },
            "WaitPreview": {
                "type": "object",
                "properties": {
                    "position": {"type": "integer", "minimum": 1},
                    "estimated_start": {"type": "string", "format": "date-time", "nullable": True},
                    "server_name": {"type": "string"},
                    "team": {"type": "string"},
                    "profile": {"type": "string"},
                    "profile_name": {"type": "string"},
                    "gpu_type": {"type": "string"},
                    "gpu_type_name": {"type": "string"},
                    "gpu_count": {"type": "integer"},
                    "options": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "The options a join would start the server with.",
                    },
                },
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
