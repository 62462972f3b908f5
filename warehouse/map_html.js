// city-audit map.html: draws the run's data (embedded once, columnar) with the vendored Leaflet.
// One canvas polyline per segment; switching the attribute re-colours them and the legend.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("city-audit-data").textContent);
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

  var map = L.map("map", {preferCanvas: true, attributionControl: true, zoomControl: true});
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a> (BSD-2)');
  D.attribution.forEach(function (line) { map.attributionControl.addAttribution(esc(line)); });
  L.control.scale({metric: true, imperial: false}).addTo(map);
  var renderer = L.canvas({padding: 0.5});

  var lines = [];
  for (var i = 0; i < S.n; i++) {
    var c = S.coords[i], latlngs = [];
    for (var k = 0; k + 1 < c.length; k += 2) latlngs.push([c[k + 1], c[k]]);
    var line = L.polyline(latlngs, {renderer: renderer, color: D.noDataColour, weight: 2, opacity: 0.9});
    line.segmentIndex = i;
    lines.push(line);
  }
  var segmentLayer = L.featureGroup(lines);
  var current = null;

  function segmentPopup(i) {
    var rows = [["segment", esc(S.segment_id[i])], ["name", esc(S.name[i])], ["highway", esc(S.highway[i])],
                ["length", fmt(S.length_m[i], 0) + " m"], ["images", esc(S.n_images[i])]];
    D.attributes.forEach(function (a) {
      var A = S.attrs[a.name], k = A.label[i];
      rows.push([a.title, k < 0 ? "no images" : esc(a.classes[k]) + " (share " + fmt(A.share[i], 2) +
                 ", 95 % " + fmt(A.lo[i], 2) + "&ndash;" + fmt(A.hi[i], 2) + ")"]);
    });
    return "<table class='popup'>" + rows.map(function (r) {
      return "<tr><th>" + esc(r[0]) + "</th><td>" + r[1] + "</td></tr>";  // r[1] is escaped HTML
    }).join("") + "</table>";
  }
  segmentLayer.on("click", function (e) {
    L.popup().setLatLng(e.latlng).setContent(segmentPopup(e.layer.segmentIndex)).openOn(map);
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

  function show(a) {
    current = a;
    var labels = S.attrs[a.name].label;
    for (var j = 0; j < lines.length; j++) {  // options only, then one redraw: setStyle would queue 100,000 redraws
      var k = labels[j], o = lines[j].options;
      o.color = k < 0 ? D.noDataColour : a.colours[k];
      o.weight = k < 0 ? 2 : 4;
    }
    if (map.hasLayer(segmentLayer)) renderer._redraw();  // Leaflet 1.9 canvas: repaint every path
    legend.update(a);
    root.dataset.attribute = a.name;
  }

  var images = [];
  for (var m = 0; m < I.n; m++) {
    var point = L.circleMarker([I.lat[m], I.lon[m]], {renderer: renderer, radius: 4, color: "#000000", weight: 1,
                                                      fillColor: "#000000", fillOpacity: 0.8});
    point.imageIndex = m;
    images.push(point);
  }
  var imageLayer = L.featureGroup(images);
  imageLayer.on("click", function (e) {
    var j = e.layer.imageIndex;
    var html = "<table class='popup'><tr><th>image</th><td>" + esc(I.image_id[j]) + "</td></tr>" +
               "<tr><th>captured</th><td>" + esc(I.captured_at[j] || "n/a") + "</td></tr>";
    html += I.segment_id[j] ? "<tr><th>segment</th><td>" + esc(I.segment_id[j]) + " (" + fmt(I.distance_m[j], 1) + " m)</td></tr>"
                            : "<tr><th>not matched</th><td>" + esc(I.unmatched_reason[j]) + "</td></tr>";
    D.attributes.forEach(function (a) {
      var k = I.labels[a.name][j];
      html += "<tr><th>" + esc(a.title) + "</th><td>" + (k < 0 ? "n/a" : esc(a.classes[k]) + " (" +
              fmt(I.confidence[a.name][j], 2) + ")") + "</td></tr>";
    });
    html += "</table>";
    if (I.thumb[j]) html += "<img class='thumb' src='" + esc(I.thumb[j]) + "' alt='" + esc(I.image_id[j]) + "'>";
    L.popup({maxWidth: 320}).setLatLng(e.latlng).setContent(html).openOn(map);
  });

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
  if (shown) { show(shown); shown.group.addTo(map); }
  segmentLayer.addTo(map);
  imageLayer.addTo(map);
  if (D.empty) document.getElementById("empty-note").hidden = false;
  root.dataset.segmentsDrawn = String(lines.length);
  root.dataset.imagesDrawn = String(images.length);
  root.dataset.ready = "1";
})();
