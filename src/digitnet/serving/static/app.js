// digitnet's draw-a-digit page, in two modes: one digit on a square pad (/api/predict), or a
// number on a wide pad (/api/read), with a box drawn around each digit read. Strokes are kept
// as points in units of the pad's height (x from 0 to the pad's aspect ratio, y from 0 to 1) so
// the pad can be redrawn at any size, and exported at a fixed size whatever the screen's pixel
// density.
"use strict";

(() => {
  // A real pen on a 280-px pad draws about 17 px wide: MNIST's stroke-to-digit proportion.
  const PEN_WIDTH = 17 / 280;
  const DEBOUNCE_MS = 150;
  const NO_DIGIT = "no digit found";
  const NOT_A_DIGIT = "not a digit";
  const MODES = {
    digit: {
      aspect: 1,
      exportHeight: 280,
      endpoint: "/api/predict",
      empty: "Draw a digit in the box.",
      padLabel: "Drawing pad: draw a digit here with the mouse, a finger or a pen",
    },
    number: {
      aspect: 3,
      // 600x200: under the 640 px beyond which the server reduces an image before reading it.
      exportHeight: 200,
      endpoint: "/api/read",
      empty: "Write a number in the box.",
      padLabel: "Drawing pad: write a number here, digit after digit, with the mouse, a finger " +
        "or a pen",
    },
  };

  const pad = document.getElementById("pad");
  const padHint = document.getElementById("pad-hint");
  const prediction = document.getElementById("prediction");
  const confidence = document.getElementById("confidence");
  const barsList = document.getElementById("bars");
  const seen = document.getElementById("seen");
  const status = document.getElementById("status");
  const clearButton = document.getElementById("clear");
  const undoButton = document.getElementById("undo");
  const modelInfo = document.getElementById("model-info");
  const boxes = document.getElementById("boxes");
  const digitsList = document.getElementById("digits");
  const modeButtons = { digit: document.getElementById("mode-digit"),
                        number: document.getElementById("mode-number") };

  const context = pad.getContext("2d");
  let mode = "digit";
  const strokesOf = { digit: [], number: [] }; // each mode keeps its own drawing
  let strokes = strokesOf[mode];  // each: array of [x, y] in units of the pad's height
  const activePointers = new Map(); // pointerId -> stroke being drawn

  // Requests: at most one in flight; a change while one is out is sent when it returns.
  let version = 0;               // bumped by every change to the drawing
  let shownVersion = 0;          // the version whose answer is on screen
  let epoch = 0;                 // bumped by clear: answers from before it are dropped
  let timer = null;
  let inFlight = null;           // {controller}
  let sentVersion = -1;

  // ---------------------------------------------------------------------------- drawing

  function penWidth(height) {
    return Math.max(1, height * PEN_WIDTH);
  }

  function exportSize() {
    const { aspect, exportHeight } = MODES[mode];
    return [Math.round(exportHeight * aspect), exportHeight];
  }

  function traceStroke(ctx, stroke, height) {
    // Quadratic curves through the midpoints of successive points: smooth, and it passes
    // close to every sample without the corners of a polyline.
    const point = (i) => [stroke[i][0] * height, stroke[i][1] * height];
    ctx.beginPath();
    let [x0, y0] = point(0);
    ctx.moveTo(x0, y0);
    if (stroke.length === 1) {
      ctx.lineTo(x0 + 0.01, y0);   // a dot: a zero-length line with round caps
    } else {
      for (let i = 1; i < stroke.length - 1; i++) {
        const [x1, y1] = point(i);
        const [x2, y2] = point(i + 1);
        ctx.quadraticCurveTo(x1, y1, (x1 + x2) / 2, (y1 + y2) / 2);
      }
      const [xl, yl] = point(stroke.length - 1);
      ctx.lineTo(xl, yl);
    }
    ctx.stroke();
  }

  function paint(ctx, width, height) {
    ctx.clearRect(0, 0, width, height);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.lineWidth = penWidth(height);
    for (const stroke of strokes) traceStroke(ctx, stroke, height);
  }

  function resizePad() {
    const box = pad.getBoundingClientRect();
    const scale = window.devicePixelRatio || 1;
    const width = Math.round(box.width * scale);
    const height = Math.round(box.height * scale);
    if (width > 0 && height > 0 && (pad.width !== width || pad.height !== height)) {
      pad.width = width;
      pad.height = height;
    }
    paint(context, pad.width, pad.height);
  }

  function unitPoint(event) {
    const box = pad.getBoundingClientRect();
    const clamp = (v, high) => Math.min(high, Math.max(0, v));
    return [clamp((event.clientX - box.left) / box.height, MODES[mode].aspect),
            clamp((event.clientY - box.top) / box.height, 1)];
  }

  function onPointerDown(event) {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    const stroke = [unitPoint(event)];
    strokes.push(stroke);
    activePointers.set(event.pointerId, stroke);
    changed();
  }

  function onPointerMove(event) {
    const stroke = activePointers.get(event.pointerId);
    if (!stroke) return;
    event.preventDefault();
    // Coalesced events carry the samples between frames: smoother fast strokes.
    const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const sample of samples.length ? samples : [event]) stroke.push(unitPoint(sample));
    changed();
  }

  function onPointerUp(event) {
    if (activePointers.delete(event.pointerId)) event.preventDefault();
  }

  // ---------------------------------------------------------------------------- state

  function changed() {
    version += 1;
    paint(context, pad.width, pad.height);
    padHint.classList.toggle("hidden", strokes.length > 0);
    undoButton.disabled = strokes.length === 0;
    // The boxes belong to the drawing as it was sent: faded until the new answer comes.
    boxes.classList.add("stale");
    if (strokes.length === 0) {
      showEmpty();
      return;
    }
    schedule();
  }

  function setMode(name) {
    if (!(name in MODES) || name === mode) return;
    mode = name;
    strokes = strokesOf[mode];
    activePointers.clear();
    epoch += 1;                  // an answer for the other mode is not shown
    if (inFlight) inFlight.controller.abort();
    clearTimeout(timer);
    timer = null;
    sentVersion = -1;
    document.body.classList.toggle("number-mode", mode === "number");
    for (const [other, button] of Object.entries(modeButtons)) {
      button.setAttribute("aria-pressed", String(other === mode));
    }
    pad.setAttribute("aria-label", MODES[mode].padLabel);
    fitBoxes();
    history.replaceState(null, "", mode === "number" ? "#number" : location.pathname);
    resizePad();
    showEmpty();
    changed();
  }

  function clearPad() {
    strokes.length = 0;
    activePointers.clear();
    epoch += 1;
    if (inFlight) inFlight.controller.abort();
    clearTimeout(timer);
    timer = null;
    changed();
  }

  function undo() {
    if (!strokes.length) return;
    const removed = strokes.pop();
    for (const [id, stroke] of activePointers) if (stroke === removed) activePointers.delete(id);
    changed();
  }

  function schedule() {
    if (timer === null) timer = setTimeout(fire, DEBOUNCE_MS);
  }

  function fire() {
    timer = null;
    if (inFlight || strokes.length === 0 || sentVersion === version) return;
    send();
  }

  // ---------------------------------------------------------------------------- requests

  function exportPng() {
    // Dark ink on transparent at a fixed size: the server's preprocessing takes either.
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = exportSize();
    paint(canvas.getContext("2d"), canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function send() {
    const myVersion = version;
    const myEpoch = epoch;
    const controller = new AbortController();
    inFlight = { controller };
    sentVersion = myVersion;
    try {
      const blob = await exportPng();
      const form = new FormData();
      form.append("file", blob, "drawing.png");
      const response = await fetch(MODES[mode].endpoint, {
        method: "POST", body: form, signal: controller.signal,
      });
      const answer = await response.json();
      if (myEpoch !== epoch) return;
      if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
      status.textContent = "";
      shownVersion = myVersion;
      if (mode === "number") showReading(answer);
      else show(answer);
      boxes.classList.toggle("stale", version !== myVersion);
    } catch (error) {
      if (error.name === "AbortError" || myEpoch !== epoch) return;
      status.textContent = `Cannot reach the model: ${error.message}`;
    } finally {
      if (inFlight && inFlight.controller === controller) inFlight = null;
      // Latest wins: whatever changed while this request was out goes next (after a clear or a
      // mode switch too: a debounce that fired while this aborted request was ending is lost).
      if (strokes.length && version !== sentVersion) schedule();
    }
  }

  // ---------------------------------------------------------------------------- results

  function buildBars() {
    for (let digit = 0; digit < 10; digit++) {
      const item = document.createElement("li");
      item.innerHTML = `<span class="digit">${digit}</span>` +
        `<span class="track"><span class="fill"></span></span>` +
        `<span class="percent">–</span>`;
      item.setAttribute("aria-label", `${digit}: no answer yet`);
      barsList.appendChild(item);
    }
  }

  function percent(p) {
    if (p >= 0.995) return "100%";
    if (p < 0.005) return p > 0 ? "<1%" : "0%";
    return `${Math.round(p * 100)}%`;
  }

  function showBars(probabilities, markBest = true) {
    const top = probabilities && markBest ? probabilities.indexOf(Math.max(...probabilities)) : -1;
    barsList.querySelectorAll("li").forEach((item, digit) => {
      const p = probabilities ? probabilities[digit] : 0;
      item.classList.toggle("best", digit === top);
      item.querySelector(".fill").style.transform = `scaleX(${p})`;
      item.querySelector(".percent").textContent = probabilities ? percent(p) : "–";
      item.setAttribute("aria-label",
        probabilities ? `${digit}: ${percent(p)}` : `${digit}: no answer`);
    });
  }

  function showSeen(image) {
    const ctx = seen.getContext("2d");
    if (!image) {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, 28, 28);
      return;
    }
    const pixels = ctx.createImageData(28, 28);
    for (let row = 0; row < 28; row++) {
      for (let col = 0; col < 28; col++) {
        const value = Math.round(255 * image[row][col]);
        const at = 4 * (row * 28 + col);
        pixels.data[at] = pixels.data[at + 1] = pixels.data[at + 2] = value;
        pixels.data[at + 3] = 255;
      }
    }
    ctx.putImageData(pixels, 0, 0);
  }

  function showNoDigit(hint) {
    prediction.textContent = NO_DIGIT;
    prediction.className = "prediction empty";
    confidence.textContent = hint;
    confidence.className = "confidence";
    showBars(null);
    showSeen(null);
    showDigits([]);
  }

  function showEmpty() {
    status.textContent = "";
    boxes.replaceChildren();
    showNoDigit(MODES[mode].empty);
  }

  // "Not a digit" answers (a letter, a scribble), from models with that class.
  function showRefused(answer) {
    prediction.textContent = NOT_A_DIGIT;
    prediction.className = "prediction refused";
    const sure = typeof answer.confidence === "number" ? ` (${percent(answer.confidence)})` : "";
    confidence.textContent = `${answer.reason || "The model reads no digit in this."}${sure}`;
    confidence.className = "confidence low";
    showBars(answer.probabilities || null, false);
    showSeen(answer.image || null);
  }

  function show(answer) {
    if (answer.not_a_digit) {
      showRefused(answer);
      return;
    }
    if (answer.several_digits) {
      prediction.textContent = answer.number;
      prediction.className = "prediction several";
      confidence.textContent = `Several digits, read as ${answer.number}. ` +
        "Switch to “A number” to read numbers.";
      confidence.className = "confidence low";
      showBars(null);
      showSeen(answer.image || null);
      return;
    }
    if (answer.digit === null || answer.digit === undefined) {
      showNoDigit("The drawing has no mark the model could read. Draw a bigger digit.");
      return;
    }
    const sure = Math.round(answer.confidence * 100);
    prediction.textContent = String(answer.digit);
    prediction.className = answer.low_confidence ? "prediction low" : "prediction";
    confidence.textContent = answer.low_confidence
      ? `Unsure: ${sure}% confident. It may be another digit.`
      : `${sure}% confident`;
    confidence.className = answer.low_confidence ? "confidence low" : "confidence";
    showBars(answer.probabilities);
    showSeen(answer.image);
  }

  // ---------------------------------------------------------------------------- numbers

  function svgElement(tag, attributes) {
    // The overlay is an <svg> in the HTML, so its namespace is SVG's.
    const node = document.createElementNS(boxes.namespaceURI, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  function fitBoxes() {
    const [width, height] = exportSize();
    boxes.setAttribute("viewBox", `0 0 ${width} ${height}`);
  }

  // A box around each digit on the pad, labelled with the digit and its probability. The
  // overlay's viewBox is the exported image's size: boxes come in its pixels.
  function showBoxes(digits) {
    const [, height] = exportSize();
    const size = Math.round(height * 0.07);
    boxes.replaceChildren();
    boxes.classList.remove("stale");
    let labelsEnd = -Infinity;   // where the last label above the boxes ends
    for (const item of digits) {
      const [x0, y0, x1, y1] = item.box;
      const group = svgElement("g", {
        class: "box", "data-digit": item.digit, "data-confidence": item.confidence,
      });
      group.append(svgElement("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 3 }));
      const label = svgElement("text", { x: x0 + 1, y: y0 - 4, "font-size": size });
      label.textContent = `${item.digit} · ${percent(item.confidence)}`;
      group.append(label);
      boxes.append(group);
      // Above the box; below it when that would cover the previous label (narrow digits side
      // by side) or leave the pad.
      const width = label.getComputedTextLength();
      if (x0 < labelsEnd + size / 2 || y0 - size - 4 < 0) {
        label.setAttribute("y", Math.min(y1 + size + 2, height - 2));
      } else {
        labelsEnd = x0 + 1 + width;
      }
    }
  }

  function showDigits(digits) {
    digitsList.replaceChildren();
    for (const item of digits) {
      const entry = document.createElement("li");
      const digit = document.createElement("span");
      digit.className = "digit";
      digit.textContent = String(item.digit);
      const share = document.createElement("span");
      share.className = "percent";
      share.textContent = percent(item.confidence);
      entry.append(digit, share);
      entry.setAttribute("aria-label", `${item.digit}: ${percent(item.confidence)}`);
      digitsList.append(entry);
    }
  }

  function showReading(answer) {
    const digits = Array.isArray(answer.digits) ? answer.digits : [];
    showBoxes(digits);
    if (answer.not_a_digit) {
      showRefused(answer);
      showDigits(digits);
      return;
    }
    if (typeof answer.number !== "string") {
      showNoDigit("The drawing has no mark the model could read. Write bigger digits.");
      return;
    }
    prediction.textContent = answer.number;
    prediction.className = "prediction";
    confidence.textContent = `${percent(answer.confidence)} confident ` +
      `(${digits.length} digit${digits.length === 1 ? "" : "s"})`;
    confidence.className = "confidence";
    showDigits(digits);
  }

  async function loadModelInfo() {
    try {
      const response = await fetch("/api/health");
      const health = await response.json();
      modelInfo.textContent = `model: ${health.model.name}, ${health.model.architecture}`;
    } catch (error) {
      modelInfo.textContent = "model: unknown (the server did not answer)";
    }
  }

  // ---------------------------------------------------------------------------- wiring

  function onKey(event) {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) {
      return;
    }
    const key = event.key;
    if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    } else if (!event.ctrlKey && !event.metaKey && !event.altKey &&
               (key === "Escape" || key === "Delete" || key === "Backspace" ||
                key === "c" || key === "C")) {
      event.preventDefault();
      clearPad();
    }
  }

  buildBars();
  fitBoxes();
  showEmpty();
  if (location.hash === "#number") setMode("number");
  resizePad();
  new ResizeObserver(resizePad).observe(pad);
  pad.addEventListener("pointerdown", onPointerDown);
  pad.addEventListener("pointermove", onPointerMove);
  pad.addEventListener("pointerup", onPointerUp);
  pad.addEventListener("pointercancel", onPointerUp);
  pad.addEventListener("contextmenu", (event) => event.preventDefault());
  clearButton.addEventListener("click", clearPad);
  undoButton.addEventListener("click", undo);
  for (const [name, button] of Object.entries(modeButtons)) {
    button.addEventListener("click", () => setMode(name));
  }
  document.addEventListener("keydown", onKey);
  loadModelInfo();

  // For tests and the curious: the state of the page.
  window.digitnet = {
    get strokes() { return strokes.length; },
    get mode() { return mode; },
    // True once the answer on screen is the one for the drawing as it is now.
    get settled() {
      return inFlight === null && (strokes.length === 0 || shownVersion === version);
    },
  };
})();
