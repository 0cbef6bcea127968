"""Error bodies: 422 names the field like FastAPI's own validation; unexpected errors are a generic 500."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from soce.errors import DatabaseError, SoceError

log = logging.getLogger(__name__)


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
    app.add_exception_handler(Exception, _unexpected)
