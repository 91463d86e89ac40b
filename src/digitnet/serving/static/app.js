// digitnet's draw-a-digit page. Strokes are kept as points in unit coordinates (0..1 of the
// pad's side) so the pad can be redrawn at any size, and exported at a fixed size whatever the
// screen's pixel density.
"use strict";

(() => {
  // A real pen on a 280-px pad draws about 17 px wide: MNIST's stroke-to-digit proportion.
  const PEN_WIDTH = 17 / 280;
  const EXPORT_SIDE = 280;
  const DEBOUNCE_MS = 150;
  const NO_DIGIT = "no digit found";

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

  const context = pad.getContext("2d");
  const strokes = [];            // each: array of [x, y] in 0..1
  const activePointers = new Map(); // pointerId -> stroke being drawn

  // Requests: at most one in flight; a change while one is out is sent when it returns.
  let version = 0;               // bumped by every change to the drawing
  let shownVersion = 0;          // the version whose answer is on screen
  let epoch = 0;                 // bumped by clear: answers from before it are dropped
  let timer = null;
  let inFlight = null;           // {controller}
  let sentVersion = -1;

  // ---------------------------------------------------------------------------- drawing

  function penWidth(side) {
    return Math.max(1, side * PEN_WIDTH);
  }

  function traceStroke(ctx, stroke, side) {
    // Quadratic curves through the midpoints of successive points: smooth, and it passes
    // close to every sample without the corners of a polyline.
    const point = (i) => [stroke[i][0] * side, stroke[i][1] * side];
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

  function paint(ctx, side) {
    ctx.clearRect(0, 0, side, side);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.lineWidth = penWidth(side);
    for (const stroke of strokes) traceStroke(ctx, stroke, side);
  }

  function resizePad() {
    const side = Math.round(pad.getBoundingClientRect().width * (window.devicePixelRatio || 1));
    if (side > 0 && (pad.width !== side || pad.height !== side)) {
      pad.width = side;
      pad.height = side;
    }
    paint(context, pad.width);
  }

  function unitPoint(event) {
    const box = pad.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((event.clientX - box.left) / box.width),
            clamp((event.clientY - box.top) / box.height)];
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
    paint(context, pad.width);
    padHint.classList.toggle("hidden", strokes.length > 0);
    undoButton.disabled = strokes.length === 0;
    if (strokes.length === 0) {
      showEmpty();
      return;
    }
    schedule();
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
    canvas.width = EXPORT_SIDE;
    canvas.height = EXPORT_SIDE;
    paint(canvas.getContext("2d"), EXPORT_SIDE);
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
      const response = await fetch("/api/predict", {
        method: "POST", body: form, signal: controller.signal,
      });
      const answer = await response.json();
      if (myEpoch !== epoch) return;
      if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
      status.textContent = "";
      shownVersion = myVersion;
      show(answer);
    } catch (error) {
      if (error.name === "AbortError" || myEpoch !== epoch) return;
      status.textContent = `Cannot reach the model: ${error.message}`;
    } finally {
      if (inFlight && inFlight.controller === controller) inFlight = null;
      // Latest wins: whatever changed while this request was out goes next.
      if (myEpoch === epoch && strokes.length && version !== sentVersion) schedule();
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

  function showBars(probabilities) {
    const top = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
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
  }

  function showEmpty() {
    status.textContent = "";
    showNoDigit("Draw a digit in the box.");
  }

  function show(answer) {
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
  showEmpty();
  resizePad();
  new ResizeObserver(resizePad).observe(pad);
  pad.addEventListener("pointerdown", onPointerDown);
  pad.addEventListener("pointermove", onPointerMove);
  pad.addEventListener("pointerup", onPointerUp);
  pad.addEventListener("pointercancel", onPointerUp);
  pad.addEventListener("contextmenu", (event) => event.preventDefault());
  clearButton.addEventListener("click", clearPad);
  undoButton.addEventListener("click", undo);
  document.addEventListener("keydown", onKey);
  loadModelInfo();

  // For tests and the curious: the state of the page.
  window.digitnet = {
    get strokes() { return strokes.length; },
    // True once the answer on screen is the one for the drawing as it is now.
    get settled() {
      return inFlight === null && (strokes.length === 0 || shownVersion === version);
    },
  };
})();
