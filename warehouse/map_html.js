// city-audit map.html: draws the run's data (embedded once, columnar, see warehouse/map_html.py map_data)
// with the vendored Leaflet. Segments and images are each one canvas layer (FeatureCanvas below), not
// one Leaflet object per feature: a redraw is one stroke per colour over the features in view, so a
// city of 100,000 segments opens and pans quickly. Switching the attribute re-colours and redraws.
(function () {
  "use strict";
  var t0 = performance.now();
  var dataElement = document.getElementById("city-audit-data");
  var D = JSON.parse(dataElement.textContent);
  dataElement.textContent = "";  // the parsed copy is all the page needs: let the browser free the text (tens of MB)
  var S = D.segments, I = D.images;
  var root = document.documentElement;

  function esc(text) {
    return String(text == null ? "" : text).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(value, digits) {
    return value == null ? "n/a" : Number(value).toFixed(digits);
  }
  function perMille(value) {  // -1 = missing
    return value < 0 ? null : value / 1000;
  }

  // Web-mercator world coordinates in [0, 1] (Leaflet's EPSG:3857 at zoom z is 256 * 2^z times these).
  function decode(xy) {
    var n = xy.length / 2, u = new Float64Array(n), v = new Float64Array(n), lon = 0, lat = 0, d = Math.PI / 180;
    for (var k = 0; k < n; k++) {
      lon += xy[2 * k]; lat += xy[2 * k + 1];
      var s = Math.sin(Math.max(Math.min(lat * 1e-6, 85.0511287798), -85.0511287798) * d);
      u[k] = (lon * 1e-6 + 180) / 360;
      v[k] = 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI);
    }
    return {u: u, v: v};
  }

  var SP = decode(S.xy), start = new Int32Array(S.n + 1);
  var minU = new Float64Array(S.n), maxU = new Float64Array(S.n), minV = new Float64Array(S.n), maxV = new Float64Array(S.n);
  for (var i = 0; i < S.n; i++) {
    start[i + 1] = start[i] + S.nv[i];
    minU[i] = minV[i] = Infinity; maxU[i] = maxV[i] = -Infinity;
    for (var k = start[i]; k < start[i + 1]; k++) {
      if (SP.u[k] < minU[i]) minU[i] = SP.u[k]; if (SP.u[k] > maxU[i]) maxU[i] = SP.u[k];
      if (SP.v[k] < minV[i]) minV[i] = SP.v[k]; if (SP.v[k] > maxV[i]) maxV[i] = SP.v[k];
    }
  }
  var IP = decode(I.xy);
  S.xy = I.xy = null;  // decoded into typed arrays: the plain arrays would only cost garbage-collection time

  // A Leaflet layer that owns one canvas over the map and repaints it after every move or zoom.
  var FeatureCanvas = L.Layer.extend({
    initialize: function (paint, zIndex) { this._paint = paint; this._zIndex = zIndex; },
    onAdd: function (map) {
      this._canvas = L.DomUtil.create("canvas", "city-audit-canvas leaflet-zoom-hide");
      this._canvas.style.zIndex = this._zIndex;
      map.getPanes().overlayPane.appendChild(this._canvas);
      map.on("moveend zoomend resize viewreset", this.redraw, this);
      this.redraw();
    },
    onRemove: function (map) {
      map.off("moveend zoomend resize viewreset", this.redraw, this);
      L.DomUtil.remove(this._canvas);
    },
    redraw: function () {
      if (!this._map) return;
      var map = this._map, size = map.getSize(), ratio = window.devicePixelRatio || 1, canvas = this._canvas;
      L.DomUtil.setPosition(canvas, map.containerPointToLayerPoint([0, 0]));
      canvas.width = size.x * ratio; canvas.height = size.y * ratio;
      canvas.style.width = size.x + "px"; canvas.style.height = size.y + "px";
      var ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      this._paint(ctx, view(map));
    }
  });

  function view(map) {  // world-to-container transform and the visible world box (with a margin)
    var scale = 256 * Math.pow(2, map.getZoom()), origin = map.getPixelBounds().min, size = map.getSize(), m = 8;
    return {scale: scale, ox: origin.x, oy: origin.y, u0: (origin.x - m) / scale, u1: (origin.x + size.x + m) / scale,
            v0: (origin.y - m) / scale, v1: (origin.y + size.y + m) / scale};
  }

  var current = null, colourOf = new Int16Array(S.n);  // per segment: class index or -1
  function paintSegments(ctx, w) {
    if (!current) return;
    var inView = 0;
    for (var q = 0; q < S.n; q++) if (!(maxU[q] < w.u0 || minU[q] > w.u1 || maxV[q] < w.v0 || minV[q] > w.v1)) inView++;
    var crowded = inView > 5000;  // a whole city in view: thin lines with plain ends rasterise many times faster
    ctx.lineCap = crowded ? "butt" : "round"; ctx.lineJoin = crowded ? "miter" : "round"; ctx.globalAlpha = 0.9;
    for (var c = -1; c < current.classes.length; c++) {  // no images first (thin, grey), then each class
      ctx.beginPath();
      var any = false;
      for (var j = 0; j < S.n; j++) {
        if (colourOf[j] !== c || maxU[j] < w.u0 || minU[j] > w.u1 || maxV[j] < w.v0 || minV[j] > w.v1) continue;
        var k = start[j];
        ctx.moveTo(SP.u[k] * w.scale - w.ox, SP.v[k] * w.scale - w.oy);
        for (k++; k < start[j + 1]; k++) ctx.lineTo(SP.u[k] * w.scale - w.ox, SP.v[k] * w.scale - w.oy);
        any = true;
      }
      if (!any) continue;
      ctx.strokeStyle = c < 0 ? D.noDataColour : current.colours[c];
      ctx.lineWidth = crowded ? (c < 0 ? 1 : 2) : (c < 0 ? 2 : 4);
      ctx.stroke();
    }
  }
  function paintImages(ctx, w) {
    var inView = [];
    for (var m = 0; m < I.n; m++) {
      if (!(IP.u[m] < w.u0 || IP.u[m] > w.u1 || IP.v[m] < w.v0 || IP.v[m] > w.v1)) inView.push(m);
    }
    var crowded = inView.length > 5000;  // many images in view: small squares, so the streets stay visible
    ctx.beginPath();
    inView.forEach(function (m) {
      var x = IP.u[m] * w.scale - w.ox, y = IP.v[m] * w.scale - w.oy;
      if (crowded) { ctx.rect(x - 1, y - 1, 2, 2); return; }
      ctx.moveTo(x + 4, y);
      ctx.arc(x, y, 4, 0, 2 * Math.PI);
    });
    ctx.globalAlpha = crowded ? 0.6 : 0.8; ctx.fillStyle = "#000000"; ctx.fill();
    if (!crowded) { ctx.globalAlpha = 1; ctx.lineWidth = 1; ctx.strokeStyle = "#000000"; ctx.stroke(); }
  }

  var map = L.map("map", {attributionControl: true, zoomControl: true});
  window.cityAuditMap = map;  // for the browser console and the tests
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a> (BSD-2)');
  D.attribution.forEach(function (line) { map.attributionControl.addAttribution(esc(line)); });
  L.control.scale({metric: true, imperial: false}).addTo(map);
  var segmentLayer = new FeatureCanvas(paintSegments, 1), imageLayer = new FeatureCanvas(paintImages, 2);

  // Clicks: the nearest image within 6 px, else the nearest segment within 6 px (all in container pixels).
  function nearestImage(p, w) {
    var best = -1, bestD = 36;
    for (var m = 0; m < I.n; m++) {
      var dx = IP.u[m] * w.scale - w.ox - p.x, dy = IP.v[m] * w.scale - w.oy - p.y, d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = m; }
    }
    return best;
  }
  function nearestSegment(p, w) {
    var best = -1, bestD = 36, pu = (p.x + w.ox) / w.scale, pv = (p.y + w.oy) / w.scale, r = 6 / w.scale;
    for (var j = 0; j < S.n; j++) {
      if (maxU[j] < pu - r || minU[j] > pu + r || maxV[j] < pv - r || minV[j] > pv + r) continue;
      for (var k = start[j]; k + 1 < start[j + 1]; k++) {
        var ax = SP.u[k] * w.scale - w.ox, ay = SP.v[k] * w.scale - w.oy;
        var bx = SP.u[k + 1] * w.scale - w.ox, by = SP.v[k + 1] * w.scale - w.oy;
        var ex = bx - ax, ey = by - ay, len = ex * ex + ey * ey;
        var t = len ? Math.max(0, Math.min(1, ((p.x - ax) * ex + (p.y - ay) * ey) / len)) : 0;
        var dx = ax + t * ex - p.x, dy = ay + t * ey - p.y, d = dx * dx + dy * dy;
        if (d < bestD) { bestD = d; best = j; }
      }
    }
    return best;
  }

  function segmentPopup(i) {
    var rows = [["segment", esc(S.segment_id[i])], ["name", esc(S.name[i] < 0 ? "" : S.names[S.name[i]])],
                ["highway", esc(S.highway[i] < 0 ? "" : S.highways[S.highway[i]])],
                ["length", S.length_m[i] < 0 ? "n/a" : S.length_m[i] + " m"], ["images", esc(Math.max(S.n_images[i], 0))]];
    D.attributes.forEach(function (a) {
      var A = S.attrs[a.name], k = A.label[i];
      rows.push([a.title, k < 0 ? "no images" : esc(a.classes[k]) + " (share " + fmt(perMille(A.share[i]), 2) +
                 ", 95 % " + fmt(perMille(A.lo[i]), 2) + "&ndash;" + fmt(perMille(A.hi[i]), 2) + ")"]);
    });
    return "<table class='popup'>" + rows.map(function (r) {
      return "<tr><th>" + esc(r[0]) + "</th><td>" + r[1] + "</td></tr>";  // r[1] is escaped HTML
    }).join("") + "</table>";
  }
  function imagePopup(j) {
    var s = I.segment[j];
    var html = "<table class='popup'><tr><th>image</th><td>" + esc(I.image_id[j]) + "</td></tr>" +
               "<tr><th>captured</th><td>" + esc(I.captured_at[j] || "n/a") + "</td></tr>";
    html += s >= 0 ? "<tr><th>segment</th><td>" + esc(S.segment_id[s]) + " (" + fmt(I.distance_dm[j] / 10, 1) + " m)</td></tr>"
                   : "<tr><th>not matched</th><td>" + esc(I.reason[j] < 0 ? "" : I.reasons[I.reason[j]]) + "</td></tr>";
    D.attributes.forEach(function (a) {
      var k = I.labels[a.name][j];
      html += "<tr><th>" + esc(a.title) + "</th><td>" + (k < 0 ? "n/a" : esc(a.classes[k]) + " (" +
              fmt(perMille(I.confidence[a.name][j]), 2) + ")") + "</td></tr>";
    });
    html += "</table>";
    if (I.thumb[j]) {
      var src = I.thumb[j];  // already a URL (contracts.results.image_href)
      html += "<img class='thumb' src='" + esc(src) + "' alt='" + esc(I.image_id[j]) + "'>";
    }
    return html;
  }
  map.on("click", function (e) {
    var w = view(map), j = map.hasLayer(imageLayer) ? nearestImage(e.containerPoint, w) : -1;
    if (j >= 0) { L.popup({maxWidth: 320}).setLatLng(e.latlng).setContent(imagePopup(j)).openOn(map); return; }
    var i = map.hasLayer(segmentLayer) ? nearestSegment(e.containerPoint, w) : -1;
    if (i >= 0) L.popup().setLatLng(e.latlng).setContent(segmentPopup(i)).openOn(map);
  });

  var legend = L.control({position: "bottomright"});
  legend.onAdd = function () {
    this._div = L.DomUtil.create("div", "legend");
    this._div.id = "legend";
    return this._div;
  };
  legend.update = function (a) {
    var counts = a.classes.map(function () { return 0; }), none = 0, labels = S.attrs[a.name].label;
    for (var j = 0; j < S.n; j++) { if (labels[j] < 0) none++; else counts[labels[j]]++; }
    var html = "<h4>" + esc(a.title) + "</h4><p class='sub'>dominant label per road segment</p>";
    a.classes.forEach(function (cls, j) {
      html += "<div class='item'><span class='swatch' style='background:" + a.colours[j] + "'></span>" +
              esc(cls.replace(/_/g, " ")) + " <span class='n'>(" + counts[j] + ")</span></div>";
    });
    html += "<div class='item'><span class='swatch thin' style='background:" + D.noDataColour + "'></span>no images " +
            "<span class='n'>(" + none + ")</span></div>";
    html += "<div class='item'><span class='dot'></span>image (" + I.n + ")</div>";
    this._div.innerHTML = html;
  };
  legend.addTo(map);

  function show(a) {  // colour the segments by attribute a: one pass over its labels, one redraw
    current = a;
    var labels = S.attrs[a.name].label;
    for (var j = 0; j < S.n; j++) colourOf[j] = labels[j] < a.classes.length ? labels[j] : -1;
    segmentLayer.redraw();
    legend.update(a);
    root.dataset.attribute = a.name;
  }

  var base = {};
  D.attributes.forEach(function (a) { a.group = L.layerGroup(); base[a.layer] = a.group; });
  var background = L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png",
                               {maxZoom: 19, attribution: "background &copy; OpenStreetMap contributors"});
  var overlays = {"road segments": segmentLayer, "images": imageLayer, "OpenStreetMap background (needs network)": background};
  L.control.layers(base, overlays, {collapsed: false, position: "topright"}).addTo(map);
  map.on("baselayerchange", function (e) {
    D.attributes.forEach(function (a) { if (a.group === e.layer) show(a); });
  });

  if (D.bounds) map.fitBounds(D.bounds, {padding: [20, 20]}); else map.setView([0, 0], 2);
  var shown = D.attributes.filter(function (a) { return a.name === D.shown; })[0] || D.attributes[0];
  segmentLayer.addTo(map);
  imageLayer.addTo(map);
  if (shown) { show(shown); shown.group.addTo(map); }
  if (D.empty) document.getElementById("empty-note").hidden = false;
  root.dataset.segmentsDrawn = String(S.n);
  root.dataset.imagesDrawn = String(I.n);
  root.dataset.readyMs = String(Math.round(performance.now()));
  root.dataset.scriptMs = String(Math.round(performance.now() - t0));
  root.dataset.ready = "1";
})();
