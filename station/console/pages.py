"""The console's pages: public HTML shells (Jinja2) and their static files, nothing else.

A page holds no data: its script reads everything from the REST API with the user's session
cookie (and the CSRF header on writes), so the console can do nothing its user could not do with
a token. A page asked for without a session cookie redirects to the sign-in page; whether the
cookie is still good is the API's to say (401: back to sign-in).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Cookie, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dvsan import __version__

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "dvsan_session"      # the API's session cookie (station/api/routes/auth.py)
# NOTE: nothing inline and nothing from elsewhere: a value injected into a page can run no script.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    needs: str | None = None          # the permission without which its link is not offered


PAGES = {p.name: p for p in (
    Page("overview", "Overview"), Page("units", "Units"), Page("disks", "Disks"), Page("hosts", "Hosts"),
    Page("assignments", "Assignments"), Page("tasks", "Tasks"), Page("monitoring", "Monitoring"),
    Page("audit", "Audit", "users.admin"),
    Page("users", "Users and grants", "users.admin"))}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


def _render(request: Request, template: str, page: str, title: str, status: int = 200) -> HTMLResponse:
    r = templates.TemplateResponse(request, template, {"page": page, "title": title, "pages": PAGES.values(),
                                                       "version": __version__}, status_code=status)
    r.headers.update(HEADERS)
    return r


@router.get("/")
@router.get("/console")
@router.get("/console/")
def home() -> Response:
    return RedirectResponse("/console/overview", status_code=303)


@router.get("/console/signin")
def signin(request: Request) -> HTMLResponse:
    return _render(request, "signin.html", "signin", "Sign in")


@router.get("/console/{name}")
def page(name: str, request: Request,
         session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None) -> Response:
    p = PAGES.get(name)
    if p is None:
        return _render(request, "missing.html", "missing", "No such page", 404)
    if not session:
        return RedirectResponse(f"/console/signin?next=/console/{name}", status_code=303)
    return _render(request, f"{name}.html", name, p.title)


def mount(app: FastAPI) -> None:
    """Serve the console from `app`: its pages, and its script and style under /console/static."""
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
