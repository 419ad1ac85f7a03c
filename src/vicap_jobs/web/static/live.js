// Live parts of a page: an element with data-poll="URL" has its content replaced by that URL's
// server-rendered fragment every two seconds. With data-reload-when-ended, the page reloads once
// when the fragment says the job ended (data-ended), so the gallery shows the finished captions.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function poll(element) {
    var url = element.getAttribute("data-poll");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        element.innerHTML = html;
        var ended = element.querySelector("[data-ended]");
        if (ended && element.hasAttribute("data-reload-when-ended")) {
          window.location.reload();
          return;
        }
        if (ended && element.hasAttribute("data-stop-when-ended")) { return; }
        window.setTimeout(function () { poll(element); }, PERIOD_MS);
      })
      .catch(function () { window.setTimeout(function () { poll(element); }, PERIOD_MS * 2); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(function (element) {
      window.setTimeout(function () { poll(element); }, PERIOD_MS);
    });
  });
})();
