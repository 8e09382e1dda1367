"""The annotation app's HTTP API in process (Starlette TestClient): auth, labels, 4xx answers,
demo mode, report, and the queue bridge to rlhf_jax.feedback.human."""

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from rlhf_jax.annotate.app import COOKIE, create_app  # noqa: E402
from rlhf_jax.annotate.store import Store  # noqa: E402
from rlhf_jax.feedback import human  # noqa: E402


def _pairs(n, prefix="p"):
  return [
    {"id": f"{prefix}{i}", "prompt": f"prompt {i}", "response_a": f"A{i}", "response_b": f"B{i}"}
    for i in range(n)
  ]


@pytest.fixture
def setup(tmp_path):
  store = Store(tmp_path / "db.sqlite", labels_per_pair=2)
  store.add_pairs(_pairs(3))
  tokens = {name: store.add_annotator(name) for name in ("ann", "bob", "cy")}
  return store, tokens


def _h(token):
  return {"Authorization": f"Bearer {token}"}


def _label(client, token, choice="left", **extra):
  nxt = client.get("/api/next", headers=_h(token)).json()
  pair = nxt["pair"]
  r = client.post(
    "/api/label", headers=_h(token), json={"pair_id": pair["id"], "choice": choice, **extra}
  )
  return pair, r


def test_label_flow_order_and_progress(setup):
  store, tokens = setup
  with TestClient(create_app(store)) as client:
    pair, r = _label(client, tokens["ann"], "left")
    assert r.status_code == 200, r.text
    # The label follows the order the pair was shown in.
    want = "a" if pair["left"].startswith("A") else "b"
    assert r.json()["label"] == want
    assert r.json()["progress"] == {"total": 3, "complete": 0, "mine": 1, "left_for_me": 2}
    (row,) = store.labels()
    assert (row["annotator"], row["label"], bool(row["a_left"])) == ("ann", want, want == "a")
    # Tie, then skip, then nothing left for this annotator.
    _, r = _label(client, tokens["ann"], "tie")
    assert r.json()["label"] == "tie"
    nxt = client.get("/api/next", headers=_h(tokens["ann"])).json()
    assert (
      client.post(
        "/api/skip", headers=_h(tokens["ann"]), json={"pair_id": nxt["pair"]["id"]}
      ).status_code
      == 200
    )
    assert client.get("/api/next", headers=_h(tokens["ann"])).json()["pair"] is None
    # Security headers on every response.
    h = client.get("/healthz").headers
    assert "script-src 'self'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff"


def test_duplicate_label_is_409_unless_replace(setup):
  store, tokens = setup
  with TestClient(create_app(store)) as client:
    pair, r = _label(client, tokens["bob"], "left")
    first = r.json()["label"]
    again = {"pair_id": pair["id"], "choice": "right"}
    r = client.post("/api/label", headers=_h(tokens["bob"]), json=again)
    assert r.status_code == 409 and "replace" in r.json()["error"]
    assert [x["label"] for x in store.labels()] == [first]
    r = client.post("/api/label", headers=_h(tokens["bob"]), json={**again, "replace": True})
    assert r.status_code == 200 and r.json()["replaced"] is True
    (row,) = store.labels()
    assert row["label"] == {"a": "b", "b": "a"}[first] and row["updated"] is not None


def test_bad_requests_get_4xx_with_a_message(setup):
  store, tokens = setup
  with TestClient(create_app(store, max_body=1024)) as client:
    ok = _h(tokens["cy"])
    pair = client.get("/api/next", headers=ok).json()["pair"]
    cases = [
      ({}, {"pair_id": pair["id"], "choice": "left"}, 401, "token"),
      (_h("nope"), {"pair_id": pair["id"], "choice": "left"}, 401, "unknown"),
      (ok, {"pair_id": pair["id"], "choice": "up"}, 422, "choice"),
      (ok, {"pair_id": pair["id"]}, 422, "missing field 'choice'"),
      (ok, {"pair_id": 3, "choice": "left"}, 422, "pair_id"),
      (ok, {"pair_id": pair["id"], "choice": "left", "replace": "yes"}, 422, "replace"),
      (ok, {"pair_id": "missing", "choice": "left"}, 404, "no pair"),
      (ok, {"pair_id": pair["id"], "choice": "left", "comment": "x" * 5000}, 413, "limit"),
      (ok, [1, 2], 422, "JSON object"),
    ]
    for headers, body, status, msg in cases:
      r = client.post("/api/label", headers=headers, json=body)
      assert r.status_code == status, (body, r.text)
      assert msg in r.json()["error"], (msg, r.json())
    r = client.post(
      "/api/label", headers={**ok, "Content-Type": "application/json"}, content=b'{"pair_id": '
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = client.post("/api/label", headers={**ok, "Content-Type": "text/plain"}, content=b"{}")
    assert r.status_code == 415
    r = client.post(
      "/api/label",
      headers={**ok, "Content-Type": "application/json", "Content-Length": "99999999"},
      content=b"{}",
    )
    assert r.status_code == 413
    # A pair this annotator was never shown.
    other = next(p for p in ("p0", "p1", "p2") if p != pair["id"])
    r = client.post("/api/label", headers=ok, json={"pair_id": other, "choice": "left"})
    assert r.status_code == 409 and "not shown" in r.json()["error"]
    assert store.labels() == []
    assert client.get("/api/report").status_code == 401


def test_login_cookie_and_page(setup):
  store, tokens = setup
  with TestClient(create_app(store)) as client:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = client.post("/login", data={"token": "wrong"})
    assert r.status_code == 401 and "Unknown token" in r.text
    r = client.post("/login", data={"token": tokens["ann"]}, follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.headers["set-cookie"]
    assert "httponly" in r.headers["set-cookie"].lower()
    page = client.get("/")
    assert page.status_code == 200 and 'name="viewport"' in page.text
    assert "innerHTML" not in client.get("/static/app.js").text
    assert client.get("/api/next").json()["annotator"] == "ann"  # the cookie authenticates


def test_demo_mode_scores_and_running_agreement(setup):
  store, tokens = setup
  calls = []

  def rm(prompts, responses):  # prefers the response ending in an even digit
    calls.append(list(responses))
    return [1.0 if int(r[-1]) % 2 == 0 else -1.0 for r in responses]

  store.add_pairs([{"id": "q", "prompt": "x", "response_a": "A2", "response_b": "B1"}])
  with TestClient(create_app(store, rm_score=rm)) as client:
    results = []
    for _ in range(4):
      nxt = client.get("/api/next", headers=_h(tokens["ann"])).json()["pair"]
      # Always pick the side that holds response_a.
      choice = "left" if nxt["left"].startswith("A") else "right"
      r = client.post(
        "/api/label", headers=_h(tokens["ann"]), json={"pair_id": nxt["id"], "choice": choice}
      )
      results.append((nxt, r.json()["demo"]))
    for nxt, demo in results:
      a_left = nxt["left"].startswith("A")
      assert demo["scores"]["left" if a_left else "right"] == pytest.approx(
        1.0 if int(nxt["left" if a_left else "right"][-1]) % 2 == 0 else -1.0
      )
    # p0 (A0, B0): both even -> RM tie; q (A2, B1): RM prefers a; p1 (A1 B1): tie; p2: tie.
    final = results[-1][1]["agreement"]
    assert final["n"] == 4 and final["agree"] == 1
    assert len(calls) == 4  # scored once per pair (cached in the store)


def test_report_endpoint_cohen_and_fleiss(tmp_path):
  store = Store(tmp_path / "db.sqlite", labels_per_pair=3)
  store.add_pairs(_pairs(4))
  toks = [store.add_annotator(n) for n in ("x", "y", "z")]
  with TestClient(create_app(store)) as client:
    for tok in toks[:2]:
      for _ in range(4):
        _label(client, tok, "tie")
    rep = client.get("/api/report", headers=_h(toks[0])).json()
    assert rep["kappa"]["method"] == "cohen" and rep["kappa"]["observed"] == 1.0
    _label(client, toks[2], "left")
    rep = client.get("/api/report", headers=_h(toks[0])).json()
    assert rep["kappa"]["method"] == "fleiss" and rep["n_multi"] == 4
    assert rep["per_annotator"]["x"]["agreement_with_majority"] == 1.0
    assert rep["per_annotator"]["z"]["agreement_with_majority"] == 0.0


def test_queue_pairs_are_served_and_labels_written_back(tmp_path):
  queue = tmp_path / "queue"
  ids = human.enqueue(queue, ["p1", "p2"], ["a1", "a2"], ["b1", "b2"], meta={"round": 3})
  store = Store(tmp_path / "db.sqlite", labels_per_pair=2)
  t1, t2 = store.add_annotator("u1"), store.add_annotator("u2")
  with TestClient(create_app(store, queue_dir=queue, sync_every_s=0.05)) as client:
    for tok in (t1, t2):
      for _ in range(2):
        nxt = client.get("/api/next", headers=_h(tok)).json()["pair"]
        choice = "left" if nxt["left"].startswith("a") else "right"  # always response_a
        assert (
          client.post(
            "/api/label", headers=_h(tok), json={"pair_id": nxt["id"], "choice": choice}
          ).status_code
          == 200
        )
    recs = human.wait_for_labels(queue, ids, poll_s=0.05, timeout_s=20, progress=False)
  assert [r.label for r in recs] == ["a", "a"]
  assert recs[0].metadata["round"] == 3 and recs[0].metadata["annotator"] == "u1+u2"
  rows = human.labelled(queue)
  assert rows[0]["votes"] == {"u1": "a", "u2": "a"}
  assert human.pending(queue) == []
  json.dumps(rows)
