"""The annotation page: HTML, CSS and JavaScript, served as three static strings.

The script builds every piece of pair text with ``textContent`` (never ``innerHTML``), so HTML
in a prompt or response shows as text; the server's Content-Security-Policy allows only these
same-origin files to run, as a second guard.
"""

from __future__ import annotations

__all__ = ["INDEX_HTML", "LOGIN_HTML", "APP_JS", "APP_CSS"]

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlhf_jax annotate</title>
<link rel="stylesheet" href="/static/app.css">
</head>
"""

INDEX_HTML = (
  _HEAD
  + """<body>
<header>
  <h1>Which response is better?</h1>
  <div class="meta"><span id="progress">…</span> <span id="who"></span>
  <form method="post" action="/logout"><button type="submit" class="link">log out</button></form></div>
</header>
<main>
  <section id="prompt-box" aria-label="Prompt">
    <h2>Prompt</h2>
    <div id="prompt" class="text"></div>
  </section>
  <div id="responses">
    <section class="resp" aria-label="Response A">
      <h2>A</h2>
      <div id="left" class="text scroll" tabindex="0"></div>
    </section>
    <section class="resp" aria-label="Response B">
      <h2>B</h2>
      <div id="right" class="text scroll" tabindex="0"></div>
    </section>
  </div>
  <div id="buttons">
    <button id="btn-left" class="choice">A is better <kbd>1</kbd></button>
    <button id="btn-tie" class="choice">Tie <kbd>0</kbd></button>
    <button id="btn-right" class="choice">B is better <kbd>2</kbd></button>
    <button id="btn-skip">Skip <kbd>s</kbd></button>
  </div>
  <textarea id="comment" maxlength="2000" rows="2"
    placeholder="Optional comment (keys are off while typing here)"></textarea>
  <section id="demo" hidden aria-live="polite">
    <div id="demo-scores"></div>
    <div id="demo-agreement"></div>
    <button id="btn-next">Next <kbd>Enter</kbd></button>
  </section>
  <div id="status" role="status" aria-live="polite"></div>
  <section id="done" hidden><h2>Nothing left to label</h2>
    <p>Every pair has its labels (or you skipped it). New pairs appear when the trainer adds
    them: reload the page later.</p></section>
  <p class="help">Keys: <kbd>1</kbd>/<kbd>a</kbd> A better, <kbd>2</kbd>/<kbd>b</kbd> B better,
  <kbd>0</kbd>/<kbd>t</kbd> tie, <kbd>s</kbd> skip. The two responses are shown in a random
  order.</p>
</main>
<script src="/static/app.js"></script>
</body>
</html>
"""
)

LOGIN_HTML = (
  _HEAD
  + """<body>
<main class="login">
  <h1>rlhf_jax annotate</h1>
  <form method="post" action="/login">
    <label for="token">Your annotator token</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required>
    <button id="btn-login" type="submit">Start</button>
  </form>
  <p class="help">Ask whoever runs the server for a token
  (<code>python -m rlhf_jax.annotate add-annotator NAME</code>).</p>
  <p id="login-error" class="error">{error}</p>
</main>
</body>
</html>
"""
)

APP_CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #1d1d1f; background: #f4f4f6; }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between;
  gap: .25rem 1rem; padding: .6rem 1rem; background: #263238; color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; }
header .meta { display: flex; gap: .75rem; align-items: baseline; font-size: .9rem; }
header form { display: inline; margin: 0; }
button.link { background: none; border: none; color: #cfd8dc; text-decoration: underline;
  padding: 0; min-height: 0; font-size: .9rem; cursor: pointer; }
main { max-width: 80rem; margin: 0 auto; padding: .75rem; display: flex; flex-direction: column;
  gap: .75rem; }
section { background: #fff; border-radius: .5rem; padding: .5rem .75rem;
  box-shadow: 0 1px 2px rgba(0,0,0,.12); min-width: 0; }
h2 { font-size: .85rem; text-transform: uppercase; letter-spacing: .05em; color: #607d8b;
  margin: 0 0 .25rem; }
#responses { display: flex; flex-wrap: wrap; gap: .75rem; }
.resp { flex: 1 1 20rem; }
.text { overflow-wrap: anywhere; }
.text .para { white-space: pre-wrap; margin: .15rem 0; }
.text pre { background: #263238; color: #eceff1; padding: .5rem; border-radius: .35rem;
  overflow-x: auto; white-space: pre; margin: .35rem 0; font-size: .85rem; }
.scroll { max-height: 45vh; overflow-y: auto; }
#prompt { max-height: 30vh; overflow-y: auto; }
.turn { border-left: 3px solid #b0bec5; padding-left: .5rem; margin: .35rem 0; }
.turn .role { display: block; font-weight: 600; font-size: .8rem; color: #455a64; }
.turn.role-user { border-color: #42a5f5; }
.turn.role-assistant { border-color: #66bb6a; }
.turn.role-system { border-color: #ffa726; }
#buttons { display: flex; flex-wrap: wrap; gap: .5rem; }
button { font: inherit; min-height: 2.75rem; padding: .4rem .9rem; border-radius: .4rem;
  border: 1px solid #90a4ae; background: #fff; cursor: pointer; }
button.choice { flex: 1 1 8rem; font-weight: 600; }
button:disabled { opacity: .5; cursor: default; }
button.picked { background: #263238; color: #fff; }
kbd { font-size: .75em; border: 1px solid #b0bec5; border-radius: .25rem; padding: 0 .3em;
  color: #546e7a; background: #eceff1; }
textarea { font: inherit; width: 100%; padding: .4rem; border-radius: .4rem;
  border: 1px solid #b0bec5; }
#demo { border: 2px solid #7e57c2; }
#status { min-height: 1.2rem; color: #37474f; }
.error { color: #c62828; }
.help { color: #607d8b; font-size: .85rem; margin: 0; }
.login { max-width: 26rem; }
.login form { display: flex; flex-direction: column; gap: .5rem; }
.login input { font: inherit; padding: .5rem; }
@media (max-width: 40rem) {
  body { font-size: 15px; }
  main { padding: .5rem; gap: .5rem; }
  .scroll { max-height: 35vh; }
}
"""

APP_JS = r"""
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let current = null;      // the pair on screen: {id, prompt, left, right}
  let busy = false;        // a request is in flight
  let waitingNext = false; // demo mode: showing the reward model's verdict

  async function api(path, body) {
    const init = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (e) { data = { error: r.status + " " + r.statusText }; }
    if (r.status === 401) { window.location.href = "/login"; }
    if (!r.ok) { throw new Error(data.error || String(r.status)); }
    return data;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  const ROLE = /^(user|assistant|system|human)\s*:\s?(.*)$/i;

  // Renders chat-shaped text: "Role:" lines start a turn, ``` fences become <pre>; all text
  // goes in through textContent.
  function renderText(box, text) {
    box.replaceChildren();
    let turn = box, para = [], code = null;
    const flush = () => {
      if (para.length) { turn.appendChild(el("div", "para", para.join("\n"))); para = []; }
    };
    for (const line of String(text).split("\n")) {
      if (code !== null) {
        if (line.trim().startsWith("```")) {
          const pre = el("pre"); pre.appendChild(el("code", "", code.join("\n")));
          turn.appendChild(pre); code = null;
        } else { code.push(line); }
        continue;
      }
      if (line.trim().startsWith("```")) { flush(); code = []; continue; }
      const m = ROLE.exec(line);
      if (m) {
        flush();
        const role = m[1].toLowerCase() === "human" ? "user" : m[1].toLowerCase();
        turn = el("div", "turn role-" + role);
        turn.appendChild(el("span", "role", m[1]));
        box.appendChild(turn);
        if (m[2]) { para.push(m[2]); }
        continue;
      }
      para.push(line);
    }
    if (code !== null) {
      const pre = el("pre"); pre.appendChild(el("code", "", code.join("\n"))); turn.appendChild(pre);
    }
    flush();
  }

  function setProgress(p) {
    if (!p) { return; }
    $("progress").textContent = p.complete + " of " + p.total + " pairs done";
    $("who").textContent = "you: " + p.mine + " labelled";
  }

  function setButtons(enabled) {
    for (const id of ["btn-left", "btn-tie", "btn-right", "btn-skip"]) { $(id).disabled = !enabled; }
  }

  async function loadNext() {
    if (busy) { return; }
    busy = true; waitingNext = false;
    $("demo").hidden = true;
    for (const b of document.querySelectorAll("button.picked")) { b.classList.remove("picked"); }
    try {
      const data = await api("/api/next");
      setProgress(data.progress);
      current = data.pair;
      if (!current) {
        $("done").hidden = false; setButtons(false);
        for (const id of ["prompt", "left", "right"]) { $(id).replaceChildren(); }
        document.body.dataset.state = "done";
        return;
      }
      $("done").hidden = true;
      renderText($("prompt"), current.prompt);
      renderText($("left"), current.left);
      renderText($("right"), current.right);
      $("left").scrollTop = 0; $("right").scrollTop = 0;
      $("comment").value = "";
      setButtons(true);
      $("status").textContent = "";
      document.body.dataset.pair = current.id;
      document.body.dataset.state = "ready";
    } catch (e) {
      $("status").textContent = "Could not load the next pair: " + e.message;
      $("status").className = "error";
    } finally { busy = false; }
  }

  function showDemo(demo) {
    const f = (x) => (x === null || x === undefined) ? "n/a" : Number(x).toFixed(3);
    const pick = { left: "A", right: "B", tie: "a tie" }[demo.rm_choice];
    $("demo-scores").textContent = "Reward model: A " + f(demo.scores.left) + ", B " +
      f(demo.scores.right) + " — it prefers " + pick + (demo.agrees ? " (like you)." : " (unlike you).");
    const a = demo.agreement;
    $("demo-agreement").textContent = "Your agreement with the reward model so far: " +
      a.agree + " of " + a.n + (a.n ? " (" + Math.round(100 * a.rate) + "%)" : "");
    $("demo").hidden = false;
    waitingNext = true;
    document.body.dataset.state = "demo";
    $("btn-next").focus();
  }

  async function choose(choice) {
    if (busy || !current || waitingNext) { return; }
    busy = true; setButtons(false);
    const btn = { left: "btn-left", right: "btn-right", tie: "btn-tie" }[choice];
    $(btn).classList.add("picked");
    try {
      const data = await api("/api/label", {
        pair_id: current.id, choice: choice, comment: $("comment").value,
      });
      setProgress(data.progress);
      $("status").className = "";
      $("status").textContent = "Saved.";
      if (data.demo) { busy = false; showDemo(data.demo); return; }
      busy = false;
      await loadNext();
    } catch (e) {
      $("status").className = "error";
      $("status").textContent = "Not saved: " + e.message;
      $(btn).classList.remove("picked");
      setButtons(true); busy = false;
    }
  }

  async function skip() {
    if (busy || !current || waitingNext) { return; }
    busy = true;
    try { await api("/api/skip", { pair_id: current.id }); busy = false; await loadNext(); }
    catch (e) { $("status").className = "error"; $("status").textContent = e.message; busy = false; }
  }

  $("btn-left").addEventListener("click", () => choose("left"));
  $("btn-right").addEventListener("click", () => choose("right"));
  $("btn-tie").addEventListener("click", () => choose("tie"));
  $("btn-skip").addEventListener("click", skip);
  $("btn-next").addEventListener("click", () => { if (waitingNext) { loadNext(); } });
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    const t = ev.target;
    if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT")) { return; }
    const k = ev.key.toLowerCase();
    if (waitingNext) {
      if (k === "enter" || k === "n" || k === " ") { ev.preventDefault(); loadNext(); }
      return;
    }
    const action = { "1": "left", "a": "left", "2": "right", "b": "right", "0": "tie", "t": "tie" }[k];
    if (action) { ev.preventDefault(); choose(action); }
    else if (k === "s") { ev.preventDefault(); skip(); }
  });
  loadNext();
})();
"""
