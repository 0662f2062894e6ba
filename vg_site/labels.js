// VectorGeo label mode: mark cells with classes, train a classifier on them over the view (POST {api}/classify),
// draw the predicted cells by class, and export the labels as GeoJSON for flow 06 (--labels).
// Loaded after app.js, whose window.vg.ui lends the API client, the status line and the legends.
// window.vg.labels exposes the state and layers (tests and the browser console read them).
"use strict";

(() => {
  const { map, state: page, ui } = window.vg;
  const $ = (id) => document.getElementById(id);
  const STORE_KEY = "vg.labels";
  const FIXED = { positive: "#1a9850", negative: "#d73027" };
  const fixedColor = (name) => (Object.hasOwn(FIXED, name) ? FIXED[name] : undefined); // never the prototype's
  // new classes take the first free colour; picked to stand apart from each other and the default pair
  const PALETTE = ["#7b3294", "#f4a300", "#00a6a6", "#c51b7d", "#1f5fa8", "#8c510a", "#66a61e", "#4d4d4d", "#e7298a"];
  const DEFAULT_OPACITY = 0.7;

  const state = {
    classes: [], // [{name, color}], in the order added
    current: "", // the class a click marks
    labels: new Map(), // h3 -> {h3, class, lat, lng, ring: [[lng, lat], ...]}
    pending: 0, // cell look-ups in flight
    clicks: 0, // label clicks handled (answered or failed)
    classifying: false,
    classified: 0, // classifications drawn so far
    result: null, // the last answer's summary: {classes, n_cells, n_candidates, classifier, training, ...}
    opacity: DEFAULT_OPACITY,
  };

  map.createPane("predicted").style.zIndex = 380; // over the land cover, under the drawn area and the results
  map.createPane("labels").style.zIndex = 420; // over the search results: a labelled cell stays visible
  const predictedRenderer = L.canvas({ pane: "predicted", padding: 0.2 }); // up to 50,000 hexagons
  const labelLayer = L.featureGroup().addTo(map);
  const predictedLayer = L.featureGroup().addTo(map);
  const labelShapes = new Map(); // h3 -> polygon
  let controller = null;

  // ---- classes and their colours ----
  const classOf = (name) => state.classes.find((c) => c.name === name);

  function freeColor() {
    const used = new Set(state.classes.map((c) => c.color));
    return PALETTE.find((c) => !used.has(c)) || PALETTE[state.classes.length % PALETTE.length];
  }

  function colorOf(name) {
    return classOf(name)?.color || fixedColor(name) || PALETTE[Math.abs(hash(name)) % PALETTE.length];
  }

  function hash(text) {
    let h = 0;
    for (const ch of String(text)) h = (h * 31 + ch.charCodeAt(0)) | 0;
    return h;
  }

  function addClass(raw) {
    const name = String(raw || "").trim();
    if (!name) return "Type a class name first.";
    if (name.length > 40) return `A class name has at most 40 characters, got ${name.length}.`;
    const same = state.classes.find((c) => c.name.toLowerCase() === name.toLowerCase());
    if (!same) state.classes.push({ name, color: fixedColor(name) || freeColor() });
    state.current = same ? same.name : name;
    return "";
  }

  function removeClass(name) {
    if (countOf(name)) return;
    state.classes = state.classes.filter((c) => c.name !== name);
    if (state.current === name) state.current = state.classes[0]?.name || "";
    changed();
  }

  const countOf = (name) => [...state.labels.values()].filter((l) => l.class === name).length;

  // ---- persistence (localStorage) ----
  function save() {
    const labels = [...state.labels.values()];
    localStorage.setItem(STORE_KEY, JSON.stringify({ v: 1, classes: state.classes, current: state.current, labels }));
  }

  function load() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    } catch {
      // unreadable: start afresh
    }
    if (saved && saved.v === 1 && Array.isArray(saved.classes)) {
      state.classes = saved.classes.filter((c) => c && typeof c.name === "string" && /^#[0-9a-f]{6}$/i.test(c.color));
      for (const l of saved.labels || [])
        if (l && typeof l.h3 === "string" && classOf(l.class) && Array.isArray(l.ring)) state.labels.set(l.h3, l);
      state.current = classOf(saved.current) ? saved.current : state.classes[0]?.name || "";
    }
    if (!state.classes.length) {
      addClass("positive");
      addClass("negative");
      state.current = "positive";
    }
  }

  // ---- labels on the map ----
  function drawLabel(label) {
    labelShapes.get(label.h3)?.remove();
    const color = colorOf(label.class);
    const shape = L.polygon(
      label.ring.map(([lng, lat]) => [lat, lng]),
      { pane: "labels", color, weight: 3, fillColor: color, fillOpacity: 0.15, className: "vg-label" },
    );
    shape.bindTooltip(() => `${label.class} · ${label.h3}${page.labelMode ? " (click to remove)" : ""}`);
    shape.on("click", (e) => {
      if (!page.labelMode || page.drawing) return; // off: the click searches, as anywhere on the map
      L.DomEvent.stopPropagation(e);
      removeLabel(label.h3);
      state.clicks += 1;
    });
    shape.addTo(labelLayer);
    labelShapes.set(label.h3, shape);
  }

  function removeLabel(h3) {
    state.labels.delete(h3);
    labelShapes.get(h3)?.remove();
    labelShapes.delete(h3);
    changed();
  }

  // A click in label mode: the cell under it (GET {api}/cell) gets the current class; a labelled cell is unmarked.
  async function labelAt(lat, lng) {
    if (!state.current) {
      ui.showError("Add a class first, then click cells to label them.");
      return;
    }
    const label = state.current;
    state.pending += 1;
    ui.showError("");
    try {
      const params = { lat: lat.toFixed(6), lng: lng.toFixed(6), store: $("store").value };
      const cell = await ui.callApi("cell", params);
      const p = cell.properties;
      if (state.labels.has(p.h3)) {
        removeLabel(p.h3);
      } else {
        const entry = { h3: p.h3, class: label, lat: p.lat, lng: p.lng, ring: cell.geometry.coordinates[0] };
        state.labels.set(p.h3, entry);
        drawLabel(entry);
        changed();
      }
    } catch (err) {
      ui.showError(err.message);
    } finally {
      state.pending -= 1;
      state.clicks += 1;
    }
  }

  // ---- the panel: class picker, label list, counts ----
  function renderClasses() {
    const box = $("label-classes");
    box.replaceChildren();
    for (const c of state.classes) {
      const row = document.createElement("div");
      row.className = "class-row";
      row.innerHTML =
        '<label><input type="radio" name="label-class"> <span class="name"></span></label>' +
        '<input type="color" class="color"><span class="count"></span>' +
        '<button type="button" class="remove">×</button>';
      const radio = row.querySelector("input[type=radio]");
      radio.value = c.name;
      radio.checked = c.name === state.current;
      radio.addEventListener("change", () => {
        state.current = c.name;
        changed();
      });
      row.querySelector(".name").textContent = c.name;
      const color = row.querySelector(".color");
      color.value = c.color;
      color.setAttribute("aria-label", `Colour of ${c.name}`);
      color.addEventListener("change", () => {
        c.color = color.value;
        for (const l of state.labels.values()) if (l.class === c.name) drawLabel(l);
        restylePrediction();
        changed();
      });
      const n = countOf(c.name);
      row.querySelector(".count").textContent = String(n);
      row.querySelector(".count").title = `${n} labelled cells`;
      const remove = row.querySelector(".remove");
      remove.disabled = n > 0;
      remove.title = n ? "Remove its labels first" : `Remove the class ${c.name}`;
      remove.setAttribute("aria-label", `Remove class ${c.name}`);
      remove.addEventListener("click", () => removeClass(c.name));
      row.dataset.class = c.name;
      box.append(row);
    }
  }

  function renderList() {
    const list = $("label-list");
    list.replaceChildren();
    const labels = [...state.labels.values()];
    for (const l of labels) {
      const li = document.createElement("li");
      li.dataset.h3 = l.h3;
      li.innerHTML =
        '<span class="chip"></span><span class="cls"></span><button type="button" class="cell"></button>' +
        '<button type="button" class="remove">×</button>';
      li.querySelector(".chip").style.background = colorOf(l.class);
      li.querySelector(".cls").textContent = l.class;
      const cell = li.querySelector(".cell");
      cell.textContent = l.h3;
      cell.title = "Show this cell on the map";
      cell.addEventListener("click", () => map.flyTo([l.lat, l.lng], Math.max(map.getZoom(), 11), { duration: 0.6 }));
      const remove = li.querySelector(".remove");
      remove.setAttribute("aria-label", `Remove label ${l.class} ${l.h3}`);
      remove.title = "Remove this label";
      remove.addEventListener("click", () => removeLabel(l.h3));
      list.append(li);
    }
    const counts = state.classes.map((c) => [c.name, countOf(c.name)]).filter(([, n]) => n);
    $("label-summary").textContent = labels.length
      ? `${labels.length} label${labels.length === 1 ? "" : "s"}: ${counts.map(([name, n]) => `${name} ${n}`).join(" · ")}`
      : "No labels yet: turn label mode on and click cells.";
    $("label-export").disabled = !labels.length;
    $("label-clear").disabled = !labels.length;
  }

  function changed() {
    renderClasses();
    renderList();
    save();
  }

  function setMode(on, announce = true) {
    page.labelMode = on;
    const button = $("label-mode");
    button.setAttribute("aria-pressed", String(on));
    button.textContent = on ? "Label mode: on" : "Label mode: off";
    document.body.classList.toggle("vg-labelling", on);
    if (!announce) return;
    ui.setStatus(
      on ? "Label mode: click a cell to mark it with the chosen class; click it again to unmark it." : "Click on land.",
    );
  }

  // ---- classify this view ----
  // The region: the drawn box or polygon when there is one, else the map's view, as the API's JSON members.
  function region() {
    const area = page.area;
    if (area && area.param.bbox) return { bbox: area.param.bbox.split(",").map(Number) };
    if (area && area.param.polygon) {
      const v = area.param.polygon.split(",").map(Number);
      return { polygon: v.filter((_, i) => i % 2 === 0).map((lng, i) => [lng, v[2 * i + 1]]) };
    }
    return { bbox: ui.boxArea(map.getBounds()).param.bbox.split(",").map(Number) };
  }

  function hintZoom(err) {
    const tooLarge = err.status === 413 || /too (large|big|many)|at most [\d,\s]+cells/i.test(err.message);
    if (!tooLarge || /zoom/i.test(err.message)) return err.message;
    return `${err.message} Zoom in (or draw a smaller box) and classify again.`;
  }

  async function classify() {
    if (controller) controller.abort();
    controller = new AbortController();
    const labels = [...state.labels.values()];
    const cellsOf = (name) => labels.filter((l) => l.class === name).map((l) => l.h3);
    // only "positive"/"negative" labels: the API's positive mode (P(positive); no negatives: background cells)
    const positiveMode = labels.length && labels.every((l) => fixedColor(l.class)) && cellsOf("positive").length;
    const body = {
      ...(positiveMode
        ? { positive: cellsOf("positive"), negative: cellsOf("negative") }
        : { labels: Object.fromEntries(labels.map((l) => [l.h3, l.class])) }),
      ...region(),
      classifier: $("classifier").value,
    };
    if ($("store").value) body.store = $("store").value;
    state.classifying = true;
    ui.showError("");
    ui.setStatus("Classifying…", true);
    try {
      const collection = await ui.callApi("classify", null, controller.signal, { method: "POST", body });
      drawPrediction(collection);
      state.classified += 1;
      const where = page.area ? `the drawn ${page.area.kind}` : "the view";
      const bits = [collection.classifier, collection.store, collection.model && `model ${collection.model}`];
      ui.setStatus(`Classified ${collection.n_cells} cells in ${where} · ${bits.filter(Boolean).join(" · ")}`);
    } catch (err) {
      if (err.name === "AbortError") return;
      ui.setStatus("");
      ui.showError(hintZoom(err));
    } finally {
      state.classifying = false;
    }
  }

  function styleOf(feature) {
    const color = colorOf(feature.properties.class);
    return { color, weight: 0.6, opacity: state.opacity, fillColor: color, fillOpacity: state.opacity };
  }

  function restylePrediction() {
    predictedLayer.eachLayer((group) => group.setStyle(styleOf));
    if (state.result) renderLegend(state.result);
  }

  function predictionTip(layer) {
    const p = layer.feature.properties;
    const div = document.createElement("div"); // text only: class names come from the user
    const pos = p.probabilities && "positive" in p.probabilities && "negative" in p.probabilities;
    const odds = `${pos ? "P(positive)" : "p"} ${Number(p.probability).toFixed(2)}`;
    div.append(`${p.class} · ${odds}`, document.createElement("br"), p.h3);
    if (p.labelled) div.append(document.createElement("br"), `labelled ${p.labelled}`);
    return div;
  }

  function drawPrediction(collection) {
    predictedLayer.clearLayers();
    const layer = L.geoJSON(collection, { renderer: predictedRenderer, pane: "predicted", style: styleOf });
    layer.bindTooltip(predictionTip, { sticky: true });
    layer.addTo(predictedLayer);
    const { features, ...summary } = collection;
    state.result = summary;
    renderLegend(summary);
  }

  const legend = ui.legendControl("topright", (div) => {
    div.hidden = true;
    div.id = "class-legend";
  });

  function renderLegend(summary) {
    const div = legend.getContainer();
    div.replaceChildren();
    const title = L.DomUtil.create("h2", "", div);
    title.textContent = `Classes (${summary.classifier || "classifier"})`;
    for (const c of summary.classes || []) {
      const item = L.DomUtil.create("div", "item", div);
      item.dataset.class = c.name;
      L.DomUtil.create("span", "chip", item).style.background = colorOf(c.name);
      const name = L.DomUtil.create("span", "", item);
      name.textContent = `${c.name}: ${Number(c.n_cells).toLocaleString()} cells (${c.n_labels} labels)`;
    }
    const t = summary.training;
    if (t && Number.isFinite(t.accuracy_on_labels)) {
      const note = L.DomUtil.create("div", "note", div);
      note.textContent = `trained on ${t.n_labels} labels (${Math.round(t.accuracy_on_labels * 100)} % right)`;
      if (t.n_background) note.textContent += ` · ${t.n_background} background cells as negatives`;
    }
    const opacity = L.DomUtil.create("label", "", div);
    opacity.innerHTML = 'opacity <input type="range" id="class-opacity" min="0" max="1" step="0.05">';
    const slider = opacity.querySelector("input");
    slider.value = String(state.opacity);
    slider.setAttribute("aria-label", "Opacity of the classified cells");
    slider.addEventListener("input", () => {
      state.opacity = Number(slider.value);
      predictedLayer.eachLayer((group) => group.setStyle({ opacity: state.opacity, fillOpacity: state.opacity }));
    });
    const clear = L.DomUtil.create("button", "", div);
    clear.type = "button";
    clear.id = "class-clear";
    clear.textContent = "Remove classification";
    clear.addEventListener("click", () => {
      predictedLayer.clearLayers();
      state.result = null;
      div.hidden = true;
    });
    div.hidden = false;
  }

  // ---- export: the file flow 06 takes with --labels (Point features at the cell centres, property "class") ----
  function exportLabels() {
    const features = [...state.labels.values()].map((l) => ({
      type: "Feature",
      geometry: { type: "Point", coordinates: [l.lng, l.lat] },
      properties: { h3: l.h3, class: l.class },
    }));
    const text = JSON.stringify({ type: "FeatureCollection", features }, null, 1);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], { type: "application/geo+json" }));
    link.download = "vectorgeo-labels.geojson";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  // ---- wiring ----
  load();
  for (const l of state.labels.values()) drawLabel(l);
  changed();
  setMode(false, false);
  window.vg.labelClick = labelAt;
  window.vg.labels = { state, labelLayer, predictedLayer, classify, exportLabels };

  $("label-mode").addEventListener("click", () => setMode(!page.labelMode));
  $("label-add").addEventListener("click", () => {
    const problem = addClass($("label-new").value);
    ui.showError(problem);
    if (!problem) {
      $("label-new").value = "";
      changed();
    }
  });
  $("label-new").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      $("label-add").click();
    }
  });
  $("classify").addEventListener("click", classify);
  $("label-export").addEventListener("click", exportLabels);
  $("label-clear").addEventListener("click", () => {
    if (!confirm(`Remove all ${state.labels.size} labels?`)) return;
    for (const h3 of [...state.labels.keys()]) removeLabel(h3);
  });
})();
