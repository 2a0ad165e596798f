// voicelog console: progressive enhancement only. Every page works without this file.
"use strict";

(function () {
  function left(ms) {
    if (ms <= 0) return "expired";
    var s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    s = s % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s left";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-countdown]").forEach(function (el) {
      var end = Date.parse(el.getAttribute("datetime"));
      if (isNaN(end)) return;
      var text = left(end - now);
      if (el.textContent !== text) el.textContent = text;
      el.classList.toggle("soon", end - now < 15 * 60 * 1000);
      el.classList.toggle("over", end - now <= 0);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    window.setInterval(tick, 1000);
  });
})();
