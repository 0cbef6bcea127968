"""The web dashboard: server-rendered pages (Jinja2) that poll fragments with htmx; every asset local."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import select

from api import dashboard_views as views
from api.dashboard_session import (
    COOKIE,
    MAX_AGE_SECONDS,
    DashboardUser,
    current_user,
    make_cookie,
    require_change,
    session_secret,
)
from api.deps import OptunaDep, SessionDep, SettingsDep
from soce.db import crud
from soce.db.apikeys import verify_api_key
from soce.db.models import JOB_FINISHED_STATES, Job, Soup
from soce.schemas.report import report_files, stored_report
from soce.schemas.run import RowId

HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(tags=["dashboard"], include_in_schema=False)
POLL_SECONDS = 2


async def _form(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form POST (the dashboard's forms send nothing else)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


FormDep = Annotated[dict[str, str], Depends(_form)]


def _viewer(request: Request, session: Any, public: bool) -> DashboardUser | None:
    user = current_user(request, session)
    if user is None and not public:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in to browse the dashboard")
    return user


def _page(request: Request, name: str, user: DashboardUser | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"user": user, "poll_seconds": POLL_SECONDS, "page": name, **context}
    )


def _guarded_page(request: Request, session: Any, settings: Any) -> DashboardUser | Response | None:
    """The viewer, or a redirect to the sign-in form when the dashboard is private and nobody signed in."""
    try:
        return _viewer(request, session, settings.dashboard_public_read)
    except HTTPException:
        return RedirectResponse(f"/signin?next={request.url.path}", status.HTTP_303_SEE_OTHER)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, settings: SettingsDep, optuna: OptunaDep) -> Response:
    user = _guarded_page(request, session, settings)
    if isinstance(user, Response):
        return user
    return _page(request, "jobs.html", user, jobs=views.job_rows(session, optuna))


@router.get("/dashboard/jobs/rows", response_class=HTMLResponse)
def jobs_rows(request: Request, session: SessionDep, settings: SettingsDep, optuna: OptunaDep) -> Response:
    user = _viewer(request, session, settings.dashboard_public_read)
    return _page(request, "_jobs_table.html", user, jobs=views.job_rows(session, optuna))


def _job(session: Any, job_id: int) -> tuple[Job, Soup | None]:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")
    soup = session.scalar(select(Soup).where(Soup.job_id == job_id).order_by(Soup.id.desc()).limit(1))
    return job, soup


def _job_context(job: Job, soup: Soup | None, optuna: Any, settings: Any) -> dict[str, Any]:
    analysis = job.analysis or {}
    report = stored_report(analysis)
    files = report_files(analysis)
    soup_files: list[tuple[str, bool]] = []  # (name, served here)
    if soup is not None and Path(soup.path).is_dir():
        soup_files = sorted((p.name, _servable(p)) for p in Path(soup.path).iterdir() if p.is_file())
    sections = {k: Markup(v) for k, v in views.job_sections(job, soup, optuna).items()}  # drawn escaped
    optuna_link = None
    if settings.optuna_dashboard_url and job.study_name:
        optuna_link = settings.optuna_dashboard_url.rstrip("/")
        try:
            found = optuna.study(job.study_name) if optuna is not None else None
        except Exception:  # an unreachable Optuna database still leaves the dashboard's front page
            found = None
        if found is not None:
            optuna_link += f"/dashboard/studies/{found[0]}"  # optuna-dashboard's page of the study
    return {
        "job": job,
        "active": job.state not in JOB_FINISHED_STATES,
        "bars": views.progress_bars(job.progress),
        "timeline": views.timeline(job),
        "best": views.best_dev(job, optuna),
        "age": views.age(job.created_at),
        "soup": soup,
        "soup_files": soup_files,
        "has_report": bool(files.get("html") and Path(files["html"]).is_file()),
        "has_card": soup is not None and (Path(soup.path) / "README.md").is_file(),
        "optuna_link": optuna_link,
        "sections": sections,
        "verdict": report.verdict if report else None,
        "decision": report.decision if report else {},
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    job_id: RowId, request: Request, session: SessionDep, settings: SettingsDep, optuna: OptunaDep
) -> Response:
    user = _guarded_page(request, session, settings)
    if isinstance(user, Response):
        return user
    job, soup = _job(session, job_id)
    return _page(request, "job.html", user, **_job_context(job, soup, optuna, settings))


@router.get("/dashboard/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(
    job_id: RowId, request: Request, session: SessionDep, settings: SettingsDep, optuna: OptunaDep
) -> Response:
    user = _viewer(request, session, settings.dashboard_public_read)
    job, soup = _job(session, job_id)
    return _page(request, "_job_live.html", user, **_job_context(job, soup, optuna, settings))


def _job_file(session: Any, job_id: int, which: str) -> Path:
    job, soup = _job(session, job_id)
    if which == "report":
        path = report_files(job.analysis).get("html")
    else:
        path = str(Path(soup.path) / "README.md") if soup is not None else None
    if not path or not Path(path).is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no {which} yet")
    return Path(path)


# a soup's small text files (config, tokenizer, model card, recipe) are served; weights never are
SERVED_SUFFIXES = {".json", ".md", ".yaml", ".yml", ".txt", ".model"}
MAX_SERVED_BYTES = 32 << 20


def _servable(path: Path) -> bool:
    return path.suffix in SERVED_SUFFIXES and path.stat().st_size <= MAX_SERVED_BYTES


@router.get("/jobs/{job_id}/soup/{name}")
def job_soup_file(
    job_id: RowId, name: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    _viewer(request, session, settings.dashboard_public_read)
    _, soup = _job(session, job_id)
    folder = Path(soup.path) if soup is not None else None
    path = folder / name if folder is not None else None
    if path is None or "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id}'s soup has no file {name!r}")
    if not _servable(path):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{name} is not served by the dashboard (weights and files over 32 MiB stay on disk)",
        )
    media = "application/json" if path.suffix == ".json" else "text/plain; charset=utf-8"
    return FileResponse(path, media_type=media)


@router.get("/jobs/{job_id}/report")
def job_report_file(job_id: RowId, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    _viewer(request, session, settings.dashboard_public_read)
    return FileResponse(_job_file(session, job_id, "report"), media_type="text/html")


@router.get("/jobs/{job_id}/model-card")
def job_model_card(job_id: RowId, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    _viewer(request, session, settings.dashboard_public_read)
    return FileResponse(_job_file(session, job_id, "model card"), media_type="text/plain; charset=utf-8")


@router.post("/jobs/{job_id}/cancel")
def job_cancel(job_id: RowId, request: Request, session: SessionDep, form: FormDep) -> Response:
    require_change(request, current_user(request, session), form.get("csrf", ""))
    _job(session, job_id)
    crud.cancel_job(session=session, job_id=job_id)
    session.commit()
    return RedirectResponse(f"/jobs/{job_id}", status.HTTP_303_SEE_OTHER)


@router.get("/candidates", response_class=HTMLResponse)
def candidates_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    user = _guarded_page(request, session, settings)
    if isinstance(user, Response):
        return user
    rows, categories = views.candidate_rows(session)
    return _page(request, "candidates.html", user, candidates=rows, categories=categories)


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    user = _guarded_page(request, session, settings)
    if isinstance(user, Response):
        return user
    return _page(request, "schedules.html", user, schedules=views.schedule_rows(session))


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, session: SessionDep, next: str = "/") -> Response:
    return _page(request, "signin.html", current_user(request, session), next=_local(next), error=None)


def _local(target: str) -> str:
    """Only a path on this site: never send a signed-in browser elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.post("/signin")
def signin(request: Request, session: SessionDep, form: FormDep) -> Response:
    key, next = form.get("key", ""), form.get("next", "/")
    row = verify_api_key(session=session, key=key.strip())
    session.commit()  # the key's last use
    if row is None:
        response = _page(request, "signin.html", None, next=_local(next), error="unknown or revoked API key")
        response.status_code = status.HTTP_401_UNAUTHORIZED
        return response
    response = RedirectResponse(_local(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE,
        make_cookie(session_secret(request), row.id),
        max_age=MAX_AGE_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
def signout(request: Request, session: SessionDep, form: FormDep) -> Response:
    user = current_user(request, session)
    if user is not None and form.get("csrf") == user.csrf:
        response = RedirectResponse("/", status.HTTP_303_SEE_OTHER)
        response.delete_cookie(COOKIE)
        return response
    return RedirectResponse("/", status.HTTP_303_SEE_OTHER)
