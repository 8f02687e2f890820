// Progressive enhancement for the dashboard; every page works without this file.
// - Live parts of a page ([data-live]) are re-fetched when a job event arrives on
//   /dashboard/events (an EventSource, cookie-authenticated), at most every 250 ms, and replaced
//   when they changed (the server renders them: ask with X-Dashboard-Fragment: 1; the answer's
//   X-Dashboard-Version differs from the part's data-version when it changed). Machines and
//   clocks change without job events, so they are also re-fetched every 10 s; while the event
//   stream is down, every 2 s.
// - "Select all" checkbox for the jobs list.
(function () {
  "use strict";
  var POLL_MS = 2000;         // without the event stream
  var CONNECTED_POLL_MS = 10000;  // with it: only what changes without job events
  var EVENT_DELAY_MS = 250;     // events arriving together cause one refresh

  function selectedIds(region) {
    var ids = {};
    region.querySelectorAll("input[name=ids]:checked").forEach(function (box) { ids[box.value] = true; });
    return ids;
  }

  function isEdited(field) {
    if (field.tagName === "SELECT") {
      return Array.prototype.some.call(field.options, function (o) { return o.selected !== o.defaultSelected; });
    }
    // A half-typed number ("1e", "-") reads as "": `badInput` tells it from an emptied field.
    return field.value !== field.defaultValue || !!(field.validity && field.validity.badInput);
  }

  // Values typed or chosen in the part but not yet submitted (a queue's new limit), by field id.
  function editedValues(region) {
    var edited = {};
    region.querySelectorAll("input[id], textarea[id], select[id]").forEach(function (field) {
      if (field.type === "hidden" || field.type === "checkbox" || field.type === "radio") { return; }
      if (isEdited(field)) { edited[field.id] = field.value; }
    });
    return edited;
  }

  // Swap the fragment in. A fragment made of versioned parts ([data-part], as one job's page:
  // its outputs apart) has only its changed parts swapped, so an unchanged PDF preview is not
  // loaded again when, say, its batch's counts change. Returns the nodes put in.
  function swap(region, html) {
    var incoming = document.createElement("template");
    incoming.innerHTML = html;  // inert: nothing in it loads until it is in the page
    var parts = Array.prototype.filter.call(incoming.content.children, function (e) { return e.dataset.part; });
    var current = Array.prototype.filter.call(region.children, function (e) { return e.dataset.part; });
    var same = parts.length > 0 && parts.length === current.length &&
      parts.every(function (part, i) { return current[i].dataset.part === part.dataset.part; });
    if (!same) {
      region.replaceChildren(incoming.content);
      return [region];
    }
    var swapped = [];
    parts.forEach(function (part, i) {
      if (current[i].dataset.version !== part.dataset.version) { current[i].replaceWith(part); swapped.push(part); }
    });
    return swapped;
  }

  // Fetch the current URL's live fragment and swap it in, keeping ticked boxes, what was typed
  // (the field being typed in itself) and the focus.
  function refresh(region) {
    return fetch(window.location.href, {
      headers: { "X-Dashboard-Fragment": "1" }, credentials: "same-origin", cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) { window.location.reload(); return; }  // signed out: show the sign-in page
      if (!response.ok) { return; }
      var version = response.headers.get("X-Dashboard-Version");
      return response.text().then(function (html) {
        if (version !== null && version === region.dataset.version) { return; }  // unchanged: leave it be
        var active = document.activeElement && region.contains(document.activeElement) ? document.activeElement : null;
        var tag = active && active.tagName;
        var keep = active && active.id && /^(INPUT|TEXTAREA|SELECT)$/.test(tag) && isEdited(active) ? active : null;
        var ticked = selectedIds(region), edited = editedValues(region);
        var swapped = swap(region, html);
        // The field being typed in goes back as it is, in place of its new twin: what is half
        // typed (a number's "1e" reads as "") stays, caret and all.
        var twinOfKept = keep && !document.contains(keep) ? document.getElementById(keep.id) : null;
        if (twinOfKept && region.contains(twinOfKept) && twinOfKept.tagName === tag) { twinOfKept.replaceWith(keep); }
        region.dataset.version = version || "";
        region.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = !!ticked[box.value]; });
        Object.keys(edited).forEach(function (id) {
          var field = document.getElementById(id);
          if (field && field !== keep && region.contains(field)) { field.value = edited[id]; }
        });
        swapped.forEach(enhance);
        // Its part was swapped: focus its twin, the control with the same id (ids name one action
        // on one thing: "cancel-job", "sel-42"), never whatever sits in its place now.
        if (active && active.id && document.activeElement !== active) {
          var twin = document.getElementById(active.id);
          if (twin && twin.tagName === tag && region.contains(twin)) { twin.focus({ preventScroll: true }); }
        }
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
    var busy = false, again = false, pending = null, connected = false, last = 0;
    function tick() {
      if (document.visibilityState !== "visible") { return; }
      if (busy) { again = true; return; }  // an event during a refresh: one more after it
      busy = true;
      last = Date.now();
      function done() { busy = false; if (again) { again = false; soon(); } }
      Promise.all(regions.map(refresh)).then(done, done);
    }
    function soon() {
      if (pending === null) { pending = window.setTimeout(function () { pending = null; tick(); }, EVENT_DELAY_MS); }
    }
    if (regions.length) {
      window.setInterval(function () {
        if (!connected || Date.now() - last >= CONNECTED_POLL_MS) { tick(); }
      }, POLL_MS);
      document.addEventListener("visibilitychange", tick);
      if (window.EventSource) {
        var tenant = new URLSearchParams(window.location.search).get("tenant");
        var stream = new EventSource("/dashboard/events" + (tenant ? "?tenant=" + encodeURIComponent(tenant) : ""));
        stream.onopen = function () { connected = true; };
        stream.onerror = function () { connected = false; };  // it reconnects by itself, unless refused (not 200): then polling goes on
        stream.onmessage = soon;
        stream.addEventListener("reset", soon);
      }
    }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
