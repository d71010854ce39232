"""What every console page shares: the templates, the security headers, the cookies, and
"who is signed in" (with the session's CSRF token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.console.sessions import SESSION_COOKIE, load_session, tokens_match
from crm_notify.console.users import SignedInUser, console_enabled
from crm_notify.unsubscribe.forms import read_form

#: The folder of the pages' templates.
PAGES_DIR = Path(__file__).parent / "pages"
#: Where the console lives.
PREFIX = "/console"
#: No script may run on a console page, nor in an email shown in its sandboxed iframes.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
#: Why a form with a wrong CSRF token is refused.
FORGED = "The form was not sent from this console: reload the page."

#: A signed-in user and their session's CSRF token.
Current = tuple[SignedInUser, str]


class ConsoleView:
    """Renders pages and answers "who is signed in" for the console's routes.

    Parameters:
        engine: the database.
        secure_cookies: send cookies with ``Secure`` (the service is reached over https).
    """

    def __init__(self, *, engine: Engine, secure_cookies: bool) -> None:
        self.engine = engine
        self.secure_cookies = secure_cookies
        self._templates = Environment(
            loader=FileSystemLoader(PAGES_DIR), autoescape=select_autoescape(default=True)
        )

    def page(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        """The page ``name`` rendered with ``values``, with the console's headers."""
        html = self._templates.get_template(name).render(prefix=PREFIX, **values)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def refused(self, status: int, message: str, user: SignedInUser | None = None) -> Response:
        """An error page saying ``message``."""
        return self.page("error.html", status, message=message, user=user)

    def cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        """Set an HttpOnly, SameSite=Strict cookie on the console's path."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PREFIX,
            secure=self.secure_cookies,
            httponly=True,
            samesite="strict",
        )

    def state(self, request: Request) -> tuple[bool, Current | None]:
        """Whether the console is on, and who is signed in."""
        with Session(self.engine) as session:
            if not console_enabled(session):
                return False, None
            return True, load_session(session, request.cookies.get(SESSION_COOKIE))

    async def signed_in(self, request: Request) -> Current | Response:
        """Who is signed in, or the response to send instead (console off: 404; no session:
        to the sign-in page, coming back here after)."""
        enabled, current = await run_in_threadpool(self.state, request)
        if not enabled:
            return off()
        if current is None:
            if request.method != "GET":  # a form posted after the session expired
                return RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
            query = f"?{request.url.query}" if request.url.query else ""
            target = quote(request.url.path + query)
            return RedirectResponse(f"{PREFIX}/sign-in?next={target}", status_code=303)
        return current

    async def form(self, request: Request, current: Current) -> dict[str, str] | Response:
        """The posted form, or a 403 when it lacks the session's CSRF token."""
        fields = await read_form(request)
        if not tokens_match(fields.get("csrf"), current[1]):
            return self.refused(403, FORGED, current[0])
        return fields


def off() -> HTMLResponse:
    """The answer of every console URL while no console user exists."""
    return HTMLResponse(
        "The console is off: create its first user with `crm-notify users create EMAIL "
        "--role admin`.",
        status_code=404,
        headers=HEADERS,
    )


def query_text(request: Request, name: str, *, limit: int = 320) -> str:
    """Query parameter ``name``, trimmed, without NUL characters (which PostgreSQL refuses in
    text), at most ``limit`` characters; ``""`` when absent."""
    return (request.query_params.get(name) or "").replace("\x00", "").strip()[:limit]


def is_id(text: str) -> bool:
    """Whether ``text`` is a row id (ASCII digits, at most 18)."""
    return text.isascii() and text.isdigit() and len(text) <= 18
