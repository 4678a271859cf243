// kagi console: light progressive enhancement. Every page works without this file; with
// it, elements marked data-live="URL" refresh themselves from the server every 2 seconds
// (paused while the tab is hidden). Loaded from /ui/assets under a CSP without inline script.
"use strict";
(function () {
  var PERIOD = 2000;
  function refresh(el) {
    if (document.hidden) return;
    // Do not replace content the user is interacting with.
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
    fetch(el.getAttribute("data-live"), {
      credentials: "same-origin",
      headers: { "X-Kagi-Live": "1", Accept: "text/html" },
    })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/ui/login?why=expired");
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined && el.innerHTML !== html) {
          el.innerHTML = html;
          el.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {});
  }
  function start() {
    var els = document.querySelectorAll("[data-live]");
    Array.prototype.forEach.call(els, function (el) {
      setInterval(function () { refresh(el); }, PERIOD);
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
