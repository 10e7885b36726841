"""The web dashboard's server: a Starlette app over an experiment store, served by uvicorn.

Pages (HTML shells; ``static/app.js`` fills them from the JSON API, always as text):

    /                      the experiments: status, progress, best test error, duration, tags
    /run/RUN               one experiment: live figures, configuration, events log, steering
    /compare?runs=A,B,...  several runs' curves overlaid and their configuration differences
    /sweeps                the sweeps: kind, status, how many runs, the best test error
    /sweep/SWEEP           one sweep's runs together: each one's point, status and best
                           metrics (sortable), their loss and test-error curves overlaid

API (JSON): ``GET /api/runs`` (``owner status tag where sort desc limit offset``, as
``Store.runs``), ``GET /api/runs/RUN``, ``GET /api/runs/RUN/series`` (``points``, ``window.NAME``),
``GET /api/runs/RUN/log``, ``GET /api/runs/RUN/stream`` (server-sent events: new points, log
lines and status as the run writes them), ``POST /api/runs/RUN/command`` (``{"command": "set",
"args": {"lr": "0.01"}}``: the values are ``nnkit ctl``'s ``key=value`` texts, and the command
goes through ``nnkit ctl``'s own path, :func:`nnkit.views.terminal.steer`; ``stop`` of a
queued run cancels it, as ``nnkit ctl RUN stop`` does: :func:`nnkit.experiments.queue.steer_target`),
``GET /api/compare``, ``GET /api/sweeps`` (``limit offset``), ``GET /api/sweeps/SWEEP``
(``limit offset``: its runs, oldest first), ``GET /api/sweeps/SWEEP/compare`` (``channel points
runs``: up to 20 of its runs, the first 20 without ``runs``).

Security: on a loopback address requests must name a loopback host (a page of another site
that resolves its name to 127.0.0.1 is refused); on any other address every request needs the
token (``?token=`` once, which sets a cookie; or the ``X-NNKit-Token`` header). Every command,
on any address, must be a POST carrying the token in the ``X-NNKit-Token`` header (the pages
read it from their ``<meta>``; another site's page can neither read it nor set the header) and
an ``Origin``, if sent, of this server. Pages load only this server's own script and styles
(a Content-Security-Policy), and put user text into the page as text.
"""
from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import json
import math
import re
import secrets
import socket
import sys
import time
from importlib import resources
from typing import Any, Callable
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..experiments.queue import NotSteerable, command_dir, steer_target
from ..experiments.store import Store
from ..views.channels import DEFAULT_FIGURES
from ..views.terminal import (CommandLineError, check_command, command_events, describe_answer,
                              describe_command_events, describe_silence, steer)
from .runs import (DEFAULT_POINTS, LOAD_BUDGET, MAX_POINTS, MAX_WINDOW, RunCache, UnsafeRunDir,
                   checked_run_dir, config_differences, read_run_file)

#: Seconds a command waits for the run's answer (``nnkit ctl``'s default).
COMMAND_WAIT = 10.0
#: Seconds between two looks at a live run's events file (the live figures' lag).
STREAM_POLL = 0.1
#: Seconds after which a quiet stream sends a comment, so proxies and browsers keep it open.
STREAM_KEEPALIVE = 10.0
LIST_LIMIT, MAX_LIST_LIMIT = 100, 10_000
#: The most runs one compare overlays (their series are read in one request).
MAX_COMPARE = 20
#: The runs of a sweep one request lists, by default and at most.
SWEEP_LIMIT, MAX_SWEEP_LIMIT = 500, 10_000
_LIVE = ("queued", "running", "paused")
#: Seconds between two looks for runs whose process died without saying so (``mark_stale``).
STALE_EVERY = 10.0
TOKEN_HEADER = "x-nnkit-token"
_STATIC = ("app.js", "style.css")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class BadRequest(Exception):
    """A request the API refuses: its status and message (a JSON ``{"error": ...}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ================================================================================ the guard
def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: the host check, the token, the command rules and security headers."""

    def __init__(self, app: Any, token: str, require_token: bool) -> None:
        self.app, self.token, self.require_token = app, token, require_token

    def valid(self, value: str | None) -> bool:
        """True if ``value`` is the token (compared in constant time)."""
        return bool(value) and hmac.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refusal(request)
        if isinstance(refusal, Response):
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)
        await self.app(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        """The response refusing ``request``, or None to serve it."""
        host = (request.url.hostname or "").lower()
        if not self.require_token and not is_loopback(host):
            # Served on loopback without a token: a page of another site whose name resolves
            # here (DNS rebinding) must not be served.
            return _refuse(request, 403, f"host {host!r} is not served here; use 127.0.0.1")
        cookie = request.cookies.get(cookie_name(request))
        header = request.headers.get(TOKEN_HEADER)
        query = request.query_params.get("token")
        if request.method not in ("GET", "HEAD", "POST"):
            return _refuse(request, 405, f"method {request.method} is not allowed")
        if request.method == "POST":
            origin = request.headers.get("origin")
            if not self.valid(header):
                return _refuse(request, 403, "a command needs the X-NNKit-Token header")
            if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                return _refuse(request, 403, f"origin {origin!r} may not send commands")
            return None
        if query is not None and self.valid(query):
            # Once, as Jupyter does: the token moves into a cookie and out of the address bar.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(cookie_name(request), self.token, httponly=True, samesite="strict",
                                path="/")
            return response
        if self.require_token and not (self.valid(cookie) or self.valid(header)):
            return _refuse(request, 401, "this dashboard needs its token: open the address "
                                         "`nnkit ui` printed, with ?token=...")
        return None


def cookie_name(request: Request) -> str:
    """The token cookie's name, per port (cookies are per host, not per port)."""
    return f"nnkit_ui_token_{request.url.port or 0}"


def _refuse(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return HTMLResponse(f"<!doctype html><title>nnkit ui</title><p>{html.escape(message)}</p>",
                        status_code=status)


# ================================================================================ the app
class Dashboard:
    """The endpoints over one store (duck-typed: ``nnkit.experiments.Store``'s methods)."""

    def __init__(self, store: Any, token: str) -> None:
        self.store = store
        self.token = token
        # Room for one compare's runs and a few pages more: a sweep page's curves every few
        # seconds are then read incrementally, not each file again from its start.
        self.cache = RunCache(size=MAX_COMPARE + 8)
        self._stale_checked = -math.inf

    # ------------------------------------------------------------------ helpers
    def record(self, ref: str) -> Any:
        """The store's record of run ``ref`` (an id, a unique id prefix or a name; never a
        path); BadRequest 404 naming it otherwise."""
        if not _REF.fullmatch(ref):
            raise BadRequest(404, f"no run {ref!r}")
        try:
            record = self.store.get(ref)
        except LookupError as e:
            raise BadRequest(404, str(e.args[0]) if e.args else str(e)) from None  # KeyError quotes
        if not (record.id.startswith(ref) or record.name == ref):
            raise BadRequest(404, f"no run {ref!r}")  # found as something else (a directory?)
        return record

    def live_dir(self, record: Any) -> str | None:
        """Where the run's live events are and its commands go: its run directory, or for a
        remote run (``nnkit worker --dask``) the inbox its head keeps."""
        if isinstance(self.store, Store):  # a duck-typed store may have no work queue
            return command_dir(self.store, record.id, record.run_dir)
        return record.run_dir

    def sweep(self, ref: str) -> Any:
        """The store's sweep ``ref`` (an id, a unique id prefix or a name); BadRequest 404
        naming it otherwise (also for a store that keeps no sweeps)."""
        get = getattr(self.store, "get_sweep", None)
        if get is None or not _REF.fullmatch(ref):
            raise BadRequest(404, f"no sweep {ref!r}")
        try:
            return get(ref)
        except LookupError as e:
            raise BadRequest(404, str(e.args[0]) if e.args else str(e)) from None

    def sweep_row(self, sweep: Any) -> dict[str, Any]:
        """A sweep as the sweeps list shows it: its record, how many runs (live, finished) and
        its best run by test error (a few counting queries, whatever the sweep's size)."""
        count = self.store.count
        best = self.store.runs(sweep=sweep.id, sort="test_error", descending=False, limit=1)
        best_error = _finite((_call(self.store, "best", best[0].id) or {}).get("test_error")) if best else None
        return {"id": sweep.id, "name": sweep.name, "kind": sweep.kind, "status": sweep.status,
                "created": sweep.created, "spec": sweep.spec, "runs": count(sweep=sweep.id),
                "live": count(sweep=sweep.id, status=_LIVE), "finished": count(sweep=sweep.id, status="finished"),
                "failed": count(sweep=sweep.id, status="failed"),
                "best_test_error": best_error, "best_run": best[0].id if best and best_error is not None else None}

    def view(self, record: Any):
        try:
            return self.cache.view(self.live_dir(record))
        except UnsafeRunDir as e:
            raise BadRequest(409, f"run {record.id}: {e}") from None

    def jobs(self, records: list[Any]) -> dict[str, dict]:
        """The queue's word on the records ``nnkit queue`` made (retries, attempts, position)."""
        found = getattr(self.store, "jobs", None)
        return {} if found is None else found([r.id for r in records])

    def sweep_names(self, records: list[Any]) -> dict[str, str | None]:
        """The names of the sweeps ``records`` belong to, by id (one look per sweep)."""
        get, names = getattr(self.store, "get_sweep", None), {}
        for sweep_id in {getattr(r, "sweep_id", None) for r in records} - {None}:
            try:
                names[sweep_id] = get(sweep_id).name if get else None
            except LookupError:
                names[sweep_id] = None
        return names

    def row(self, record: Any, job: dict | None = None, sweep_name: str | None = None) -> dict[str, Any]:
        """A record as the experiments list shows it; ``job``: its entry of :meth:`jobs`."""
        best = _call(self.store, "best", record.id) or {}
        return {"id": record.id, "name": record.name, "owner": record.owner,
                "tags": list(record.tags), "notes": record.notes, "status": record.status,
                "created": record.created, "started": record.started, "ended": record.ended,
                "heartbeat": record.heartbeat, "duration": record.duration,
                "progress": record.progress, "step": record.step, "total_steps": record.total_steps,
                "best_test_error": _finite(best.get("test_error")), "host": record.host,
                "pid": record.pid, "run_dir": record.run_dir, "job": job,
                "sweep_id": getattr(record, "sweep_id", None), "sweep_name": sweep_name,
                "point": getattr(record, "point", None)}

    # ------------------------------------------------------------------ pages
    def page(self, request: Request, kind: str, title: str, **data: str) -> HTMLResponse:
        attrs = "".join(f' data-{k.replace("_", "-")}="{html.escape(v, quote=True)}"'
                        for k, v in data.items())
        text = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<meta name="nnkit-token" content="{html.escape(self.token, quote=True)}">'
                f"<title>{html.escape(title)} - nnkit</title>"
                f'<link rel="stylesheet" href="/static/style.css"></head>'
                f'<body data-page="{kind}"{attrs}>'
                f'<header><a class="home" href="/">nnkit</a> <nav><a href="/">experiments</a> '
                f'<a href="/sweeps">sweeps</a></nav> <span class="where">{html.escape(title)}'
                f'</span></header><main id="main"><noscript>This page needs JavaScript.</noscript>'
                f'</main><script src="/static/app.js"></script></body></html>\n')
        return HTMLResponse(text)

    def experiments_page(self, request: Request) -> HTMLResponse:
        return self.page(request, "experiments", "experiments")

    def experiment_page(self, request: Request) -> Response:
        record = self.record(request.path_params["run"])
        channels = json.dumps({c.name: c.window for f in DEFAULT_FIGURES for c in f.channels})
        return self.page(request, "experiment", record.name or record.id, run=record.id,
                         windows=channels)

    def compare_page(self, request: Request) -> HTMLResponse:
        channels = json.dumps([c.name for f in DEFAULT_FIGURES for c in f.channels])
        return self.page(request, "compare", "compare", runs=request.query_params.get("runs", ""),
                         channels=channels)

    def sweeps_page(self, request: Request) -> HTMLResponse:
        return self.page(request, "sweeps", "sweeps")

    def sweep_page(self, request: Request) -> Response:
        sweep = self.sweep(request.path_params["sweep"])
        return self.page(request, "sweep", f"sweep {sweep.name or sweep.id}", sweep=sweep.id)

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise BadRequest(404, f"no file {name!r}")
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(body, media_type=f"{kind}; charset=utf-8",
                        headers={"cache-control": "no-cache"})

    # ------------------------------------------------------------------ API
    def list_runs(self, request: Request) -> JSONResponse:
        q = request.query_params
        filters = {"owner": q.get("owner") or None, "status": q.get("status") or None,
                   "tags": tuple(t for t in q.getlist("tag") if t), "where": q.get("where") or None}
        limit = _whole(q.get("limit"), LIST_LIMIT, "limit", 1, MAX_LIST_LIMIT)
        offset = _whole(q.get("offset"), 0, "offset", 0, None)
        if time.monotonic() - self._stale_checked > STALE_EVERY and hasattr(self.store, "mark_stale"):
            self._stale_checked = time.monotonic()
            self.store.mark_stale()  # a killed run shows as interrupted, not running forever
        try:
            total = self.store.count(**filters)
            records = self.store.runs(**filters, sort=q.get("sort") or None,
                                      descending=q.get("desc", "1") != "0", limit=limit, offset=offset)
        except ValueError as e:  # a bad --where expression or sort key: the store names it
            raise BadRequest(400, str(e)) from None
        jobs = self.jobs(records)  # one look at the queue per page, not per row
        names = self.sweep_names(records)
        return JSONResponse({"total": total, "offset": offset, "limit": limit,
                             "runs": [self.row(r, jobs.get(r.id), names.get(getattr(r, "sweep_id", None)))
                                      for r in records]})

    def run_detail(self, request: Request) -> JSONResponse:
        record = self.record(request.path_params["run"])
        out = {**self.row(record, self.jobs([record]).get(record.id),
                          self.sweep_names([record]).get(getattr(record, "sweep_id", None))), "config_text": record.config_text,
               "config_hash": record.config_hash, "nnkit_version": record.nnkit_version,
               "git_commit": record.git_commit, "pid": record.pid,
               "params": _call(self.store, "params", record.id) or {},
               "metrics": _finite_dict(_call(self.store, "metrics", record.id) or {}),
               "best": _finite_dict(_call(self.store, "best", record.id) or {}),
               "live": None, "files_error": None}
        try:
            run_dir = checked_run_dir(self.live_dir(record))
            out["live"] = self.cache.view(run_dir).status()
            if not out["config_text"]:
                out["config_text"] = read_run_file(run_dir, "job.conf")
        except UnsafeRunDir as e:
            out["files_error"] = str(e)
        return JSONResponse(out)

    def series(self, request: Request) -> JSONResponse:
        record = self.record(request.path_params["run"])
        points = _whole(request.query_params.get("points"), DEFAULT_POINTS, "points", 10, MAX_POINTS)
        windows = _windows(request)
        view = self.view(record)
        return JSONResponse({"run": record.id, "status": view.status(),
                             "figures": view.figures(windows, points), "log_count": view.logged})

    def log(self, request: Request) -> JSONResponse:
        record = self.record(request.path_params["run"])
        since = _whole(request.query_params.get("since"), 0, "since", 0, None)
        entries, count = self.view(record).log_since(since)
        return JSONResponse({"entries": entries, "count": count})

    async def stream(self, request: Request) -> Response:
        record = await run_in_threadpool(self.record, request.path_params["run"])
        view = await run_in_threadpool(self.view, record)
        windows = _windows(request)
        counts = {k[6:]: _whole(v, 0, k, 0, None) for k, v in request.query_params.items()
                  if k.startswith("count.")}
        logged = _whole(request.query_params.get("log"), 0, "log", 0, None)

        async def events():
            nonlocal counts, logged
            quiet_since = time.monotonic()
            yield "retry: 2000\n\n"
            while True:
                fresh = await run_in_threadpool(view.refresh, LOAD_BUDGET)
                if fresh or logged == 0 and view.logged:
                    points = await run_in_threadpool(view.points_since, counts, windows)
                    entries, logged = view.log_since(logged)
                    counts = {**counts, **{name: p["count"] for name, p in points.items()}}
                    message = {"points": points, "log": entries, "status": view.status()}
                    yield f"data: {json.dumps(message, separators=(',', ':'))}\n\n"
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > STREAM_KEEPALIVE:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
                await asyncio.sleep(STREAM_POLL)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def command(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest(400, "the body must be a JSON object") from None
        if not isinstance(body, dict) or not isinstance(body.get("command"), str):
            raise BadRequest(400, 'expected {"command": NAME, "args": {KEY: VALUE}}')
        args = body.get("args") or {}
        if not isinstance(args, dict):
            raise BadRequest(400, "args must be an object of KEY: VALUE")
        # The values are nnkit ctl's KEY=VALUE texts (numbers are taken as their JSON text).
        raw = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}
        record = await run_in_threadpool(self.record, request.path_params["run"])
        return await run_in_threadpool(self._steer, record, body["command"], raw)

    def _steer(self, record: Any, name: str, raw: dict[str, str]) -> JSONResponse:
        try:
            check_command(name, raw)  # a bad command is refused before anything is touched
        except CommandLineError as e:
            raise BadRequest(400, str(e)) from None
        try:  # nnkit ctl RUN's own rule: stop cancels a queued run, nothing else reaches one
            target = steer_target(self.store, record, name)
        except NotSteerable as e:
            raise BadRequest(409, str(e)) from None
        if target is None:
            return JSONResponse({"command": {"command": name, "args": {}}, "answer": None, "ok": True,
                                 "cancelled": True, "lines": [],
                                 "text": f"run {record.id} was queued: cancelled (status stopped)"})
        try:  # the directory is checked before any write
            run_dir = checked_run_dir(target)
        except UnsafeRunDir as e:
            raise BadRequest(409, f"run {record.id}: {e}") from None
        try:
            command, answer, offset = steer(run_dir, name, raw, COMMAND_WAIT)
        except CommandLineError as e:
            raise BadRequest(400, str(e)) from None
        except OSError as e:  # commands.jsonl a symlink (ELOOP), the disk full...
            raise BadRequest(409, f"{run_dir}: cannot send the command ({e.strerror or e})") from None
        if answer is None:
            return JSONResponse({"command": command, "answer": None,
                                 "error": f"no answer to {name} within {COMMAND_WAIT:g} s; "
                                          f"{describe_silence(run_dir)}. The command stays queued."},
                                status_code=504)
        lines = []
        if answer["type"] == "ack":
            lines = describe_command_events(command_events(run_dir, answer, offset))
        return JSONResponse({"command": command, "answer": answer, "text": describe_answer(answer),
                             "lines": lines, "ok": answer["type"] == "ack"},
                            status_code=200 if answer["type"] == "ack" else 422)

    def _channel_points(self, request: Request) -> tuple[str, int]:
        channel = request.query_params.get("channel") or "train cost"
        names = [c.name for f in DEFAULT_FIGURES for c in f.channels]
        if channel not in names:
            raise BadRequest(400, f"channel: {channel!r} is not one of {', '.join(names)}")
        points = _whole(request.query_params.get("points"), DEFAULT_POINTS, "points", 10, MAX_POINTS)
        return channel, points

    def _compare(self, records: list[Any], channel: str, points: int) -> dict[str, Any]:
        """One channel of each run's series, their best metrics and their config differences."""
        runs, params = [], {}
        for record in records:
            entry = {**self.row(record), "series": None, "files_error": None}
            try:
                for figure in self.cache.view(self.live_dir(record)).figures(points=points):
                    for c in figure["channels"]:
                        if c["name"] == channel:
                            entry["series"] = c
            except UnsafeRunDir as e:
                entry["files_error"] = str(e)
            entry["best"] = _finite_dict(_call(self.store, "best", record.id) or {})
            runs.append(entry)
            params[record.id] = _call(self.store, "params", record.id) or {}
        return {"channel": channel, "runs": runs, "differences": config_differences(params)}

    def compare(self, request: Request) -> JSONResponse:
        refs = [r for r in request.query_params.get("runs", "").split(",") if r]
        if not 1 <= len(refs) <= MAX_COMPARE:
            raise BadRequest(400, f"runs: give 1 to {MAX_COMPARE} run ids, separated by commas")
        channel, points = self._channel_points(request)
        return JSONResponse(self._compare([self.record(ref) for ref in refs], channel, points))

    # ------------------------------------------------------------------ sweeps
    def list_sweeps(self, request: Request) -> JSONResponse:
        q = request.query_params
        limit = _whole(q.get("limit"), LIST_LIMIT, "limit", 1, MAX_LIST_LIMIT)
        offset = _whole(q.get("offset"), 0, "offset", 0, None)
        found = getattr(self.store, "list_sweeps", None)
        sweeps = found() if found is not None else []
        return JSONResponse({"total": len(sweeps), "offset": offset, "limit": limit,
                             "sweeps": [self.sweep_row(s) for s in sweeps[offset:offset + limit]]})

    def sweep_detail(self, request: Request) -> JSONResponse:
        sweep = self.sweep(request.path_params["sweep"])
        q = request.query_params
        limit = _whole(q.get("limit"), SWEEP_LIMIT, "limit", 1, MAX_SWEEP_LIMIT)
        offset = _whole(q.get("offset"), 0, "offset", 0, None)
        records = self.store.runs(sweep=sweep.id, sort="created", descending=False, limit=limit, offset=offset)
        jobs = self.jobs(records)
        runs = [{**self.row(r, jobs.get(r.id)), "best": _finite_dict(_call(self.store, "best", r.id) or {})}
                for r in records]
        keys = sorted({k for r in records for k in (r.point or {})})
        return JSONResponse({"sweep": self.sweep_row(sweep), "keys": keys, "runs": runs,
                             "offset": offset, "limit": limit})

    def sweep_compare(self, request: Request) -> JSONResponse:
        sweep = self.sweep(request.path_params["sweep"])
        channel, points = self._channel_points(request)
        refs = [r for r in request.query_params.get("runs", "").split(",") if r]
        if len(refs) > MAX_COMPARE:
            raise BadRequest(400, f"runs: give at most {MAX_COMPARE} run ids, separated by commas")
        if refs:
            records = [self.record(ref) for ref in refs]
            strays = [r.id for r in records if getattr(r, "sweep_id", None) != sweep.id]
            if strays:
                raise BadRequest(400, f"runs: {', '.join(strays)} not of sweep {sweep.id}")
        else:
            records = self.store.runs(sweep=sweep.id, sort="created", descending=False, limit=MAX_COMPARE)
        return JSONResponse({**self._compare(records, channel, points), "sweep": sweep.id,
                             "total": self.store.count(sweep=sweep.id)})


def _call(store: Any, method: str, run_id: str) -> Any:
    """``store.method(run_id)``, or None if the store has no such method."""
    found = getattr(store, method, None)
    return None if found is None else found(run_id)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _finite_dict(values: dict) -> dict:
    return {k: _finite(v) for k, v in values.items()}


def _whole(text: str | None, default: int, name: str, low: int, high: int | None) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(400, f"{name}: expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise BadRequest(400, f"{name}: must be in [{low}, {high if high is not None else 'inf'}], "
                              f"got {value}")
    return value


def _windows(request: Request) -> dict[str, int]:
    """The ``window.NAME=N`` smoothing windows of a request."""
    return {k[7:]: _whole(v, 1, k, 1, MAX_WINDOW) for k, v in request.query_params.items()
            if k.startswith("window.")}


def create_app(store: Any, token: str | None = None, require_token: bool = False) -> Any:
    """The dashboard's ASGI app over ``store``; ``token`` (made up if None) guards commands,
    and every request when ``require_token``. The app's ``state.token`` holds it."""
    token = token or secrets.token_urlsafe(24)
    board = Dashboard(store, token)

    def endpoint(method: Callable) -> Callable:
        """Wraps an endpoint so that BadRequest becomes its JSON (or HTML) answer."""
        if asyncio.iscoroutinefunction(method):
            async def handle(request: Request) -> Response:
                try:
                    return await method(request)
                except BadRequest as e:
                    return _refuse(request, e.status, str(e))
        else:
            def handle(request: Request) -> Response:  # a plain def: Starlette runs it in a thread
                try:
                    return method(request)
                except BadRequest as e:
                    return _refuse(request, e.status, str(e))
        return handle

    routes = [
        Route("/", endpoint(board.experiments_page)),
        Route("/run/{run}", endpoint(board.experiment_page)),
        Route("/compare", endpoint(board.compare_page)),
        Route("/sweeps", endpoint(board.sweeps_page)),
        Route("/sweep/{sweep}", endpoint(board.sweep_page)),
        Route("/static/{name}", endpoint(board.static)),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/runs", endpoint(board.list_runs)),
        Route("/api/runs/{run}", endpoint(board.run_detail)),
        Route("/api/runs/{run}/series", endpoint(board.series)),
        Route("/api/runs/{run}/log", endpoint(board.log)),
        Route("/api/runs/{run}/stream", endpoint(board.stream)),
        Route("/api/runs/{run}/command", endpoint(board.command), methods=["POST"]),
        Route("/api/compare", endpoint(board.compare)),
        Route("/api/sweeps", endpoint(board.list_sweeps)),
        Route("/api/sweeps/{sweep}", endpoint(board.sweep_detail)),
        Route("/api/sweeps/{sweep}/compare", endpoint(board.sweep_compare)),
    ]
    app = Starlette(routes=routes)
    app.state.token = token
    app.state.dashboard = board
    return Guard(app, token, require_token)


# ================================================================================ serving
def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str, token: str | None = None) -> str:
    """The address of the dashboard listening on ``sock`` (with ``?token=`` if given)."""
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def make_server(app: Any, sock: socket.socket) -> Any:
    """A uvicorn server for ``app`` on the bound ``sock`` (call ``.run(sockets=[sock])``)."""
    import uvicorn
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            lifespan="off", access_log=False)
    return uvicorn.Server(config)


def serve(store: Any, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          out: Any = None) -> None:
    """Serves the dashboard over ``store`` until Ctrl-C; prints its address to ``out``.

    Any address but a loopback one requires the token on every request.
    """
    out = out or sys.stdout
    require = not is_loopback(host)
    token = token or secrets.token_urlsafe(24)
    app = create_app(store, token, require_token=require)
    sock = bind(host, port)
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "[::]") else host  # all addresses
    print(f"nnkit ui: serving {getattr(store, 'path', 'the store')} at "
          f"{url_of(sock, shown, token if require else None)}", file=out, flush=True)
    make_server(app, sock).run(sockets=[sock])


class ThreadedServer:
    """The dashboard served from a thread of this process (tests, benchmarks, notebooks):
    ``with ThreadedServer(app) as server: server.url``; ``stop()`` ends it."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import threading
        self.sock = bind(host, port)
        self.url = url_of(self.sock, host)
        self.server = make_server(app, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="nnkit-ui", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # uvicorn sets `started` once it accepts connections
        if not self.server.started:
            raise RuntimeError(f"the dashboard did not start on {self.url}")

    def stop(self) -> None:
        """Stops serving (open streams are cut after uvicorn's grace period) and joins."""
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def __enter__(self) -> "ThreadedServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
