// mibo-ingest console: progressive enhancement only. Every page works without it.
// Served from this origin (the Content-Security-Policy allows no inline script); all text from the
// server is put in with textContent, never as HTML.
"use strict";

function ageText(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  var days = Math.floor(seconds / 86400);
  return days + (days === 1 ? " day" : " days");
}

function relativeText(date) {
  var seconds = (Date.now() - date.getTime()) / 1000;
  if (seconds < 10) return "just now";
  var units = [[31536000, "year"], [86400, "day"], [3600, "hour"], [60, "minute"]];
  for (var i = 0; i < units.length; i++) {
    if (seconds >= units[i][0]) {
      var n = Math.floor(seconds / units[i][0]);
      return n + " " + units[i][1] + (n === 1 ? "" : "s") + " ago";
    }
  }
  return Math.floor(seconds) + " seconds ago";
}

function tick() {
  document.querySelectorAll("[data-since]").forEach(function (el) {
    var since = new Date(el.getAttribute("data-since"));
    if (!isNaN(since)) el.textContent = ageText((Date.now() - since.getTime()) / 1000);
  });
  document.querySelectorAll("time[data-relative]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) el.textContent = relativeText(when);
  });
}

function setupCopy() {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var id = button.getAttribute("data-copy");
      var field = document.getElementById(id);
      var note = document.querySelector('[data-copied-for="' + id + '"]');
      var done = function (ok) {
        if (note) note.textContent = ok ? "Copied to the clipboard." : "Select the key and copy it (Ctrl+C).";
        button.textContent = ok ? "Copied" : "Copy";
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () {
          field.select(); done(document.execCommand && document.execCommand("copy"));
        });
      } else {
        field.select();
        done(document.execCommand && document.execCommand("copy"));
      }
    });
  });
}

function setupSelectAll() {
  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    var name = box.getAttribute("data-select-all");
    box.addEventListener("change", function () {
      box.form.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (b) { b.checked = box.checked; });
    });
  });
}

function setupPlatformForm() {
  var form = document.querySelector("form[data-platform-form]");
  if (!form) return;
  var type = form.querySelector("select[name=type]");
  var apply = function () {
    form.querySelectorAll("[data-for-type]").forEach(function (block) {
      block.hidden = block.getAttribute("data-for-type") !== type.value;
    });
  };
  type.addEventListener("change", apply);
  apply();
}

function setupKeyForm() {
  // Ticking a platform means "only these platforms".
  var form = document.querySelector("form[data-key-form]");
  if (!form) return;
  var some = form.querySelector("input[name=scope][value=some]");
  form.querySelectorAll("input[name=platform_ids]").forEach(function (box) {
    box.addEventListener("change", function () { if (box.checked && some) some.checked = true; });
  });
}

function cell(text, className) {
  var td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fillCounts(table, rows) {
  var body = table.querySelector("tbody");
  while (body.firstChild) body.removeChild(body.firstChild);
  if (!rows.length) {
    var tr = document.createElement("tr");
    var td = cell("none", "muted");
    td.colSpan = 3;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  rows.forEach(function (row) {
    var tr = document.createElement("tr");
    tr.appendChild(cell(row.label));
    tr.appendChild(cell(String(row.count)));
    var oldest = document.createElement("td");
    if (row.oldest) {
      var span = document.createElement("span");
      span.setAttribute("data-since", row.oldest);
      span.title = row.oldest;
      oldest.appendChild(span);
    } else {
      oldest.textContent = "-";
    }
    tr.appendChild(oldest);
    body.appendChild(tr);
  });
}

function poll(url, every, apply) {
  var run = function () {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) { window.location = "/signin?next=" + encodeURIComponent(location.pathname + location.search); return null; }
        return resp.ok ? resp.json() : null;
      })
      .then(function (data) { if (data) { apply(data); tick(); } })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { setTimeout(run, every); });
  };
  setTimeout(run, every);
}

function setupDeadLetterCounts() {
  var section = document.getElementById("dlq-counts");
  if (!section) return;
  poll(section.getAttribute("data-url"), 3000, function (data) {
    section.querySelector("[data-total]").textContent = String(data.total);
    var oldest = section.querySelector("[data-oldest]");
    if (oldest && data.oldest) oldest.setAttribute("data-since", data.oldest);
    fillCounts(document.getElementById("by-reason"), data.byReason);
    fillCounts(document.getElementById("by-platform"), data.byPlatform);
    fillCounts(document.getElementById("by-key"), data.byKey);
  });
}

function setupPipeline() {
  var section = document.getElementById("pipeline");
  if (!section) return;
  var totals = { "accepted": ["ingest accepted"], "replayed": ["dlq replays since the router started"], "routed": ["router routed"],
    "dead-lettered": ["router dead-lettered", "storage dead-lettered"], "stored": ["storage stored", "storage replaced"] };
  var apply = function (data) {
    Object.keys(totals).forEach(function (name) {
      var row = section.querySelector('tr[data-rate="' + name + '"]');
      if (!row) return;
      var rate = data.rates[name];
      row.querySelector(".rate").textContent = rate === null ? "measuring…" : rate.toFixed(1);
      var sum = totals[name].reduce(function (a, label) { return a + (data.counters[label] || 0); }, 0);
      row.querySelector(".total").textContent = String(Math.round(sum));
    });
    data.stages.forEach(function (stage) {
      var row = section.querySelector('tr[data-stage="' + stage.name + '"]');
      if (row) row.querySelector(".lag").textContent = stage.lag === null ? "-" : String(stage.lag);
    });
    Object.keys(data.counters).forEach(function (name) {
      var el = section.querySelector('[data-counter="' + name + '"]');
      if (el) el.textContent = String(Math.round(data.counters[name]));
    });
    var verdict = document.getElementById("reconciles");
    verdict.className = data.reconciles ? "ok" : "bad";
    verdict.textContent = data.reconciles === null ? "Unknown: a service's metrics did not answer."
      : data.reconciles ? "Yes: every accepted (or replayed) trace is routed or dead-lettered, every routed one stored, skipped as a duplicate or dead-lettered."
      : "Not right now (traces in flight, or a service restarted and its counters began again).";
    var checks = document.getElementById("checks");
    while (checks.firstChild) checks.removeChild(checks.firstChild);
    (data.checks || []).forEach(function (c) {
      var li = document.createElement("li");
      li.className = c.ok ? "ok" : "bad";
      li.textContent = (c.ok ? "ok" : "MISMATCH") + ": " + c.rule;
      checks.appendChild(li);
    });
    var kafka = section.querySelector(".kafka-error");
    kafka.hidden = !data.kafkaError;
    kafka.textContent = data.kafkaError || "";
  };
  poll(section.getAttribute("data-url"), 2000, apply);
  fetch(section.getAttribute("data-url"), { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; }).then(function (d) { if (d) apply(d); });
}

document.addEventListener("DOMContentLoaded", function () {
  setupCopy();
  setupSelectAll();
  setupPlatformForm();
  setupKeyForm();
  setupDeadLetterCounts();
  setupPipeline();
  tick();
  setInterval(tick, 1000);
});
