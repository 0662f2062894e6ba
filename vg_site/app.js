// VectorGeo web map: click a place, ask the search API for the most similar cells, draw and list them.
// Plain script, no build step; Leaflet is vendored in vendor/leaflet, the drawing tools (Leaflet-Geoman) in
// vendor/leaflet-geoman. window.vg exposes the state (tests and the browser console read it).
"use strict";

(() => {
  const API_KEY = "vg.api";
  const DEFAULT_API = "api"; // the local server (python -m vectorgeo.serve) serves the handler under /api/
  const RAMP = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"]; // viridis: low -> high
  const $ = (id) => document.getElementById(id);

  const state = {
    api: "", // the API base URL
    loading: false,
    error: "", // the message shown, "" when none
    results: [], // the properties of the result features, best first
    query: null, // the answer's query member
    selected: null, // rank of the highlighted result
    searches: 0, // searches answered so far
    overview: null, // the land-cover overview's metadata once loaded, false when there is none
    area: null, // the drawn area filter, null when none: {kind: "box" | "polygon", param: {bbox} | {polygon}, words}
    drawing: false, // a box or polygon is being drawn: map clicks place its corners, they do not search
    labelMode: false, // label mode (labels.js): map clicks mark cells, they do not search
  };
  const map = L.map("map", { worldCopyJump: true }).setView([20, 0], 2);
  map.createPane("landcover").style.zIndex = 350; // under the result hexagons (overlayPane, 400)
  map.createPane("area").style.zIndex = 390; // the drawn area: over the land cover, under the results
  L.control.scale({ imperial: false }).addTo(map);
  window.vg = { state, map }; // and vg.ui (below): what labels.js borrows

  const resultsLayer = L.featureGroup().addTo(map);
  const queryLayer = L.featureGroup().addTo(map);
  const areaLayer = L.featureGroup().addTo(map);
  const layerByRank = new Map();
  let controller = null;
  let lastClick = null; // [lat, lng] of the last search, searched again when the area changes

  // ---- the API endpoint: ?api= wins (for this visit only: a link must not re-point the page for good),
  // then the one saved with "Use", then the local server's /api ----
  function initialApi() {
    const fromUrl = new URLSearchParams(location.search).get("api");
    return fromUrl || localStorage.getItem(API_KEY) || DEFAULT_API;
  }

  function apiUrl(route, params) {
    const base = state.api.replace(/\/+$/, "") + "/";
    const url = new URL(route, new URL(base, location.href));
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== "" && value !== null && value !== undefined) url.searchParams.set(key, value);
    }
    return url;
  }

  // GET route?params, or with init = {method: "POST", body: an object sent as JSON}. A refusal throws an Error
  // with the API's own message and the HTTP status (err.status).
  async function callApi(route, params, signal, init = {}) {
    const url = apiUrl(route, params);
    const headers = { Accept: "application/json" };
    const request = { signal, headers, method: init.method || "GET" };
    if (init.body !== undefined) {
      headers["Content-Type"] = "application/json";
      request.body = JSON.stringify(init.body);
    }
    let response;
    try {
      response = await fetch(url, request);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error(`Cannot reach the API at ${url.origin}${url.pathname}: ${err.message}. Check the endpoint.`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // a non-JSON answer: a wrong endpoint (an HTML page) or a proxy error
    }
    if (!response.ok) {
      const reason = body && body.error ? body.error : `HTTP ${response.status} ${response.statusText}`;
      throw Object.assign(new Error(reason), { status: response.status });
    }
    if (body === null) throw new Error(`${url.pathname} did not answer JSON; is ${state.api} a VectorGeo API?`);
    return body;
  }

  // ---- status and errors ----
  function setStatus(text, loading = false) {
    state.loading = loading;
    $("status").textContent = text;
    $("status").classList.toggle("loading", loading);
  }

  function showError(message) {
    state.error = message || "";
    $("error").textContent = state.error;
    $("error").hidden = !state.error;
  }

  // ---- colours ----
  function hexToRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function rampColor(t) {
    const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 1)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const a = hexToRgb(RAMP[i]);
    const b = hexToRgb(RAMP[i + 1]);
    const mix = a.map((v, j) => Math.round(v + (b[j] - v) * (x - i)));
    return `rgb(${mix.join(",")})`;
  }

  // ---- formatting ----
  const fmtKm = (km) => (km == null ? "" : km < 10 ? `${km.toFixed(1)} km` : `${Math.round(km)} km`);

  function fmtTop(percentile) {
    if (percentile == null) return "";
    const top = 100 - percentile;
    return top < 0.1 ? "top <0.1 %" : `top ${top < 10 ? top.toFixed(1) : Math.round(top)} %`;
  }

  function describe(explanation) {
    if (!explanation) return "";
    const parts = (explanation.classes || []).slice(0, 3).map((c) => `${c.name} ${Math.round(c.fraction * 100)} %`);
    const elevation = explanation.mean_elevation_m;
    if (Number.isFinite(elevation)) parts.push(`${Math.round(elevation)} m`);
    return parts.join(" · ");
  }

  // ---- land-cover overview and legends ----
  function legendControl(position, build) {
    const control = L.control({ position });
    control.onAdd = () => {
      const div = L.DomUtil.create("div", "legend");
      L.DomEvent.disableClickPropagation(div);
      L.DomEvent.disableScrollPropagation(div);
      build(div);
      return div;
    };
    return control.addTo(map);
  }

  function addBasemapToggle(div) {
    const basemap = L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
      maxZoom: 19,
      attribution: "&copy; OpenStreetMap contributors",
    });
    const label = L.DomUtil.create("label", "", div);
    label.innerHTML = '<input type="checkbox" id="basemap"> online basemap (OpenStreetMap)';
    label.querySelector("input").addEventListener("change", (e) => {
      if (e.target.checked) basemap.addTo(map);
      else basemap.remove();
    });
  }

  async function loadOverview() {
    let meta = null;
    try {
      const response = await fetch("overview/landcover.json");
      if (response.ok) meta = await response.json();
    } catch {
      // no overview next to the page: the map works without it
    }
    legendControl("bottomright", (div) => {
      if (!meta) {
        div.innerHTML = "<h2>Land cover</h2><div>no overview next to this page</div>";
        addBasemapToggle(div);
        return;
      }
      const b = meta.bounds;
      const bounds = [
        [b.south, b.west],
        [b.north, b.east],
      ];
      const image = L.imageOverlay("overview/landcover.png", bounds, { opacity: 0.65, pane: "landcover" }).addTo(map);
      map.fitBounds(bounds, { animate: false });
      const details = L.DomUtil.create("details", "", div);
      details.open = true;
      L.DomUtil.create("summary", "", details).textContent = `Land cover (${meta.legend})`;
      for (const c of meta.classes) {
        const item = L.DomUtil.create("div", "item", details);
        const chip = L.DomUtil.create("span", "chip", item);
        chip.style.background = c.color;
        const name = L.DomUtil.create("span", "", item);
        name.textContent = `${c.name} (${(c.fraction * 100).toFixed(c.fraction < 0.01 ? 1 : 0)} %)`;
      }
      const opacity = L.DomUtil.create("label", "", div);
      opacity.innerHTML = 'opacity <input type="range" min="0" max="1" step="0.05" value="0.65">';
      opacity.querySelector("input").addEventListener("input", (e) => image.setOpacity(Number(e.target.value)));
      addBasemapToggle(div);
    });
    state.overview = meta || false; // the map is placed: tests may click now
  }

  const rampLegend = legendControl("bottomleft", (div) => {
    div.hidden = true;
    div.innerHTML =
      '<h2>Similarity (cosine)</h2><div class="ramp"></div><div class="ends"><span></span><span></span></div>';
    div.querySelector(".ramp").style.background = `linear-gradient(to right, ${RAMP.join(",")})`;
  });

  function showRamp(lo, hi) {
    const div = rampLegend.getContainer();
    const [left, right] = div.querySelectorAll(".ends span");
    left.textContent = lo.toFixed(3);
    right.textContent = hi.toFixed(3);
    div.hidden = false;
  }

  // ---- search ----
  function readControls() {
    const value = (id) => $(id).value.trim();
    return {
      k: value("k") || 10,
      radius_km: Number(value("radius_km")) > 0 ? value("radius_km") : "",
      min_score: value("min_score"),
      min_separation_km: Number(value("min_separation_km")) > 0 ? value("min_separation_km") : "",
      store: value("store"),
      ...(state.area ? state.area.param : {}),
    };
  }

  function drawQuery(collection, lat, lng, radiusKm) {
    queryLayer.clearLayers();
    L.circleMarker([lat, lng], { radius: 4, color: "#111", weight: 2, fillOpacity: 1, className: "vg-click" }).addTo(
      queryLayer,
    );
    // the filter measures from the query cell's centre, not the click
    const centre = (collection.query && collection.query.center) || { lat, lng };
    if (radiusKm) {
      L.circle([centre.lat, centre.lng], {
        radius: radiusKm * 1000,
        color: "#1f5fa8",
        weight: 2,
        dashArray: "6 5",
        fill: false,
        className: "vg-radius",
        interactive: false,
      }).addTo(queryLayer);
    }
    const geometry = collection.query && collection.query.geometry;
    if (geometry) {
      L.geoJSON(geometry, {
        style: { color: "#000", weight: 3, fill: false, className: "vg-query" },
        interactive: false,
      }).addTo(queryLayer);
    }
  }

  function tooltip(p) {
    const div = document.createElement("div"); // text only: class names come from the API's legend
    div.append(`#${p.rank} · score ${Number(p.score).toFixed(3)} ${fmtTop(p.percentile)}`, document.createElement("br"));
    div.append(describe(p.explanation));
    return div;
  }

  function render(collection, lat, lng, params) {
    resultsLayer.clearLayers();
    layerByRank.clear();
    state.selected = null;
    const features = collection.features || [];
    const scores = features.map((f) => f.properties.score);
    const lo = Math.min(...scores);
    const hi = Math.max(...scores);
    const scale = (s) => (hi > lo ? (s - lo) / (hi - lo) : 1);
    state.results = features.map((f) => f.properties);
    state.query = collection.query || null;
    drawQuery(collection, lat, lng, Number(params.radius_km) || 0);

    const list = $("results");
    list.replaceChildren();
    const query = collection.query;
    if (query && query.cells && query.cells.length) {
      const li = document.createElement("li");
      li.className = "query";
      li.innerHTML = '<span class="rank">Q</span><span class="where"></span><span></span><span class="detail"></span>';
      li.querySelector(".where").textContent = query.cells.join(", ");
      li.querySelector(".detail").textContent = describe(query.explanation) || "the clicked cell";
      list.append(li);
    }
    for (const feature of features) {
      const p = feature.properties;
      const color = rampColor(scale(p.score));
      const layer = L.geoJSON(feature, {
        style: { color: "#fff", weight: 1.5, fillColor: color, fillOpacity: 0.85, className: "vg-result" },
      });
      layer.bindTooltip(tooltip(p));
      layer.on("click", (e) => {
        if (state.drawing || state.labelMode) return; // the map's click places a corner, or labels the cell
        L.DomEvent.stopPropagation(e);
        select(p.rank);
      });
      layer.addTo(resultsLayer);
      layerByRank.set(p.rank, layer);

      const li = document.createElement("li");
      li.dataset.rank = p.rank;
      li.innerHTML = // structure only: every value from the API goes in as text
        '<span class="rank"></span><span class="score"><span class="swatch"></span><span class="value"></span></span>' +
        '<span class="where"></span><span class="detail"></span>';
      li.querySelector(".rank").textContent = String(p.rank);
      li.querySelector(".swatch").style.background = color;
      li.querySelector(".value").textContent = Number(p.score).toFixed(3);
      li.querySelector(".where").textContent = [fmtTop(p.percentile), fmtKm(p.distance_km)].filter(Boolean).join(" · ");
      li.querySelector(".detail").textContent = `${p.h3} · ${describe(p.explanation)}`;
      li.addEventListener("click", () => select(p.rank, true));
      list.append(li);
    }
    if (features.length) showRamp(lo, hi);
    const model = collection.model ? ` · model ${collection.model}` : "";
    const store = collection.store ? ` · ${collection.store}` : "";
    const within = state.area ? ` within the drawn ${state.area.kind}` : "";
    setStatus(`${features.length} similar cells${within}${store}${model}`);
  }

  function select(rank, zoom = false) {
    const layer = layerByRank.get(rank);
    if (!layer) return;
    for (const [r, other] of layerByRank)
      other.setStyle(r === rank ? { color: "#000", weight: 3 } : { color: "#fff", weight: 1.5 });
    layer.bringToFront();
    for (const li of $("results").children) li.classList.toggle("active", Number(li.dataset.rank) === rank);
    state.selected = rank;
    if (zoom) map.flyToBounds(layer.getBounds(), { maxZoom: 12, duration: 0.6 });
    else $("results").querySelector(`li[data-rank="${rank}"]`)?.scrollIntoView({ block: "nearest" });
  }

  async function search(lat, lng) {
    lastClick = [lat, lng];
    if (controller) controller.abort();
    controller = new AbortController();
    const params = readControls();
    showError("");
    setStatus("Searching…", true);
    try {
      const collection = await callApi(
        "search",
        { lat: lat.toFixed(6), lng: lng.toFixed(6), ...params },
        controller.signal,
      );
      state.searches += 1;
      render(collection, lat, lng, params);
    } catch (err) {
      if (err.name === "AbortError") return;
      setStatus("");
      showError(err.message);
    }
  }

  function offerStores(health) {
    const select = $("store");
    if (!Array.isArray(health.stores)) return;
    const chosen = select.value;
    select.replaceChildren(new Option(`${health.default_store} (default)`, ""));
    for (const kind of health.stores) select.append(new Option(kind, kind));
    select.value = health.stores.includes(chosen) ? chosen : "";
  }

  async function checkHealth() {
    setStatus("Connecting…", true);
    try {
      const health = await callApi("health", { store: $("store").value });
      offerStores(health);
      if (health.reachable === false) throw new Error(health.error || `store ${health.store} does not answer`);
      const count = Number.isFinite(health.count) ? `${health.count.toLocaleString()} cells` : "";
      const bits = [
        health.model && `model ${health.model}`,
        health.resolution != null && `res ${health.resolution}`,
        health.store,
        count,
      ];
      setStatus(`Ready: ${bits.filter(Boolean).join(" · ")}. Click on land.`);
      showError("");
    } catch (err) {
      setStatus("");
      showError(err.message);
    }
  }

  // ---- the area filter: a box (the API's bbox) or a polygon (its polygon), drawn with Leaflet-Geoman ----
  const wrapLng = (lng) => ((((lng + 180) % 360) + 360) % 360) - 180;
  const fmtLat = (lat) => `${Math.abs(lat).toFixed(2)}°${lat < 0 ? "S" : "N"}`;
  const fmtLng = (lng) => `${Math.abs(lng).toFixed(2)}°${lng < 0 ? "W" : "E"}`;
  const round6 = (v) => Number(v.toFixed(6));
  // interactive: false lets a click inside the area search from there; pmIgnore: the drawing tools leave it be
  const AREA_STYLE = { color: "#d9480f", weight: 2, dashArray: "4 4", fillOpacity: 0.06, className: "vg-area" };
  const AREA_OPTIONS = { ...AREA_STYLE, interactive: false, pane: "area", pmIgnore: true };

  // The API's bbox: west,south,east,north in degrees, longitudes in -180..180 (west > east crosses 180°).
  function boxArea(bounds) {
    const south = round6(Math.max(-90, bounds.getSouth()));
    const north = round6(Math.min(90, bounds.getNorth()));
    let west = bounds.getWest();
    let east = bounds.getEast();
    if (east - west >= 360) [west, east] = [-180, 180];
    else [west, east] = [round6(wrapLng(west)), round6(wrapLng(east))];
    if (east === -180) east = 180;
    const words = `within the drawn box (${fmtLng(west)} to ${fmtLng(east)}, ${fmtLat(south)} to ${fmtLat(north)})`;
    const shape = L.rectangle(bounds, AREA_OPTIONS);
    return { kind: "box", param: { bbox: [west, south, east, north].join(",") }, words, shape };
  }

  // The API's polygon: lng,lat,lng,lat,... (an open ring), shifted whole to the world copy of its centre.
  function polygonArea(latlngs) {
    const centre = L.latLngBounds(latlngs).getCenter();
    const shift = wrapLng(centre.lng) - centre.lng; // a multiple of 360
    const ring = latlngs.map((p) => [round6(p.lng + shift), round6(Math.max(-90, Math.min(90, p.lat)))]);
    if (ring.some(([lng]) => lng < -180 || lng > 180))
      throw new Error("The drawn polygon crosses the antimeridian (180°): draw it on one side, or draw a box.");
    if (ring.length > 500) throw new Error(`The drawn polygon has ${ring.length} vertices; the API takes at most 500.`);
    const words = `within the drawn polygon (${ring.length} vertices)`;
    const shape = L.polygon(latlngs, AREA_OPTIONS);
    return { kind: "polygon", param: { polygon: ring.flat().join(",") }, words, shape };
  }

  function setArea(area) {
    areaLayer.clearLayers();
    state.area = area ? { kind: area.kind, param: area.param, words: area.words } : null;
    if (area) area.shape.addTo(areaLayer);
    $("area").textContent = area ? area.words : "anywhere: draw a box or a polygon with the tools on the map";
    $("area-clear").hidden = !area;
    const radius = $("radius_km"); // the API takes one of radius_km, bbox and polygon
    if (area) radius.value = "";
    radius.disabled = !!area;
    radius.placeholder = area ? "off: area drawn" : "anywhere";
    if (lastClick) search(...lastClick);
  }

  map.pm.setLang(
    "en",
    {
      buttonTitles: {
        drawRectButton: "Draw a box: search only inside it (click two corners)",
        drawPolyButton: "Draw a polygon: search only inside it (click the vertices, then the first one again)",
      },
    },
    "en",
  );
  map.pm.setGlobalOptions({
    snappable: false,
    allowSelfIntersection: false, // the API takes a simple ring
    exitModeOnEscape: true,
    pathOptions: AREA_STYLE,
  });
  map.pm.addControls({
    position: "topleft",
    drawMarker: false,
    drawCircleMarker: false,
    drawPolyline: false,
    drawRectangle: true,
    drawPolygon: true,
    drawCircle: false,
    drawText: false,
    editMode: false,
    dragMode: false,
    cutPolygon: false,
    removalMode: false,
    rotateMode: false,
  });
  for (const [shape, label] of [
    ["rectangle", "Draw a box filter"],
    ["polygon", "Draw a polygon filter"],
  ]) {
    const button = document.querySelector(`.leaflet-pm-icon-${shape}`)?.closest("a");
    if (button) {
      button.setAttribute("aria-label", label);
      button.classList.add(`vg-draw-${shape}`);
    }
  }
  map.on("pm:drawstart", () => {
    state.drawing = true;
  });
  // the click that finishes a shape reaches the map after pm:drawend: stop ignoring clicks once it is through
  map.on("pm:drawend", () => setTimeout(() => (state.drawing = false), 0));
  map.on("pm:create", (e) => {
    e.layer.remove(); // redrawn by setArea from the values sent, in its own pane
    try {
      setArea(e.shape === "Rectangle" ? boxArea(e.layer.getBounds()) : polygonArea(e.layer.getLatLngs()[0]));
    } catch (err) {
      showError(err.message);
    }
  });

  // ---- wiring ----
  window.vg.ui = { callApi, setStatus, showError, legendControl, boxArea };
  state.api = initialApi();
  $("api").value = state.api;
  $("api-save").addEventListener("click", () => {
    state.api = $("api").value.trim() || DEFAULT_API;
    localStorage.setItem(API_KEY, state.api);
    checkHealth();
  });
  $("api").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      $("api-save").click();
    }
  });
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  $("store").addEventListener("change", checkHealth);
  map.on("click", (e) => {
    if (state.drawing) return;
    const [lat, lng] = [e.latlng.lat, e.latlng.wrap().lng];
    if (state.labelMode && window.vg.labelClick) window.vg.labelClick(lat, lng);
    else search(lat, lng);
  });
  $("area-clear").addEventListener("click", () => setArea(null));

  loadOverview();
  checkHealth();
})();
