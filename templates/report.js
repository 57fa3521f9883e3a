"use strict";
// reportgen report behaviour: thumbnails from the page's data block, sortable tables,
// and selectors that show one class / one layer at a time.  No network, no eval.
(function () {
  var dataNode = document.getElementById("page-data");
  var data = dataNode ? JSON.parse(dataNode.textContent) : { thumbs: {} };
  var thumbs = data.thumbs || {};
  // The explorer (explorer.js, in the same inline script) shows some of these too.
  window.reportgenThumbs = thumbs;

  // Thumbnails are stored once per image and referenced by key, so an image shown in
  // several tables is embedded once.
  function fillThumbs(root) {
    var imgs = root.querySelectorAll("img[data-thumb]");
    for (var i = 0; i < imgs.length; i++) {
      var uri = thumbs[imgs[i].getAttribute("data-thumb")];
      if (uri && !imgs[i].getAttribute("src")) { imgs[i].setAttribute("src", uri); }
    }
  }
  fillThumbs(document);

  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) { return ""; }
    var raw = cell.getAttribute("data-sort");
    if (raw === null) { raw = cell.textContent.trim(); }
    var num = parseFloat(raw.replace(/[%,]/g, ""));
    return isNaN(num) ? raw.toLowerCase() : num;
  }

  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.querySelectorAll("thead th");
    Array.prototype.forEach.call(heads, function (th, index) {
      th.addEventListener("click", function () {
        var dir = th.getAttribute("data-dir") === "desc" ? "asc" : "desc";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", dir);
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          if (x < y) { return dir === "asc" ? -1 : 1; }
          if (x > y) { return dir === "asc" ? 1 : -1; }
          return 0;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });

  // <select data-controls="NAME"> shows only the elements with data-group="NAME" whose
  // data-key equals the chosen value ("*" shows all).
  var selects = document.querySelectorAll("select[data-controls]");
  Array.prototype.forEach.call(selects, function (select) {
    var group = select.getAttribute("data-controls");
    function apply() {
      var value = select.value;
      var items = document.querySelectorAll('[data-group="' + group + '"]');
      Array.prototype.forEach.call(items, function (item) {
        var keys = (item.getAttribute("data-key") || "").split(" ");
        var show = value === "*" || keys.indexOf(value) >= 0;
        item.classList.toggle("hidden", !show);
      });
    }
    // A filter that may pick items folded away (data-opens names the <details>) unfolds them.
    var folded = select.getAttribute("data-opens");
    select.addEventListener("change", function () {
      apply();
      var details = folded ? document.getElementById(folded) : null;
      if (details && select.value !== "*") { details.open = true; }
    });
    apply();
  });
})();
