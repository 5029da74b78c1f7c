"""The reviewer console (``fraud review --web``): a small Starlette app over the review store.

An analyst logs in with the configured token and a name, sees the queue in priority order, opens
a case (the payment, its card's recent history, the rule reasons and the model's reason codes),
claims it and records a verdict with a note.

Security: every response forbids framing, sniffing and scripts (``SECURITY_HEADERS``); pages are
autoescaped and the store uses parameterised SQL only. A signed session cookie (Starlette's
SessionMiddleware, itsdangerous) holds the reviewer's name and a per-session CSRF token. Every
POST but the login needs a session (401 otherwise) and the session's CSRF token in its form (403
otherwise), and is refused before it touches the store. The login form carries a pre-session
CSRF token too, and a successful login starts a fresh session (no fixation). With one shared
token a reviewer's name is self-declared: it records who labelled for accountability among
trusted analysts, it is not an identity check.

``GET /metrics`` (no login: it carries counts, no case data) serves the review queue's Prometheus
metrics (``review_queue.metrics``): the queue gauges read from the store on each scrape, and the
verdicts recorded through this console.

The app does not know about Kafka or settings: the composition root (``fraud review --web``)
hands it how to open the store and how to record a verdict (commit, then publish the outbox).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import jinja2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from review_queue.metrics import ReviewMetrics
from review_queue.pages import TEMPLATES
from review_queue.store import ClaimConflict, ReviewCase, ReviewStore, Verdict
from schema import Label, Transaction

MAX_NOTE = 2000
MAX_NAME = 64


class RecordsVerdicts(Protocol):
    """Commit a verdict (the reviewer must hold the claim), then try to publish it; see fraud.lifecycle."""

    def __call__(self, transaction_id: str, verdict: Verdict, reviewer: str, note: str) -> Recorded: ...


class Recorded(Protocol):
    label: Label | None
    published: bool


@dataclass(frozen=True)
class ConsoleConfig:
    token: str = field(repr=False)  # the password every reviewer logs in with (never in a repr or a log)
    session_secret: str = field(repr=False)  # signs the session cookie
    queue_limit: int = 200
    history_limit: int = 20
    session_max_age_s: int = 12 * 3600  # one working day


def create_app(
    config: ConsoleConfig,
    open_store: Callable[[], ReviewStore],
    record: RecordsVerdicts,
    metrics: ReviewMetrics | None = None,
) -> Starlette:
    """The console as an ASGI app. ``open_store`` opens a store per request (SQLite connections
    stay on one thread); ``record`` commits a verdict and publishes the outbox; ``metrics`` (a new
    registry when None) are served at ``/metrics``."""
    if not config.token:
        raise ValueError("the console needs a login token")
    metrics = metrics or ReviewMetrics()
    env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True)
    templates = Jinja2Templates(env=env)
    env.globals.update(money=_money, score=_score, when=_when)

    def page(request: Request, name: str, status: int = 200, **context: object) -> Response:
        context = {
            "reviewer": _reviewer(request),
            "csrf": _csrf(request),
            "flash": request.session.pop("flash", None),
            "age": lambda case: _age(case.age(datetime.now(UTC))),
            **context,
        }
        return templates.TemplateResponse(request, name, context, status_code=status)

    def with_store(work: Callable[[ReviewStore], object]) -> object:
        with open_store() as store:
            return work(store)

    async def prometheus(request: Request) -> Response:
        await run_in_threadpool(with_store, metrics.refresh)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        return RedirectResponse("/queue", status_code=303)

    async def login_form(request: Request) -> Response:
        return page(request, "login.html")

    async def login(request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return PlainTextResponse("stale or missing form token: reload the login page", status_code=403)
        name = str(form.get("reviewer", "")).strip()
        token = str(form.get("token", ""))
        if not hmac.compare_digest(token.encode(), config.token.encode()) or not 0 < len(name) <= MAX_NAME:
            return page(request, "login.html", status=401, error="Wrong token, or no name given.")
        request.session.clear()  # a fresh session and CSRF token on login: no session fixation
        request.session.update(reviewer=name, csrf=secrets.token_urlsafe(32))
        return RedirectResponse("/queue", status_code=303)

    async def logout(request: Request) -> Response:
        if refused := await _refuse_post(request):
            return refused
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def queue(request: Request) -> Response:
        if _reviewer(request) is None:
            return RedirectResponse("/login", status_code=303)

        def load(store: ReviewStore) -> tuple[list[ReviewCase], dict[str, int], timedelta]:
            return store.open_cases(config.queue_limit), store.counts(), store.sla

        cases, counts, sla = await run_in_threadpool(with_store, load)
        return page(request, "queue.html", cases=cases, counts=counts, sla=_age(sla))

    async def case_page(request: Request) -> Response:
        if _reviewer(request) is None:
            return RedirectResponse("/login", status_code=303)
        return await _render_case(request, request.path_params["transaction_id"])

    async def _render_case(request: Request, transaction_id: str, status: int = 200, error: str | None = None):
        def load(store: ReviewStore) -> tuple[ReviewCase | None, list]:
            case = store.get_case(transaction_id)
            if case is None:
                return None, []
            return case, store.card_history(case.decision.transaction.card_id, config.history_limit)

        case, history = await run_in_threadpool(with_store, load)
        if case is None:
            return PlainTextResponse(f"no case for transaction {transaction_id}", status_code=404)
        return page(request, "case.html", status=status, case=case, history=history, error=error)

    async def claim(request: Request) -> Response:
        if refused := await _refuse_post(request):
            return refused
        transaction_id = request.path_params["transaction_id"]
        reviewer = _reviewer(request)
        try:
            await run_in_threadpool(with_store, lambda store: store.claim(transaction_id, reviewer))
        except ClaimConflict as conflict:
            return await _render_case(request, transaction_id, status=409, error=str(conflict))
        except KeyError:
            return PlainTextResponse(f"no case for transaction {transaction_id}", status_code=404)
        return RedirectResponse(f"/cases/{transaction_id}", status_code=303)

    async def release(request: Request) -> Response:
        if refused := await _refuse_post(request):
            return refused
        transaction_id = request.path_params["transaction_id"]
        reviewer = _reviewer(request)
        await run_in_threadpool(with_store, lambda store: store.release(transaction_id, reviewer))
        return RedirectResponse("/queue", status_code=303)

    async def label(request: Request) -> Response:
        if refused := await _refuse_post(request):
            return refused
        transaction_id = request.path_params["transaction_id"]
        form = await request.form()
        try:
            verdict = Verdict(str(form.get("verdict", "")))
        except ValueError:
            return await _render_case(request, transaction_id, 422, "Choose fraud, legitimate or unsure.")
        note = str(form.get("note", "")).strip()
        if len(note) > MAX_NOTE:
            return await _render_case(request, transaction_id, 422, f"The note is longer than {MAX_NOTE} characters.")
        try:
            # Returns only after the verdict is committed: only then does the page say "saved".
            recorded = await run_in_threadpool(record, transaction_id, verdict, _reviewer(request), note)
        except ClaimConflict as conflict:
            return await _render_case(request, transaction_id, 409, f"Not saved: {conflict}. Claim it first.")
        except KeyError:
            return PlainTextResponse(f"no case for transaction {transaction_id}", status_code=404)
        metrics.count_verdict(verdict)
        if verdict is Verdict.UNSURE:
            outcome = "closed as unsure (no training label)"
        elif recorded.published:
            outcome = "published to labels"
        else:
            outcome = "publishing retried (the broker did not answer; the label waits in the outbox)"
        request.session["flash"] = f"saved: {transaction_id} {verdict.value}; {outcome}"
        return RedirectResponse("/queue", status_code=303)

    async def _refuse_post(request: Request) -> Response | None:
        """401 without a session, 403 without the session's CSRF token: checked before any write."""
        if _reviewer(request) is None:
            return PlainTextResponse("log in first", status_code=401)
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return PlainTextResponse("missing or wrong form token (CSRF)", status_code=403)
        return None

    routes = [
        Route("/", index),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/queue", queue),
        Route("/cases/{transaction_id}", case_page),
        Route("/cases/{transaction_id}/claim", claim, methods=["POST"]),
        Route("/cases/{transaction_id}/release", release, methods=["POST"]),
        Route("/cases/{transaction_id}/label", label, methods=["POST"]),
    ]
    middleware = [
        Middleware(_SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=config.session_secret,
            session_cookie="fraud_review",
            max_age=config.session_max_age_s,
            same_site="strict",  # a second line against cross-site form posts, beside the CSRF token
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


# Sent with every response: no framing (a framed console could be clicked through by another site),
# no content sniffing (a plain-text 404 that echoes a path stays text), no scripts at all (the pages
# have none, so an injected one would not run even if escaping failed), no referrer to other sites.
SECURITY_HEADERS = {
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"content-security-policy": b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'",
    b"referrer-policy": b"no-referrer",
}


class _SecurityHeaders:
    """Pure ASGI middleware adding SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS.items() if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _reviewer(request: Request) -> str | None:
    return request.session.get("reviewer")


def _csrf(request: Request) -> str:
    """The session's CSRF token, created on first use (before login too, for the login form)."""
    if "csrf" not in request.session:
        request.session["csrf"] = secrets.token_urlsafe(32)
    return request.session["csrf"]


def _csrf_ok(request: Request, sent: object) -> bool:
    expected = request.session.get("csrf")
    return isinstance(sent, str) and expected is not None and hmac.compare_digest(sent, expected)


def _money(t: Transaction) -> str:
    return f"{t.amount_minor / 100:,.2f} {t.currency}"


def _score(score: float | None) -> str:
    return "–" if score is None else f"{score:.3f}"


def _when(at: datetime | None) -> str:
    return "–" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(age: timedelta) -> str:
    s = max(0, int(age.total_seconds()))
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400 * 2:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d"


def serve(app: Starlette, host: str, port: int) -> None:
    """Run the console under uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
