// reportgen explorer: the aligned t-SNE maps as one interactive scatter on a canvas.
// Reads the packed arrays in #explorer-data (see reportgen/explorer_page.py for their
// layout).  No network, no eval, no innerHTML: every name from disk goes in as text.
(function () {
  "use strict";
  var root = document.querySelector("[data-explorer]");
  var node = document.getElementById("explorer-data");
  if (!root || !node) { return; }
  var D = JSON.parse(node.textContent);
  var thumbs = window.reportgenThumbs || {};
  var n = D.n, L = D.layers.length, K = D.k;

  // ---------------------------------------------------------------- decoding
  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { out[i] = s.charCodeAt(i); }
    return out;
  }
  // The arrays are little-endian, as every browser's typed arrays are in practice.
  function typed(b64, Type) { var b = bytes(b64); return new Type(b.buffer, 0, b.length / Type.BYTES_PER_ELEMENT); }
  var q = typed(D.pos, Uint16Array);
  var nb = typed(D.nb, D.nbBytes === 4 ? Uint32Array : Uint16Array);
  var label = typed(D.label, Int32Array), pred = typed(D.pred, Int32Array);
  var conf16 = typed(D.conf, Uint16Array), susp16 = typed(D.suspect, Uint16Array), correct = typed(D.correct, Int8Array);
  var B = D.bounds;
  var pos = [];  // per layer: Float32Array(2n) of map coordinates
  for (var l = 0; l < L; l++) {
    var a = new Float32Array(2 * n);
    for (var i = 0; i < n; i++) {
      a[2 * i] = B[0] + (B[1] - B[0]) * q[2 * (l * n + i)] / 65535;
      a[2 * i + 1] = B[2] + (B[3] - B[2]) * q[2 * (l * n + i) + 1] / 65535;
    }
    pos.push(a);
  }
  var wrong = new Uint8Array(n), flagged = new Uint8Array(n);
  var mislabel = {}, dups = {}, cams = {}, byFile = {};
  for (i = 0; i < n; i++) {
    wrong[i] = correct[i] === 0 ? 1 : 0;
    byFile[D.files[i]] = i;
  }
  D.mislabels.forEach(function (m) { mislabel[m[0]] = m[1]; flagged[m[0]] = 1; });
  D.duplicates.forEach(function (d) { dups[d[0]] = d[1]; flagged[d[0]] = 1; });
  D.cams.forEach(function (c) { cams[c[0]] = c[1]; });
  function conf(i) { return conf16[i] / 65535; }
  function suspect(i) { return susp16[i] === 65535 ? null : susp16[i] / 65534; }
  function className(v) { return v >= 0 ? D.names[v] : "unlabeled"; }

  // ---------------------------------------------------------------- elements
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function ctl(name) { return root.querySelector('[data-x="' + name + '"]'); }
  var canvas = root.querySelector("canvas");
  var ctx = canvas.getContext("2d");
  var hover = root.querySelector("[data-explorer-hover]");
  var panel = root.querySelector("[data-explorer-panel]");
  var slider = ctl("layer"), layerName = ctl("layer-name"), playBtn = ctl("play");
  var colourSel = ctl("colour"), classSel = ctl("class"), wrongBox = ctl("wrong"), suspBox = ctl("suspects");
  var search = ctl("search"), count = ctl("count"), legend = ctl("legend");

  // ---------------------------------------------------------------- thumbnails
  var sheets = D.thumbs.sheets.map(function (uri) { var img = new Image(); img.src = uri; return img; });
  var side = D.thumbs.side;
  function tileAt(i) {
    var j = i % D.thumbs.perSheet;
    return { img: sheets[Math.floor(i / D.thumbs.perSheet)], x: (j % D.thumbs.columns) * side, y: Math.floor(j / D.thumbs.columns) * side };
  }
  var tileUris = {};
  function tileUri(i, done) {
    // The report's own 96 px thumbnail where it has one, else the sprite's tile.
    var own = thumbs["a:" + D.files[i]];
    if (own) { done(own); return; }
    if (tileUris[i]) { done(tileUris[i]); return; }
    var t = tileAt(i);
    function make() {
      var c = document.createElement("canvas");
      c.width = side; c.height = side;
      c.getContext("2d").drawImage(t.img, t.x, t.y, side, side, 0, 0, side, side);
      tileUris[i] = c.toDataURL("image/png");
      done(tileUris[i]);
    }
    if (t.img.complete && t.img.naturalWidth) { make(); } else { t.img.addEventListener("load", make, { once: true }); }
  }

  // ---------------------------------------------------------------- colours
  var VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function ramp(v) {
    var x = Math.max(0, Math.min(1, v)) * (VIRIDIS.length - 1), k = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - k;
    var c = VIRIDIS[k].map(function (a, j) { return Math.round(a + (VIRIDIS[k + 1][j] - a) * f); });
    return "rgb(" + c.join(",") + ")";
  }
  var RAMP_STEPS = 24;
  var RIGHT = "#2563eb", WRONG = "#ea580c", NONE = "#9ca3af";
  var palette = [], colourOf = new Int32Array(n);
  function recolour() {
    var mode = colourSel.value;
    if (mode === "label" || mode === "pred") {
      palette = D.colours.concat([NONE]);
      for (var i = 0; i < n; i++) {
        var v = mode === "label" ? label[i] : pred[i];
        colourOf[i] = v >= 0 ? v : D.colours.length;
      }
    } else if (mode === "correct") {
      palette = [RIGHT, WRONG, NONE];
      for (i = 0; i < n; i++) { colourOf[i] = correct[i] < 0 ? 2 : wrong[i]; }
    } else {
      palette = [];
      for (var s = 0; s < RAMP_STEPS; s++) { palette.push(ramp(s / (RAMP_STEPS - 1))); }
      palette.push(NONE);
      for (i = 0; i < n; i++) {
        var x = mode === "conf" ? conf(i) : suspect(i);
        colourOf[i] = x === null ? RAMP_STEPS : Math.round(x * (RAMP_STEPS - 1));
      }
    }
    paletteRgb = palette.map(rgb);
    markers = {};
    drawLegend(mode);
    refilter();
  }
  function swatch(colour, shape) {
    var c = el("span", "xsw " + shape);
    if (shape !== "ring") { c.style.background = colour; }
    return c;
  }
  function legendItem(colour, shape, text) { var s = el("span"); s.appendChild(swatch(colour, shape)); s.appendChild(document.createTextNode(text)); legend.appendChild(s); }
  function drawLegend(mode) {
    legend.textContent = "";
    if (mode === "label" || mode === "pred") {
      var present = {};
      for (var i = 0; i < n; i++) { present[mode === "label" ? label[i] : pred[i]] = true; }
      var shown = 0;
      var LEGEND_CLASSES = 40, more = 0;
      D.names.forEach(function (name, c) {
        if (!present[c]) { return; }
        if (shown < LEGEND_CLASSES) { legendItem(D.colours[c], "dot", name); shown++; } else { more++; }
      });
      if (more) { legend.appendChild(el("span", "muted", "… and " + more + " more (pick a class above)")); }
    } else if (mode === "correct") {
      legendItem(RIGHT, "dot", "right"); legendItem(WRONG, "diamond", "wrong");
    } else {
      var bar = el("span", "xramp");
      bar.style.background = "linear-gradient(to right," + [0, 0.25, 0.5, 0.75, 1].map(ramp).join(",") + ")";
      legend.appendChild(el("span", "", mode === "conf" ? "confidence 0" : "mislabel score 0"));
      legend.appendChild(bar);
      legend.appendChild(el("span", "", "1"));
      if (mode === "suspect") { legendItem(NONE, "dot", "unlabeled"); }
    }
    if (D.labeled) {
      legendItem("#fff", "diamond", "misclassified");
      legendItem("#fff", "ring", "suspected mislabel or near-duplicate");
    }
  }

  // ---------------------------------------------------------------- filters
  var visible = new Uint8Array(n), nVisible = 0;
  function refilter() {
    var cls = parseInt(classSel.value, 10), onlyWrong = wrongBox && wrongBox.checked, onlySusp = suspBox && suspBox.checked;
    var needle = search.value.trim().toLowerCase();
    nVisible = 0;
    for (var i = 0; i < n; i++) {
      var ok = (cls < 0 || label[i] === cls || (label[i] < 0 && pred[i] === cls)) && (!onlyWrong || wrong[i]) &&
        (!onlySusp || flagged[i]) && (!needle || D.files[i].toLowerCase().indexOf(needle) >= 0);
      visible[i] = ok ? 1 : 0;
      if (ok) { nVisible++; }
    }
    count.textContent = nVisible.toLocaleString() + " of " + n.toLocaleString() + " shown" +
      (D.sampled ? " (a sample of " + D.nTotal.toLocaleString() + " images)" : "");
    requestDraw();
  }

  // ---------------------------------------------------------------- view
  var W = 0, H = 0, dpr = 1, zoom = 1, panX = 0, panY = 0;
  var cx = (B[0] + B[1]) / 2, cy = (B[2] + B[3]) / 2;
  var cur = new Float32Array(pos[L - 1]), from = new Float32Array(2 * n);
  var layer = L - 1;
  var radius = n > 5000 ? 2.3 : n > 1500 ? 3 : 4;
  function resize() {
    var r = canvas.getBoundingClientRect();
    dpr = Math.min(2, window.devicePixelRatio || 1);  // sharper than 2x costs frame time for nothing visible
    W = Math.max(100, r.width); H = Math.max(100, r.height);
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    requestDraw();
  }
  function scale() {
    var pad = 18;
    return Math.min((W - 2 * pad) / Math.max(B[1] - B[0], 1e-9), (H - 2 * pad) / Math.max(B[3] - B[2], 1e-9)) * zoom;
  }
  // Map coordinates to CSS pixels within the canvas (y up, as in the t-SNE figures).
  function sx(x, s) { return W / 2 + (x - cx) * s + panX; }
  function sy(y, s) { return H / 2 - (y - cy) * s + panY; }
  function project(i) { var s = scale(); return [sx(cur[2 * i], s), sy(cur[2 * i + 1], s)]; }

  // ---------------------------------------------------------------- drawing
  var selected = -1, hovered = -1, pending = false;
  var stats = { draws: [], intervals: [], lastFrame: 0, readyMs: 0 };
  function requestDraw() { if (!pending) { pending = true; window.requestAnimationFrame(frame); } }
  // The markers are stamped into one pixel buffer: thousands of canvas path operations
  // cost tens of milliseconds per frame on a software canvas, the stamps a few.
  // A shape lists the pixels it covers (offsets from its centre pixel) and how much of
  // each (4x4 supersampling), so edges are anti-aliased; a marker is shapes painted in
  // order (fill, then outline), flattened into one premultiplied colour and opacity per pixel.
  function shape(inside, reach) {
    var px = {}, R = Math.ceil(reach) + 1;
    for (var y = -R; y <= R; y++) {
      for (var x = -R; x <= R; x++) {
        var cov = 0;
        for (var v = 0; v < 4; v++) {
          for (var u = 0; u < 4; u++) { if (inside(x + (u + 0.5) / 4 - 0.5, y + (v + 0.5) / 4 - 0.5)) { cov++; } }
        }
        if (cov) { px[x + "," + y] = cov / 16; }
      }
    }
    return { px: px, reach: R };
  }
  function marker(parts) {
    var acc = {}, reach = 0;
    parts.forEach(function (part) {
      var sh = part[0], c = part[1], alpha = part[2];
      reach = Math.max(reach, sh.reach);
      Object.keys(sh.px).forEach(function (key) {
        var f = sh.px[key] * alpha, m = acc[key] || [0, 0, 0, 0];
        acc[key] = [m[0] * (1 - f) + c[0] * f, m[1] * (1 - f) + c[1] * f, m[2] * (1 - f) + c[2] * f, m[3] * (1 - f) + f];
      });
    });
    var keys = Object.keys(acc), k = keys.length;
    var mk = {
      dx: new Int16Array(k), dy: new Int16Array(k), r: new Int32Array(k), g: new Int32Array(k), b: new Int32Array(k),
      keep: new Int32Array(k), reach: reach, offsets: null, width: 0
    };
    keys.forEach(function (key, j) {
      var xy = key.split(","), m = acc[key];
      mk.dx[j] = +xy[0]; mk.dy[j] = +xy[1];
      mk.r[j] = Math.round(m[0] * 256); mk.g[j] = Math.round(m[1] * 256); mk.b[j] = Math.round(m[2] * 256);
      mk.keep[j] = 256 - Math.round(m[3] * 256);  // how much of what is below shows through
    });
    return mk;
  }
  var shapes = null, markers = {}, shapeDpr = 0;
  function makeShapes() {
    var r = radius * dpr, d = (radius + 1.6) * dpr, line = 1.1 * dpr, ringR = (radius + 3) * dpr;
    shapes = {
      disc: shape(function (x, y) { return x * x + y * y <= r * r; }, r),
      diamond: shape(function (x, y) { return Math.abs(x) + Math.abs(y) <= d; }, d),
      edge: shape(function (x, y) { var m = Math.abs(x) + Math.abs(y); return m <= d && m > d - line; }, d),
      ring: shape(function (x, y) { var m = Math.sqrt(x * x + y * y); return m <= ringR && m > ringR - line; }, ringR),
      faint: shape(function (x, y) { return Math.abs(x) <= dpr && Math.abs(y) <= dpr; }, dpr)
    };
    markers = {};
    shapeDpr = dpr;
  }
  var INK = [17, 17, 17], FAINT = [156, 163, 175];
  // Outlines lighten as the map fills up, so that thousands of them do not hide the colours.
  var OUTLINE = n > 5000 ? 0.5 : n > 1500 ? 0.75 : 1;
  function markerFor(kind, b) {
    var list = markers[kind] || (markers[kind] = []), m = list[b];
    if (m) { return m; }
    if (kind === "disc") { m = marker([[shapes.disc, paletteRgb[b], 1]]); }
    else if (kind === "wrong") { m = marker([[shapes.diamond, paletteRgb[b], 1], [shapes.edge, INK, OUTLINE]]); }
    else if (kind === "ring") { m = marker([[shapes.ring, INK, OUTLINE * 0.8]]); }
    else { m = marker([[shapes.faint, FAINT, 0.35]]); }
    list[b] = m;
    return m;
  }
  var order = new Uint32Array(n), seed = 12345;
  for (i = 0; i < n; i++) { order[i] = i; }
  for (i = n - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    var sw = seed % (i + 1), tmp = order[i];
    order[i] = order[sw]; order[sw] = tmp;
  }
  function rgb(css) {
    var c = document.createElement("canvas").getContext("2d");
    c.fillStyle = css;
    var h = c.fillStyle;  // normalised to #rrggbb
    return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)];
  }
  var paletteRgb = [], frameData = null, buf = null;
  function put(m, px, py, w, h) {
    var out = buf, dx = m.dx, dy = m.dy, R = m.r, G = m.g, Bl = m.b, keep = m.keep, all = dx.length, k, o, t;
    if (px - m.reach >= 0 && py - m.reach >= 0 && px + m.reach < w && py + m.reach < h) {
      // Away from the edges (nearly always): the pixels' byte offsets are the marker's.
      var off = m.offsets, base = (py * w + px) << 2;
      if (m.width !== w) { off = m.offsets = new Int32Array(all); m.width = w; for (k = 0; k < all; k++) { off[k] = (dy[k] * w + dx[k]) << 2; } }
      for (k = 0; k < all; k++) {
        o = base + off[k]; t = keep[k];
        out[o] = (out[o] * t + R[k]) >> 8;
        out[o + 1] = (out[o + 1] * t + G[k]) >> 8;
        out[o + 2] = (out[o + 2] * t + Bl[k]) >> 8;
      }
      return;
    }
    for (k = 0; k < all; k++) {
      var x = px + dx[k], y = py + dy[k];
      if (x < 0 || y < 0 || x >= w || y >= h) { continue; }
      o = (y * w + x) << 2; t = keep[k];
      out[o] = (out[o] * t + R[k]) >> 8;
      out[o + 1] = (out[o + 1] * t + G[k]) >> 8;
      out[o + 2] = (out[o + 2] * t + Bl[k]) >> 8;
    }
  }
  function draw() {
    var t0 = performance.now(), s = scale(), r = radius, i, j, x, y, m;
    if (!shapes || shapeDpr !== dpr) { makeShapes(); }
    var w = canvas.width, h = canvas.height;
    if (!frameData || frameData.width !== w || frameData.height !== h) {
      frameData = ctx.createImageData(w, h);
      buf = new Uint8Array(frameData.data.buffer);
    }
    buf.fill(255);
    // Device pixel of a map coordinate, inlined in the loops below (no allocation per point).
    var ax = s * dpr, bx = (W / 2 - cx * s + panX) * dpr, by = (H / 2 + cy * s + panY) * dpr;
    if (nVisible < n) {
      m = markerFor("faint", 0);
      for (i = 0; i < n; i++) {
        if (!visible[i]) { put(m, Math.round(ax * cur[2 * i] + bx), Math.round(by - ax * cur[2 * i + 1]), w, h); }
      }
    }
    // In a fixed shuffled order, not class by class: where classes overlap, none is
    // drawn over all the others.
    for (j = 0; j < n; j++) {
      i = order[j];
      if (visible[i] && !wrong[i]) { put(markerFor("disc", colourOf[i]), Math.round(ax * cur[2 * i] + bx), Math.round(by - ax * cur[2 * i + 1]), w, h); }
    }
    // Misclassified: outlined diamonds, drawn on top so they are never hidden.
    for (j = 0; j < n; j++) {
      i = order[j];
      if (visible[i] && wrong[i]) { put(markerFor("wrong", colourOf[i]), Math.round(ax * cur[2 * i] + bx), Math.round(by - ax * cur[2 * i + 1]), w, h); }
    }
    m = markerFor("ring", 0);
    for (i = 0; i < n; i++) {
      if (flagged[i] && visible[i]) { put(m, Math.round(ax * cur[2 * i] + bx), Math.round(by - ax * cur[2 * i + 1]), w, h); }
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.putImageData(frameData, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (selected >= 0) {
      var px = sx(cur[2 * selected], s), py = sy(cur[2 * selected + 1], s);
      ctx.strokeStyle = "rgba(17,24,39,0.55)"; ctx.lineWidth = 1.2;
      ctx.beginPath();
      for (j = 0; j < K; j++) {
        var m = nb[(layer * n + selected) * K + j];
        x = sx(cur[2 * m], s); y = sy(cur[2 * m + 1], s);
        ctx.moveTo(px, py); ctx.lineTo(x, y); ctx.moveTo(x + r + 2.5, y); ctx.arc(x, y, r + 2.5, 0, 6.2832);
      }
      ctx.stroke();
      ring(px, py, r + 6, "#fff", 5); ring(px, py, r + 6, "#111", 2.5);
    }
    if (hovered >= 0 && hovered !== selected) {
      ring(sx(cur[2 * hovered], s), sy(cur[2 * hovered + 1], s), r + 4, "#111", 1.6);
    }
    stats.draws.push(performance.now() - t0);
    if (stats.draws.length > 2000) { stats.draws.shift(); }
  }
  function ring(x, y, rad, colour, width) {
    ctx.strokeStyle = colour; ctx.lineWidth = width;
    ctx.beginPath(); ctx.arc(x, y, rad, 0, 6.2832); ctx.stroke();
  }

  // ---------------------------------------------------------------- layers and animation
  var tween = null, playing = false, playTimer = 0, TWEEN_MS = 450;
  function frame(ts) {
    pending = false;
    if (stats.lastFrame && tween) { stats.intervals.push(ts - stats.lastFrame); if (stats.intervals.length > 2000) { stats.intervals.shift(); } }
    stats.lastFrame = tween ? ts : 0;
    if (tween) {
      // A frame's timestamp can precede the moment the tween was asked for: clamp at 0.
      var e = Math.max(0, Math.min(1, (ts - tween.start) / TWEEN_MS)), f = e < 0.5 ? 2 * e * e : 1 - Math.pow(-2 * e + 2, 2) / 2;
      var to = pos[tween.to];
      for (var i = 0; i < 2 * n; i++) { cur[i] = from[i] + (to[i] - from[i]) * f; }
      if (e >= 1) { tween = null; arrived(); } else { requestDraw(); }
    }
    draw();
  }
  function setLayer(l, animate) {
    l = Math.max(0, Math.min(L - 1, l));
    layer = l;
    slider.value = String(l);
    layerName.textContent = D.layers[l] + " (" + (l + 1) + "/" + L + ")";
    if (animate === false) { cur.set(pos[l]); tween = null; requestDraw(); }
    else { from.set(cur); tween = { to: l, start: performance.now() }; stats.lastFrame = 0; requestDraw(); }
    if (selected >= 0) { showPanel(selected); writeHash(); }
  }
  function arrived() {
    if (playing) {
      if (layer < L - 1) { playTimer = window.setTimeout(function () { setLayer(layer + 1); }, 500); }
      else { stopPlay(); }
    }
  }
  function stopPlay() { playing = false; window.clearTimeout(playTimer); playBtn.textContent = "\u25B6 Play"; }
  playBtn.addEventListener("click", function () {
    if (playing) { stopPlay(); return; }
    playing = true; playBtn.textContent = "\u275A\u275A Pause";
    if (layer >= L - 1) { setLayer(0, false); playTimer = window.setTimeout(function () { setLayer(1); }, 500); }
    else { setLayer(layer + 1); }
  });
  slider.addEventListener("input", function () { stopPlay(); setLayer(parseInt(slider.value, 10)); });

  // ---------------------------------------------------------------- hover and selection
  function pointAt(mx, my) {
    var s = scale(), best = -1, bestD = Math.pow(Math.max(radius + 4, 7), 2);
    for (var i = 0; i < n; i++) {
      if (!visible[i]) { continue; }
      var dx = sx(cur[2 * i], s) - mx, dy = sy(cur[2 * i + 1], s) - my, d2 = dx * dx + dy * dy;
      if (d2 < bestD) { bestD = d2; best = i; }
    }
    return best;
  }
  function describe(i, box) {
    box.appendChild(el("div", "mono", D.files[i]));
    if (D.labeled) { box.appendChild(el("div", "", "label " + className(label[i]))); }
    var p = el("div", "", "predicted " + D.names[pred[i]] + " · p " + conf(i).toFixed(3));
    if (wrong[i]) { p.className = "bad"; }
    box.appendChild(p);
  }
  function showHover(i, mx, my) {
    hovered = i;
    if (i < 0) { hover.classList.add("hidden"); requestDraw(); return; }
    hover.textContent = "";
    var img = image(null, D.files[i]);
    hover.appendChild(img);
    tileUri(i, function (uri) { if (hovered === i) { img.src = uri; } });
    describe(i, hover);
    hover.classList.remove("hidden");
    var x = mx + 16, y = my + 12, box = canvas.getBoundingClientRect();
    if (x + 250 > box.width) { x = mx - 16 - hover.offsetWidth; }
    if (y + hover.offsetHeight > box.height) { y = Math.max(0, my - 12 - hover.offsetHeight); }
    hover.style.left = x + "px"; hover.style.top = y + "px";
    requestDraw();
  }
  function image(src, alt, file) {
    var img = el("img"); img.alt = alt; if (file !== undefined) { img.setAttribute("data-file", file); }
    if (src) { img.src = src; }
    return img;
  }
  function showPanel(i) {
    panel.textContent = "";
    panel.appendChild(el("div", "xfile", D.files[i]));
    var pair = el("div", "xpair");
    var big = image(null, D.files[i]);
    tileUri(i, function (uri) { big.src = uri; });
    pair.appendChild(big);
    if (cams[i] && thumbs[cams[i]]) {
      pair.appendChild(image(thumbs[cams[i]], "activation map of " + D.files[i] + " for " + D.names[pred[i]]));
    }
    panel.appendChild(pair);
    if (!cams[i]) {
      panel.appendChild(el("p", "xnote", D.camMethod
        ? "No map for this image: the report computes " + D.camMethod + " maps for the galleries' images only."
        : "No activation map: the report could not compute maps for this model (see the galleries)."));
    } else {
      panel.appendChild(el("p", "xnote", D.camMethod + " map of the predicted class, " + D.names[pred[i]] + "."));
    }
    describe(i, panel);
    var sc = suspect(i);
    if (mislabel[i] !== undefined) {
      panel.appendChild(el("p", "bad", "Suspected mislabel: neighbours and model suggest " + mislabel[i] + " (score " + sc.toFixed(3) + ")."));
    } else if (sc !== null) {
      panel.appendChild(el("p", "xnote", "Not a suspected mislabel (score " + sc.toFixed(3) + ")."));
    }
    if (dups[i]) {
      var dp = el("div", "bad", "Near-duplicate of: ");
      dups[i].forEach(function (f, k) {
        if (k) { dp.appendChild(document.createTextNode(", ")); }
        var j = byFile[f];
        if (j === undefined) { dp.appendChild(el("span", "mono", f)); return; }
        var a = el("button", "linkish mono", f); a.type = "button";
        a.addEventListener("click", function () { select(j); });
        dp.appendChild(a);
      });
      panel.appendChild(dp);
    }
    panel.appendChild(el("h4", "", K + " nearest at " + D.layers[layer]));
    panel.appendChild(el("p", "xnote", D.metric + " distance among " + D.scope + "; green: same label, red: another."));
    var grid = el("div", "xnb");
    for (var j = 0; j < K; j++) {
      (function (m) {
        var b = el("button"); b.type = "button";
        b.title = D.files[m] + " · " + className(label[m]) + " · predicted " + D.names[pred[m]];
        if (label[i] >= 0 && label[m] >= 0) { b.className = label[m] === label[i] ? "match" : "miss"; }
        var img = image(null, D.files[m], D.files[m]);
        tileUri(m, function (uri) { img.src = uri; });
        b.appendChild(img);
        b.appendChild(el("span", "", className(label[m] >= 0 ? label[m] : pred[m])));
        b.addEventListener("click", function () { select(m); });
        grid.appendChild(b);
      })(nb[(layer * n + i) * K + j]);
    }
    panel.appendChild(grid);
  }
  function select(i) {
    selected = i;
    if (i < 0) {
      panel.textContent = "";
      panel.appendChild(el("p", "muted", "Click a point to see the image, its map and its neighbours."));
    } else { showPanel(i); }
    writeHash();
    requestDraw();
  }

  // ---------------------------------------------------------------- URL hash
  var HASH = "explore=";
  function writeHash() {
    if (!window.history || !window.history.replaceState) { return; }
    var h = selected >= 0 ? "#" + HASH + encodeURIComponent(D.files[selected]) + "&layer=" + encodeURIComponent(D.layers[layer]) : "#explore";
    try { window.history.replaceState(null, "", h); } catch (e) { /* some file: viewers refuse; the selection still works */ }
  }
  function readHash() {
    var h = window.location.hash.slice(1);
    if (h.indexOf(HASH) !== 0) { return false; }
    var parts = {};
    h.split("&").forEach(function (kv) { var p = kv.indexOf("="); if (p > 0) { parts[kv.slice(0, p)] = decodeURIComponent(kv.slice(p + 1)); } });
    var l = D.layers.indexOf(parts.layer);
    if (l >= 0) { setLayer(l, false); }
    var i = byFile[parts.explore];
    if (i !== undefined) { select(i); }
    root.scrollIntoView();
    return true;
  }
  window.addEventListener("hashchange", readHash);

  // ---------------------------------------------------------------- pointer, wheel, keys
  var drag = null;
  function local(ev) { var b = canvas.getBoundingClientRect(); return [ev.clientX - b.left, ev.clientY - b.top]; }
  canvas.addEventListener("pointerdown", function (ev) {
    var p = local(ev);
    drag = { x: p[0], y: p[1], px: panX, py: panY, moved: false };
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", function (ev) {
    var p = local(ev);
    if (drag) {
      if (Math.abs(p[0] - drag.x) + Math.abs(p[1] - drag.y) > 3) { drag.moved = true; }
      if (drag.moved) { panX = drag.px + p[0] - drag.x; panY = drag.py + p[1] - drag.y; showHover(-1); requestDraw(); return; }
    }
    showHover(pointAt(p[0], p[1]), p[0], p[1]);
  });
  canvas.addEventListener("pointerup", function (ev) {
    var p = local(ev), was = drag;
    drag = null;
    if (was && !was.moved) { var i = pointAt(p[0], p[1]); if (i >= 0) { select(i); } }
  });
  canvas.addEventListener("pointerleave", function () { if (!drag) { showHover(-1); } });
  function zoomAt(factor, mx, my) {
    var s0 = scale();
    var x = cx + (mx - W / 2 - panX) / s0, y = cy - (my - H / 2 - panY) / s0;
    zoom = Math.max(0.5, Math.min(200, zoom * factor));
    var s1 = scale();
    panX = mx - W / 2 - (x - cx) * s1; panY = my - H / 2 + (y - cy) * s1;
    requestDraw();
  }
  canvas.addEventListener("wheel", function (ev) {
    // Only once the map has the focus (or with Ctrl): scrolling the report past the map stays scrolling.
    if (document.activeElement !== canvas && !ev.ctrlKey) { return; }
    ev.preventDefault();
    var p = local(ev);
    zoomAt(Math.exp(-ev.deltaY * 0.0015), p[0], p[1]);
  }, { passive: false });
  function resetView() { zoom = 1; panX = 0; panY = 0; requestDraw(); }
  ctl("zoom-in").addEventListener("click", function () { zoomAt(1.5, W / 2, H / 2); });
  ctl("zoom-out").addEventListener("click", function () { zoomAt(1 / 1.5, W / 2, H / 2); });
  ctl("reset").addEventListener("click", resetView);
  function step(dx, dy) {
    // The nearest visible point in the arrow's direction (within a 45-degree cone, else the nearest ahead).
    var s = scale(), o;
    if (selected >= 0) { o = [sx(cur[2 * selected], s), sy(cur[2 * selected + 1], s)]; }
    else { o = [W / 2, H / 2]; }
    var best = -1, bestScore = Infinity;
    for (var i = 0; i < n; i++) {
      if (!visible[i] || i === selected) { continue; }
      var vx = sx(cur[2 * i], s) - o[0], vy = sy(cur[2 * i + 1], s) - o[1];
      var along = vx * dx + vy * dy, across = Math.abs(vx * dy - vy * dx);
      if (along <= 0 && selected >= 0) { continue; }
      var score = along + 2.5 * across;
      if (score < bestScore) { bestScore = score; best = i; }
    }
    if (best >= 0) { select(best); }
  }
  canvas.addEventListener("keydown", function (ev) {
    var k = ev.key, handled = true;
    if (k === "ArrowRight") { step(1, 0); }
    else if (k === "ArrowLeft") { step(-1, 0); }
    else if (k === "ArrowUp") { step(0, -1); }
    else if (k === "ArrowDown") { step(0, 1); }
    else if (k === "]") { stopPlay(); setLayer(layer + 1); }
    else if (k === "[") { stopPlay(); setLayer(layer - 1); }
    else if (k === "+" || k === "=") { zoomAt(1.5, W / 2, H / 2); }
    else if (k === "-") { zoomAt(1 / 1.5, W / 2, H / 2); }
    else if (k === "0") { resetView(); }
    else if (k === "Escape") { select(-1); }
    else { handled = false; }
    if (handled) { ev.preventDefault(); }
  });

  // ---------------------------------------------------------------- controls
  colourSel.addEventListener("change", recolour);
  [classSel, wrongBox, suspBox].forEach(function (c) { if (c) { c.addEventListener("change", refilter); } });
  search.addEventListener("input", refilter);
  search.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") { return; }
    for (var i = 0; i < n; i++) { if (visible[i]) { select(i); canvas.focus(); return; } }
  });
  if (window.ResizeObserver) { new ResizeObserver(resize).observe(canvas); } else { window.addEventListener("resize", resize); }

  // For tests and the benchmark: where a point is drawn, and the frame statistics.
  window.reportgenExplorer = {
    count: n, project: project, pointAt: pointAt, select: select, setLayer: setLayer, stats: stats,
    layer: function () { return layer; }, selected: function () { return selected; },
    moving: function () { return tween !== null; }
  };

  resize();
  setLayer(L - 1, false);
  recolour();
  readHash();
  stats.readyMs = performance.now();  // since navigation began: the page parsed and the explorer set up
})();
