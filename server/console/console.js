// qistatus console: the overview's live list. Everything else works without JavaScript.
// Values are written with textContent, never as HTML.
(function () {
  "use strict";
  var table = document.getElementById("live");
  if (!table || !window.EventSource) return;
  var body = table.querySelector("tbody");
  var source = new EventSource(table.getAttribute("data-source"));
  source.addEventListener("change", function (event) {
    var change = JSON.parse(event.data);
    var row = document.createElement("tr");
    row.className = "fresh";
    var cell = function (text, className) {
      var td = document.createElement("td");
      if (className) td.className = className;
      td.textContent = text;
      row.appendChild(td);
      return td;
    };
    cell(String(change.sequence), "num");
    cell(change.kind);
    var keyCell = cell("");
    var link = document.createElement("a");
    link.href = change.href;
    link.textContent = change.key;
    keyCell.appendChild(link);
    cell(change.status);
    var phase = document.createElement("span");
    phase.className = "phase phase-" + change.phase;
    phase.textContent = change.phase;
    cell("").appendChild(phase);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 100) body.deleteRow(body.rows.length - 1);
  });
})();
