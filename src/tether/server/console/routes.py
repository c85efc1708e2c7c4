"""The operator console: server-rendered pages under /console over the same runtime and keys as the API.

Pages: inbox (approve, deny with a message, edit arguments, pick an option, answer), runs with filters, a
run with its event log and trace waterfall, dead letters with replay, cost per customer and agent version,
breakers, budgets and canaries. A key sees what the API would show it: its tenant's runs, within its scopes.
Forms post back with the session's CSRF token and redirect (post/redirect/get); nothing needs JavaScript.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tether.errors import (
    ConfigurationError,
    EscalationNotFoundError,
    InvalidAnswerError,
    RunNotFoundError,
)
from tether.policy.limits import Budget, Scope
from tether.runtime import Runtime
from tether.server.api import ADMIN, INBOX_ANSWER, RUNS_READ, RUNS_WRITE, ApiKey
from tether.server.console.sessions import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleSession,
    ConsoleSessions,
    new_token,
    same_token,
)
from tether.server.console.views import (
    approval_calls,
    bar_widths,
    event_summary,
    pretty,
    waterfall,
)
from tether.store.base import CostGroup, Escalation
from tether.types import Run, RunStatus

HERE = Path(__file__).parent
PREFIX = "/console"
MAX_FORM_BYTES = 256 * 1024
_WINDOWS = {"24h": 24.0, "7d": 24.0 * 7, "30d": 24.0 * 30}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send Origin: null on forms
    "Cache-Control": "no-store",
}


class _SignInFirstError(Exception):
    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


class _RefusedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def add_console(
    app: FastAPI,
    runtime: Runtime,
    keys: Sequence[ApiKey],
    *,
    secure_cookies: bool = False,
    session_ttl_s: float = 8 * 3600,
) -> ConsoleSessions:
    """Mount the console at /console on `app` (the API's app: same keys, same runtime). Returns its
    sessions. `secure_cookies`: mark cookies Secure (serve behind HTTPS)."""
    console = _Console(runtime, tuple(keys), ConsoleSessions(ttl_s=session_ttl_s), secure_cookies)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_exception_handler(_SignInFirstError, console.sign_in_first)
    app.add_exception_handler(_RefusedError, console.refused)
    console.routes(app)
    return console.sessions


class _Console:
    def __init__(
        self, runtime: Runtime, keys: tuple[ApiKey, ...], sessions: ConsoleSessions, secure: bool
    ) -> None:
        self.runtime = runtime
        self.keys = keys
        self.sessions = sessions
        self.secure = secure
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(when=_when, usd=_usd, ms=_ms, ago=_ago)

    # -- plumbing ------------------------------------------------------------------------------

    def page(
        self, request: Request, template: str, session: ConsoleSession | None, **values: Any
    ) -> HTMLResponse:
        context = {
            "session": session,
            "notices": session.take_notices() if session is not None else [],
            "path": request.url.path,
            "prefix": PREFIX,
            **values,
        }
        html = self.templates.get_template(template).render(context)
        return HTMLResponse(html, status_code=values.get("status", 200), headers=_SECURITY_HEADERS)

    def session(self, request: Request, *scopes: str) -> ConsoleSession:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise _SignInFirstError(target if request.method == "GET" else PREFIX)
        if scopes and not session.can(*scopes):
            needed = " or ".join(scopes)
            raise _RefusedError(403, f"your key ({session.key.id}) lacks the scope {needed} for this page")
        return session

    async def form(self, request: Request, session: ConsoleSession | None) -> dict[str, str]:
        """The posted form, after the origin and CSRF checks (sign-in checks its own token)."""
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            raise _RefusedError(403, f"a form from {origin} cannot act on this console")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise _RefusedError(413, f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
        fields = {
            name: values[-1]
            for name, values in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()
        }
        if session is not None and not same_token(fields.get("csrf"), session.csrf):
            raise _RefusedError(
                403, "the form's security token is missing or stale: reload the page and try again"
            )
        return fields

    def back(self, target: str) -> RedirectResponse:
        return RedirectResponse(target, status_code=303, headers=_SECURITY_HEADERS)

    async def sign_in_first(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _SignInFirstError)
        return self.back(f"{PREFIX}/login?next={urllib.parse.quote(exc.target, safe='')}")

    async def refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _RefusedError)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        return self.page(request, "refused.html", session, message=exc.message, status=exc.status)

    async def run_of(self, session: ConsoleSession, run_id: str) -> Run:
        try:
            run = await self.runtime.store.get_run(run_id)
        except RunNotFoundError:
            run = None
        if run is None or not session.key.sees(run.tenant):
            raise _RefusedError(404, f"no run {run_id!r} is visible to your key")
        return run

    async def question_of(self, session: ConsoleSession, escalation_id: str) -> Escalation:
        try:
            question = await self.runtime.store.get_escalation(escalation_id)
            await self.run_of(session, question.run_id)
        except (EscalationNotFoundError, _RefusedError):
            raise _RefusedError(404, f"no question {escalation_id!r} is visible to your key") from None
        return question

    # -- pages ---------------------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:  # noqa: PLR0915 - one closure per page reads best here
        runtime = self.runtime

        @app.get(PREFIX, include_in_schema=False)
        async def home() -> Response:
            return self.back(f"{PREFIX}/inbox")

        @app.get(f"{PREFIX}/login", include_in_schema=False)
        async def login_page(request: Request, next: str = f"{PREFIX}/inbox") -> Response:
            token = new_token()
            response = self.page(request, "login.html", None, token=token, next=_local(next), error=None)
            self._cookie(response, LOGIN_COOKIE, token, max_age=900)
            return response

        @app.post(f"{PREFIX}/login", include_in_schema=False)
        async def login(request: Request) -> Response:
            fields = await self.form(request, None)
            target = _local(fields.get("next", ""))
            if not same_token(fields.get("token"), request.cookies.get(LOGIN_COOKIE) or "-"):
                return self._login_again(request, target, "the sign-in form expired: try again", 400)
            secret = fields.get("key", "").strip()
            key = next((k for k in self.keys if secret and k.matches(secret)), None)
            if key is None:
                return self._login_again(request, target, "that API key is not valid here", 401)
            session = self.sessions.open(key)
            response = self.back(target)
            self._cookie(response, SESSION_COOKIE, session.id, max_age=int(self.sessions.ttl_s))
            response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
            return response

        @app.post(f"{PREFIX}/logout", include_in_schema=False)
        async def logout(request: Request) -> Response:
            session = self.session(request)
            await self.form(request, session)
            self.sessions.close(session.id)
            response = self.back(f"{PREFIX}/login")
            response.delete_cookie(SESSION_COOKIE, path=PREFIX)
            return response

        @app.get(f"{PREFIX}/inbox", include_in_schema=False)
        async def inbox(request: Request) -> Response:
            session = self.session(request, RUNS_READ, INBOX_ANSWER)
            questions = await runtime.inbox(tenants=session.key.tenants, limit=200)
            runs = {q.run_id: await runtime.store.get_run(q.run_id) for q in questions}
            items = [
                {"question": q, "run": runs[q.run_id], "calls": approval_calls(q.context)} for q in questions
            ]
            return self.page(
                request,
                "inbox.html",
                session,
                items=items,
                can_answer=session.can(INBOX_ANSWER),
                pretty=pretty,
            )

        @app.post(f"{PREFIX}/inbox/{{escalation_id}}/answer", include_in_schema=False)
        async def answer(request: Request, escalation_id: str) -> Response:
            session = self.session(request, INBOX_ANSWER)
            fields = await self.form(request, session)
            question = await self.question_of(session, escalation_id)
            choice = fields.get("choice", "")
            text = (fields.get(f"text_{choice}") or fields.get("text") or "").strip() or None
            if question.status != "open":
                session.notices.append(f"That question was already {question.status}; nothing changed.")
                return self.back(f"{PREFIX}/inbox")
            try:
                answered, applied = await runtime.answer(escalation_id, choice, text=text, by=session.key.id)
            except InvalidAnswerError as exc:
                session.notices.append(f"Not sent: {exc}. Your text is kept below.")
                return self.page(
                    request,
                    "inbox.html",
                    session,
                    items=[
                        {
                            "question": question,
                            "run": await runtime.store.get_run(question.run_id),
                            "calls": approval_calls(question.context),
                        }
                    ],
                    can_answer=True,
                    pretty=pretty,
                    kept={"choice": choice, "text": text or ""},
                    status=422,
                )
            if not applied:
                session.notices.append(
                    f"Someone answered first ({answered.answered_by}); only the first answer applies."
                )
            else:
                session.notices.append(f"Answered {choice!r}: run {question.run_id} resumes on a worker.")
            return self.back(f"{PREFIX}/inbox")

        @app.get(f"{PREFIX}/runs", include_in_schema=False)
        async def runs(
            request: Request,
            status: str = "",
            agent: str = "",
            principal: str = "",
            session_id: str = "",
        ) -> Response:
            session = self.session(request, RUNS_READ)
            wanted = RunStatus(status) if status in {s.value for s in RunStatus} else None
            listed = await runtime.store.list_runs(
                status=wanted,
                agent_name=agent.strip() or None,
                principal=principal.strip() or None,
                session_id=session_id.strip() or None,
                tenants=session.key.tenants,
                limit=200,
            )
            filters = {"status": status, "agent": agent, "principal": principal, "session_id": session_id}
            return self.page(
                request,
                "runs.html",
                session,
                runs=listed,
                filters=filters,
                statuses=[s.value for s in RunStatus],
            )

        @app.get(f"{PREFIX}/runs/{{run_id}}", include_in_schema=False)
        async def run_page(request: Request, run_id: str) -> Response:
            session = self.session(request, RUNS_READ)
            run = await self.run_of(session, run_id)
            events = await runtime.events(run_id)
            questions = await runtime.store.list_escalations(status=None, run_id=run_id)
            return self.page(
                request,
                "run.html",
                session,
                run=run,
                events=events,
                trace=waterfall(run, events),
                questions=questions,
                summary=event_summary,
                pretty=pretty,
                live=run.status in (RunStatus.QUEUED, RunStatus.RUNNING),
                can_cancel=session.can(RUNS_WRITE) and not run.status.is_terminal,
                can_replay=session.can(ADMIN) and run.status == RunStatus.DEAD_LETTERED,
            )

        @app.post(f"{PREFIX}/runs/{{run_id}}/cancel", include_in_schema=False)
        async def cancel(request: Request, run_id: str) -> Response:
            session = self.session(request, RUNS_WRITE)
            fields = await self.form(request, session)
            await self.run_of(session, run_id)
            reason = (fields.get("reason") or "cancelled from the console").strip()[:1000]
            ended = await runtime.cancel(run_id, f"{reason} (by {session.key.id})")
            session.notices.append(f"Run {run_id} is {ended.status}.")
            return self.back(f"{PREFIX}/runs/{run_id}")

        @app.get(f"{PREFIX}/dead-letters", include_in_schema=False)
        async def dead_letters(request: Request) -> Response:
            session = self.session(request, ADMIN)
            parked = await runtime.dead_letters(tenants=session.key.tenants, limit=200)
            triage = {run.id: await runtime.dead_letter(run.id) for run in parked}
            return self.page(request, "dead_letters.html", session, runs=parked, triage=triage)

        @app.post(f"{PREFIX}/dead-letters/{{run_id}}/replay", include_in_schema=False)
        async def replay(request: Request, run_id: str) -> Response:
            session = self.session(request, ADMIN)
            await self.form(request, session)
            await self.run_of(session, run_id)
            run, applied = await runtime.replay(run_id, by=session.key.id)
            if applied:
                session.notices.append(
                    f"Run {run_id} is queued again; it resumes from its last recorded step."
                )
            else:
                session.notices.append(f"Run {run_id} is {run.status}, not dead-lettered: nothing to replay.")
            return self.back(f"{PREFIX}/runs/{run_id}")

        @app.get(f"{PREFIX}/cost", include_in_schema=False)
        async def cost(request: Request, window: str = "24h") -> Response:
            session = self.session(request, RUNS_READ)
            hours = _WINDOWS.get(window, 24.0)
            since = int(time.time() * 1000 - hours * 3_600_000)
            groups: list[tuple[CostGroup, str, Collection[str | None] | None]] = [
                ("principal", "Cost per customer", session.key.tenants),
                ("agent_version", "Cost per agent version", session.key.tenants),
            ]
            if session.key.is_operator:
                groups.append(("tenant", "Cost per tenant", None))
            charts = []
            for group, title, tenants in groups:
                rows = await runtime.store.cost_by(group, since_epoch_ms=since, tenants=tenants, limit=25)
                widths = bar_widths([row.cost_usd for row in rows])
                charts.append({"title": title, "rows": list(zip(rows, widths, strict=True))})
            return self.page(
                request, "cost.html", session, charts=charts, window=window, windows=list(_WINDOWS)
            )

        @app.get(f"{PREFIX}/status", include_in_schema=False)
        async def status(request: Request) -> Response:
            session = self.session(request, RUNS_READ)
            admin = session.key.is_operator  # breakers and canaries are shared by every tenant
            breakers = sorted((await runtime.gateway.breakers.states()).items()) if admin else []
            scope = Scope(run_id="-", tenant=session.key.tenant)
            usage = await Budget(runtime.budget_policy, runtime.budget_backend).usage(scope)
            canaries = []
            if admin:
                for canary in await runtime.store.list_canaries(limit=20):
                    report = await runtime.canaries.report(canary) if canary.status == "running" else None
                    canaries.append({"canary": canary, "report": report})
            counts = await runtime.store.count_by_status()
            return self.page(
                request,
                "status.html",
                session,
                admin=admin,
                breakers=[(name, str(state)) for name, state in breakers],
                usage=usage.get("tenant-day", {}),
                policy=runtime.budget_policy,
                canaries=canaries,
                counts={str(k): v for k, v in counts.items()},
            )

        @app.post(f"{PREFIX}/canaries/{{agent}}/{{action}}", include_in_schema=False)
        async def end_canary(request: Request, agent: str, action: str) -> Response:
            session = self.session(request, ADMIN)
            if not session.key.is_operator:
                raise _RefusedError(
                    403, "canaries are shared by every tenant: only an operator key acts on them"
                )
            fields = await self.form(request, session)
            if action not in ("promote", "rollback"):
                raise _RefusedError(404, f"a canary is promoted or rolled back, not {action!r}")
            status = "promoted" if action == "promote" else "rolled_back"
            reason = (fields.get("reason") or f"{status} from the console").strip()[:1000]
            try:
                ended = await runtime.canaries.end(agent, status, f"{reason} (by {session.key.id})")
            except ConfigurationError as exc:
                session.notices.append(str(exc))
            else:
                session.notices.append(f"Canary {ended.id} of {agent} is {ended.status}.")
            return self.back(f"{PREFIX}/status")

    # -- helpers -------------------------------------------------------------------------------

    def _cookie(self, response: Response, name: str, value: str, *, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict", secure=self.secure
        )

    def _login_again(self, request: Request, target: str, error: str, status: int) -> Response:
        token = new_token()
        response = self.page(
            request, "login.html", None, token=token, next=target, error=error, status=status
        )
        self._cookie(response, LOGIN_COOKIE, token, max_age=900)
        return response


def _local(target: str) -> str:
    """Only a path inside the console is a place to go back to after signing in (no open redirect)."""
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith(PREFIX) or "\\" in target:
        return f"{PREFIX}/inbox"
    return urllib.parse.urlunsplit(("", "", parsed.path, parsed.query, ""))


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def _when(epoch_ms: int | float | None) -> str:
    if epoch_ms is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_ms / 1000)) + " UTC"


def _ago(epoch_ms: int | float | None) -> str:
    if epoch_ms is None:
        return "—"
    seconds = max(0.0, time.time() - epoch_ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"
