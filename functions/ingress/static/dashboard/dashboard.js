// Progressive enhancement for the dashboard; every page works without this file.
// - Live parts of a page ([data-live]) are re-fetched every 2 s while the tab is visible and
//   replaced when they changed (the server renders them: ask with X-Dashboard-Fragment: 1).
//   `refresh` is the one place to switch to EventSource (GET /events) later.
// - "Select all" checkbox for the jobs list.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;

  function selectedIds(region) {
    var ids = {};
    region.querySelectorAll("input[name=ids]:checked").forEach(function (box) { ids[box.value] = true; });
    return ids;
  }

  // Fetch the current URL's live fragment and swap it in, keeping ticked boxes and focus.
  function refresh(region) {
    return fetch(window.location.href, {
      headers: { "X-Dashboard-Fragment": "1" }, credentials: "same-origin", cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) { window.location.reload(); return; }  // signed out: show the sign-in page
      if (!response.ok) { return; }
      return response.text().then(function (html) {
        if (html === region.dataset.rendered) { return; }
        var ticked = selectedIds(region);
        var focused = document.activeElement && region.contains(document.activeElement) ? document.activeElement.id : null;
        region.innerHTML = html;
        region.dataset.rendered = html;
        region.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = !!ticked[box.value]; });
        enhance(region);
        if (focused) { var again = document.getElementById(focused); if (again) { again.focus(); } }
        region.dispatchEvent(new CustomEvent("dashboard:updated", { bubbles: true }));
      });
    }).catch(function () { /* offline for a moment: try again on the next tick */ });
  }

  function enhance(root) {
    root.querySelectorAll("[data-select-all]").forEach(function (all) {
      all.hidden = false;
      all.addEventListener("change", function () {
        root.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
      });
    });
  }

  function start() {
    var regions = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
    enhance(document);
    regions.forEach(function (region) { region.dataset.rendered = ""; });
    var busy = false;
    function tick() {
      if (busy || document.visibilityState !== "visible") { return; }
      busy = true;
      Promise.all(regions.map(refresh)).then(function () { busy = false; }, function () { busy = false; });
    }
    if (regions.length) {
      window.setInterval(tick, INTERVAL_MS);
      document.addEventListener("visibilitychange", tick);
    }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
