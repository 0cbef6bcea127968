"""Error bodies: 422 names the field like FastAPI's own validation; unexpected errors are a generic 500.

The bodies are documented once here (`ErrorBody`, `ValidationErrorBody`); routes list the statuses
they can answer with `responses=error_responses(...)`, so the OpenAPI document names every one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, OperationalError

from soce.errors import DatabaseError, SoceError

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error but an invalid input's."""

    detail: str = Field(description="what went wrong, in a sentence")


class ValidationIssue(BaseModel):
    """One invalid input, as FastAPI's own request validation reports it."""

    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the field")
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="the rule it breaks, e.g. 'missing', 'int_parsing', 'not_found'")
    input: Any = Field(None, description="the value given (its start, when long), if validation refused it")
    ctx: dict[str, Any] | None = Field(None, description="the rule's parameters, e.g. a bound")


class ValidationErrorBody(BaseModel):
    """The body of a 422: every invalid input, each with its place."""

    detail: list[ValidationIssue]


# What each error status means wherever it is answered; a route may say more with `notes`.
_MEANINGS: dict[int, tuple[type[BaseModel], str]] = {
    400: (ErrorBody, "the body cannot be read: it is not text in UTF-8"),
    401: (
        ErrorBody,
        "no API key, or an unknown or revoked one: writes need a read-write key, and reads need a key "
        "or a dashboard session where reading is not public",
    ),
    403: (ErrorBody, "the API key is read-only and this operation writes"),
    404: (ErrorBody, "the resource named in the path does not exist"),
    409: (ErrorBody, "the request conflicts with what is stored"),
    413: (ErrorBody, "the body is larger than the server accepts"),
    422: (ValidationErrorBody, "invalid input: each problem with its place"),
    503: (ErrorBody, "a database or the broker cannot be reached; try again later"),
}
# Statuses that whole kinds of operations share: reads under /v1/ check the key where reading is not
# public; writes check a read-write key in the app database; a JSON body can be unreadable, too large
# or invalid.
READ_STATUSES = (401, 503)
WRITE_STATUSES = (401, 403, 503)
BODY_STATUSES = (400, 413, 422)


def error_responses(*statuses: int, notes: Mapping[int, str] | None = None) -> dict[int | str, Any]:
    """`responses=` for a route decorator: each status with its body model and what it means there.

    `notes` replaces the general meaning of a status for this operation (e.g. 409: which conflict).
    """
    notes = notes or {}
    out: dict[int | str, Any] = {}
    for code in sorted(set(statuses)):
        model, meaning = _MEANINGS[code]
        out[code] = {"model": model, "description": notes.get(code, meaning)}
    if 401 in out:
        out[401]["headers"] = {
            "WWW-Authenticate": {"description": "how to authenticate: Bearer", "schema": {"type": "string"}}
        }
    return out


def invalid(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's validation errors: {"detail": [{"loc", "msg", "type"}]}."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": list(loc), "msg": msg, "type": kind}]
    )


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} does not exist")


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    message = str(exc) if isinstance(exc, DatabaseError) else "the database cannot be reached"
    return JSONResponse({"detail": message}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


async def _soce_error(request: Request, exc: Exception) -> JSONResponse:
    body = {"detail": [{"loc": [], "msg": str(exc), "type": type(exc).__name__}]}
    return JSONResponse(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


# What a 422 shows of the input it refuses: enough to recognise it, never the bulk of a large body.
ECHO_CHARS = 100  # of each `input` (and of each key in a `loc`)
MESSAGE_CHARS = 500  # of each `msg` and `ctx` value (a validator's message can quote the input)
ISSUES_SHOWN = 20  # a list of a million bad items is one problem repeated
_OUT_OF_RANGE = {"greater_than_equal", "less_than_equal"}  # the bounds of RowId


def _preview(value: Any, limit: int) -> Any:
    """`value` when its JSON has at most `limit` characters, else the start of that JSON and '…'."""
    value = jsonable_encoder(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return value if len(text) <= limit else text[:limit] + "…"


def _issue(error: Mapping[str, Any]) -> dict[str, Any]:
    """One of FastAPI's validation errors with its echoes of the input capped."""
    issue: dict[str, Any] = {
        "loc": [_preview(part, ECHO_CHARS) for part in error.get("loc", ())],
        "msg": _preview(str(error.get("msg", "")), MESSAGE_CHARS),
        "type": str(error.get("type", "value_error")),
    }
    if "input" in error:
        issue["input"] = _preview(error["input"], ECHO_CHARS)
    if error.get("ctx"):
        issue["ctx"] = {
            key: _preview(str(v) if isinstance(v, BaseException) else v, MESSAGE_CHARS)
            for key, v in error["ctx"].items()
        }
    return issue


def _id_out_of_range(error: Mapping[str, Any]) -> str | None:
    """The row an id in the path or query names, when it is beyond what an id column holds: no such
    row can exist, so it answers like any other id that is not stored (404)."""
    loc = error.get("loc", ())
    named = len(loc) == 2 and loc[0] in ("path", "query") and str(loc[1]).endswith("_id")
    if named and error.get("type") in _OUT_OF_RANGE:
        return str(loc[1]).removesuffix("_id").replace("_", " ")
    return None


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with its echoes of the input capped and at most ISSUES_SHOWN problems listed;
    an id in the path or query beyond what an id column holds is a 404 instead."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
        what = _id_out_of_range(error)
        if what is not None:
            return JSONResponse(
                {"detail": f"{what} {_preview(error.get('input'), ECHO_CHARS)} does not exist"},
                status_code=status.HTTP_404_NOT_FOUND,
            )
    issues = [_issue(e) for e in errors[:ISSUES_SHOWN]]
    if len(errors) > ISSUES_SHOWN:
        more = f"{len(errors) - ISSUES_SHOWN} more problems not shown"
        issues.append({"loc": [], "msg": more, "type": "too_many_errors"})
    return JSONResponse({"detail": issues}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    """A value the database refuses (out of range, too long, a NUL character) that the request's
    validation let through: still the input's fault, so a 422, but a bound is missing."""
    log.error("%s %s: input the database refuses", request.method, request.url.path, exc_info=exc)
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).splitlines() or [type(cause).__name__])[0]
    msg = f"a value cannot be stored: {_preview(first, MESSAGE_CHARS)}"
    body = {"detail": [{"loc": [], "msg": msg, "type": "unstorable"}]}
    return JSONResponse(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error; the server log has the details"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def install_error_handlers(app: FastAPI) -> None:
    # the most specific first: a DatabaseError is a SoceError but the fault is ours, not the input's
    app.add_exception_handler(DatabaseError, _database_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(SoceError, _soce_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(Exception, _unexpected)
