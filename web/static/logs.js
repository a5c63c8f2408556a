// Live logs: new entries arrive as server-sent events and are added as text (never as
// HTML: a log line is whatever an app printed). Choosing a process type reconnects.
"use strict";
(function () {
  const list = document.getElementById("log");
  const state = document.getElementById("log-state");
  const select = document.getElementById("log-type");
  const maxLines = 2000;
  let source = null;

  function append(entry) {
    const item = document.createElement("li");
    const at = document.createElement("span");
    at.className = "at";
    at.textContent = entry.at;
    const from = document.createElement("span");
    from.className = "source";
    from.textContent = (entry.source === "front" ? "opus" : list.dataset.app) + "[" + entry.source + "]";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = entry.text;
    item.append(at, " ", from, " ", text);
    const atBottom = window.innerHeight + window.scrollY >= document.body.offsetHeight - 40;
    list.append(item);
    while (list.children.length > maxLines) list.firstElementChild.remove();
    if (atBottom) item.scrollIntoView({block: "end"});
  }

  function connect(kind) {
    if (source) source.close();
    const url = list.dataset.stream + (kind ? "?ps=" + encodeURIComponent(kind) : "");
    source = new EventSource(url);
    source.onopen = function () { state.textContent = "live"; state.className = "hint live"; };
    source.onerror = function () { state.textContent = "reconnecting…"; state.className = "hint"; };
    source.onmessage = function (event) { append(JSON.parse(event.data)); };
  }

  select.addEventListener("change", function () {
    const kind = select.value;
    const url = new URL(window.location.href);
    if (kind) url.searchParams.set("ps", kind); else url.searchParams.delete("ps");
    window.history.replaceState(null, "", url);
    list.replaceChildren();
    connect(kind);
  });
  if (list.lastElementChild) list.lastElementChild.scrollIntoView({block: "end"});
  connect(select.value);
})();
