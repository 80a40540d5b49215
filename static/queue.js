// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  // Ask before destructive form posts (buttons with data-confirm).
  document.addEventListener("submit", function (event) {
    var button = event.submitter || event.target.querySelector("[data-confirm]");
    var message = button && button.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });
  // Live refresh, off by default, remembered per browser, paused while hidden.
  var box = document.getElementById("auto-refresh");
  if (!box) return;
  var key = "flask_queue.refresh";
  box.checked = window.localStorage.getItem(key) === "1";
  box.addEventListener("change", function () {
    window.localStorage.setItem(key, box.checked ? "1" : "0");
  });
  window.setInterval(function () {
    if (box.checked && document.visibilityState === "visible") window.location.reload();
  }, 5000);
})();
