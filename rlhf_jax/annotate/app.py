"""The annotation web app (Starlette; served by uvicorn, see :mod:`rlhf_jax.annotate.cli`).

Routes (JSON in and out under ``/api``; every ``/api`` route but ``/healthz`` needs a token,
sent as ``Authorization: Bearer TOKEN`` or the ``rlhf_annotate`` cookie that ``POST /login``
sets):

* ``GET /`` — the page (the login form without a valid cookie); ``POST /login`` (form field
  ``token``), ``POST /logout``.
* ``GET /api/next`` — ``{"pair": {"id", "prompt", "left", "right"} | null, "progress"}``; the
  left/right order is random per (pair, annotator) and recorded.
* ``POST /api/label`` ``{"pair_id", "choice": "left" | "right" | "tie", "comment"?, "replace"?}``
  — 200 ``{"label", "progress", "demo"?}``; 409 when the annotator already labelled the pair
  and ``replace`` is not true.
* ``POST /api/skip`` ``{"pair_id"}``.
* ``GET /api/report`` — inter-annotator agreement (:mod:`rlhf_jax.annotate.report`).
* ``GET /healthz`` — ``ok``.

Bad requests get a 4xx and ``{"error": message}``: 401 no or unknown token, 413 a body over
``max_body`` bytes, 415 not JSON, 400 malformed JSON, 422 wrong fields, 404 unknown pair.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from rlhf_jax.annotate import page
from rlhf_jax.annotate.report import agreement_report
from rlhf_jax.annotate.store import Store, StoreError, rm_label

__all__ = ["COOKIE", "MAX_BODY", "MAX_COMMENT", "RewardScorer", "create_app"]

COOKIE = "rlhf_annotate"
MAX_BODY = 64 * 1024
"""Default request body limit in bytes."""
MAX_COMMENT = 2000

RewardScorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""``(prompts, responses) -> scores``: the demo mode's reward model."""

_log = logging.getLogger(__name__)

_SECURITY_HEADERS = [
  (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  ),
  (b"x-content-type-options", b"nosniff"),
  (b"referrer-policy", b"no-referrer"),
  (b"cache-control", b"no-store"),
]


class _HttpError(Exception):
  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


class _SecurityHeaders:
  """ASGI middleware adding the security headers to every response."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)

    async def send_with_headers(message):
      if message["type"] == "http.response.start":
        message = dict(message)
        message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
      await send(message)

    return await self.app(scope, receive, send_with_headers)


async def _read_body(request: Request, limit: int) -> bytes:
  length = request.headers.get("content-length")
  if length is not None:
    if not length.isdigit():
      raise _HttpError(400, "invalid Content-Length header")
    if int(length) > limit:
      raise _HttpError(413, f"request body of {length} bytes is over the {limit}-byte limit")
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > limit:
      raise _HttpError(413, f"request body is over the {limit}-byte limit")
  return bytes(body)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
  ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if ctype != "application/json":
    raise _HttpError(415, f"expected Content-Type application/json, got {ctype or 'none'!r}")
  body = await _read_body(request, limit)
  try:
    data = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _HttpError(400, f"malformed JSON body: {e}") from None
  if not isinstance(data, dict):
    raise _HttpError(422, f"expected a JSON object, got {type(data).__name__}")
  return data


def _field(data: dict, name: str, kind: type, default: Any = ...) -> Any:
  if name not in data:
    if default is ...:
      raise _HttpError(422, f"missing field {name!r}")
    return default
  value = data[name]
  if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
    raise _HttpError(422, f"field {name!r}: expected {kind.__name__}, got {type(value).__name__}")
  return value


def create_app(
  store: Store,
  *,
  queue_dir: str | os.PathLike[str] | None = None,
  sync_every_s: float = 2.0,
  rm_score: RewardScorer | None = None,
  rm_tie_margin: float = 0.0,
  max_body: int = MAX_BODY,
  secure_cookie: bool = False,
):
  """The app serving ``store``.

  Args:
    store: the label store (its ``labels_per_pair`` is K).
    queue_dir: a :mod:`rlhf_jax.feedback.human` queue to serve: its pending pairs are imported
      and merged labels written back every ``sync_every_s`` seconds (and right after a pair
      gets its K-th label) while the app runs. None: serve only the pairs in the store.
    rm_score: demo mode: the reward model, ``(prompts, responses) -> scores``. After each
      choice the page shows its scores for both responses and the annotator's running
      agreement with it (the RM prefers the higher score; a tie within ``rm_tie_margin``).
    max_body: request body limit in bytes (413 above it).
    secure_cookie: mark the login cookie Secure (serve over HTTPS, e.g. behind a proxy).
  """
  rm_lock = threading.Lock()  # one scoring call at a time (model code need not be reentrant)
  syncer = None
  if queue_dir is not None:
    from rlhf_jax.annotate.queue_sync import SyncThread

    syncer = SyncThread(store, queue_dir, sync_every_s)

  def annotator(request: Request) -> dict[str, Any]:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    token = token or request.cookies.get(COOKIE)
    who = store.annotator_for_token(token)
    if who is None:
      raise _HttpError(
        401,
        "unknown annotator token"
        if token
        else "no annotator token: send 'Authorization: Bearer TOKEN' or log in at /login",
      )
    return who

  def handler(fn):
    async def endpoint(request: Request) -> Response:
      try:
        return await fn(request)
      except _HttpError as e:
        return _error(e.status, e.message)
      except StoreError as e:
        return _error(e.status, str(e))

    return endpoint

  async def index(request: Request) -> Response:
    who = await run_in_threadpool(store.annotator_for_token, request.cookies.get(COOKIE))
    if who is None:
      return RedirectResponse("/login", status_code=303)
    return HTMLResponse(page.INDEX_HTML)

  async def login_page(request: Request) -> Response:
    return HTMLResponse(page.LOGIN_HTML.replace("{error}", ""))

  async def login(request: Request) -> Response:
    body = await _read_body(request, 4096)
    token = (urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0]
    who = await run_in_threadpool(store.annotator_for_token, token.strip())
    if who is None:
      return HTMLResponse(page.LOGIN_HTML.replace("{error}", "Unknown token."), status_code=401)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
      COOKIE,
      token.strip(),
      max_age=30 * 86400,
      httponly=True,
      samesite="strict",
      secure=secure_cookie,
    )
    return resp

  async def logout(request: Request) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp

  def static(body: str, media_type: str):
    async def serve(request: Request) -> Response:
      return Response(body, media_type=media_type)

    return serve

  async def next_pair(request: Request) -> Response:
    def work():
      who = annotator(request)
      pair = store.next_pair(who["id"])
      out = None
      if pair is not None:
        left, right = (
          (pair["response_a"], pair["response_b"])
          if pair["a_left"]
          else (pair["response_b"], pair["response_a"])
        )
        out = {"id": pair["id"], "prompt": pair["prompt"], "left": left, "right": right}
      return {"pair": out, "progress": store.progress(who["id"]), "annotator": who["name"]}

    return JSONResponse(await run_in_threadpool(work))

  def demo_view(who: dict, pair_id: str, label: str, a_left: bool) -> dict[str, Any]:
    scores = store.rm_scores(pair_id)
    if scores is None:
      pair = store.pair(pair_id)
      with rm_lock:
        got = [
          float(x) for x in rm_score([pair["prompt"]] * 2, [pair["response_a"], pair["response_b"]])
        ]
      store.set_rm_scores(pair_id, got[0], got[1])
      scores = (got[0], got[1])
    verdict = rm_label(scores[0], scores[1], rm_tie_margin)
    to_side = {"a": "left" if a_left else "right", "b": "right" if a_left else "left", "tie": "tie"}
    left, right = scores if a_left else scores[::-1]
    return {
      "scores": {"left": left, "right": right},
      "rm_choice": to_side[verdict],
      "agrees": verdict == label,
      "agreement": store.rm_agreement(who["id"], rm_tie_margin),
    }

  async def label(request: Request) -> Response:
    who = await run_in_threadpool(annotator, request)
    data = await _read_json(request, max_body)
    pair_id = _field(data, "pair_id", str)
    choice = _field(data, "choice", str)
    comment = _field(data, "comment", str, "")
    replace = _field(data, "replace", bool, False)
    if choice not in ("left", "right", "tie"):
      raise _HttpError(422, f"field 'choice': expected 'left', 'right' or 'tie', got {choice!r}")
    if len(comment) > MAX_COMMENT:
      raise _HttpError(422, f"field 'comment': at most {MAX_COMMENT} characters")

    def work():
      res = store.submit(who["id"], pair_id, choice, comment=comment, replace=replace)
      out = {"label": res["label"], "replaced": res["replaced"]}
      out["progress"] = store.progress(who["id"])
      if syncer is not None:
        syncer.poke()
      if rm_score is not None:
        out["demo"] = demo_view(who, pair_id, res["label"], res["a_left"])
      return out

    return JSONResponse(await run_in_threadpool(work))

  async def skip(request: Request) -> Response:
    who = await run_in_threadpool(annotator, request)
    data = await _read_json(request, max_body)
    pair_id = _field(data, "pair_id", str)

    def work():
      store.skip(who["id"], pair_id)
      return {"skipped": pair_id, "progress": store.progress(who["id"])}

    return JSONResponse(await run_in_threadpool(work))

  async def report(request: Request) -> Response:
    def work():
      annotator(request)
      return agreement_report(store.labels())

    return JSONResponse(await run_in_threadpool(work))

  async def healthz(request: Request) -> Response:
    return Response("ok", media_type="text/plain")

  @contextlib.asynccontextmanager
  async def lifespan(app):
    if syncer is not None:
      from rlhf_jax.annotate.queue_sync import sync

      await run_in_threadpool(sync, store, queue_dir)  # pairs are there before the first page
      syncer.start()
    try:
      yield
    finally:
      if syncer is not None:
        syncer.stop()
        syncer.join(timeout=10)

  routes = [
    Route("/", handler(index)),
    Route("/login", handler(login_page), methods=["GET"]),
    Route("/login", handler(login), methods=["POST"]),
    Route("/logout", handler(logout), methods=["POST"]),
    Route("/static/app.js", static(page.APP_JS, "text/javascript")),
    Route("/static/app.css", static(page.APP_CSS, "text/css")),
    Route("/api/next", handler(next_pair), methods=["GET"]),
    Route("/api/label", handler(label), methods=["POST"]),
    Route("/api/skip", handler(skip), methods=["POST"]),
    Route("/api/report", handler(report), methods=["GET"]),
    Route("/healthz", healthz),
  ]
  app = Starlette(routes=routes, lifespan=lifespan)
  app.state.store = store
  app.state.syncer = syncer
  return _SecurityHeaders(app)
