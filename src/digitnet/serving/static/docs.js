// A self-hosted reader for /openapi.json: FastAPI's Swagger UI loads from a CDN, and this page
// must work offline. Each operation can be tried from here.
"use strict";

(() => {
  const root = document.getElementById("operations");
  let components = {};

  // Schemas FastAPI generates from Pydantic models are "$ref"s into components: shown inline.
  function inlineRefs(value, seen = new Set()) {
    if (Array.isArray(value)) return value.map((item) => inlineRefs(item, seen));
    if (!value || typeof value !== "object") return value;
    const ref = value.$ref;
    if (typeof ref === "string" && ref.startsWith("#/components/schemas/") && !seen.has(ref)) {
      const target = components[ref.slice("#/components/schemas/".length)];
      if (target) return inlineRefs(target, new Set([...seen, ref]));
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, inlineRefs(v, seen)]));
  }

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    for (const child of children) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // Descriptions use `code` and **bold** only; built as nodes, never as HTML.
  function richText(text) {
    const paragraph = element("p");
    for (const part of (text || "").split(/(`[^`]+`|\*\*[^*]+\*\*)/)) {
      if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
        paragraph.append(element("code", {}, part.slice(1, -1)));
      } else if (part.startsWith("**") && part.endsWith("**") && part.length > 3) {
        paragraph.append(element("strong", {}, part.slice(2, -2)));
      } else {
        paragraph.append(part);
      }
    }
    return paragraph;
  }

  function concretePath(path, parameters) {
    let result = path;
    for (const parameter of parameters || []) {
      const choices = (parameter.schema && parameter.schema.enum) || [];
      result = result.replace(`{${parameter.name}}`, choices[0] || parameter.name);
    }
    return result;
  }

  function sevenAsBase64() {
    // A drawn 7, so the predict example holds a real image.
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 56;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, 56, 56);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 5;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(14, 12);
    ctx.lineTo(42, 12);
    ctx.lineTo(24, 46);
    ctx.stroke();
    return canvas.toDataURL("image/png").split(",")[1];
  }

  function tryPanel(method, path, operation) {
    const url = concretePath(path, operation.parameters);
    const output = element("pre", { hidden: "" });
    const button = element("button", { type: "button" }, `Send ${method.toUpperCase()} ${url}`);
    const panel = element("div", {}, );
    let body = null;
    const content = (operation.requestBody && operation.requestBody.content) || {};
    if (content["application/json"]) {
      body = element("textarea", { "aria-label": `JSON body for ${url}`, spellcheck: "false" });
      // A route taking one image as {"b64": ...} says so in its schema; :predict takes a batch.
      const schema = content["application/json"].schema || {};
      const oneImage = Boolean(schema.properties && schema.properties.b64);
      const example = oneImage ? { b64: sevenAsBase64() } : { instances: [{ b64: sevenAsBase64() }] };
      body.value = JSON.stringify(example, null, 1);
      panel.append(body);
    } else if (content["multipart/form-data"]) {
      body = element("input", { type: "file", accept: "image/*", "aria-label": "Image file" });
      panel.append(body);
    }
    button.addEventListener("click", async () => {
      const options = { method: method.toUpperCase() };
      if (body instanceof HTMLTextAreaElement) {
        options.body = body.value;
        options.headers = { "Content-Type": "application/json" };
      } else if (body instanceof HTMLInputElement) {
        const form = new FormData();
        if (body.files[0]) form.append("file", body.files[0]);
        options.body = form;
      }
      output.hidden = false;
      output.textContent = "…";
      try {
        const response = await fetch(url, options);
        const text = await response.text();
        let shown = text;
        try { shown = JSON.stringify(JSON.parse(text), null, 1); } catch (error) { /* not JSON */ }
        output.textContent = `${response.status} ${response.statusText}\n${shown}`;
      } catch (error) {
        output.textContent = `request failed: ${error.message}`;
      }
    });
    panel.append(element("div", { class: "try" }, button), output);
    return element("details", {}, element("summary", {}, "Try it"), panel);
  }

  function renderOperation(path, method, operation) {
    const card = element("section", { class: "card op" });
    card.append(element("h3", {}, element("span", { class: "method" }, method.toUpperCase()),
                        element("code", {}, path), operation.summary || ""));
    if (operation.description) {
      for (const block of operation.description.split(/\n\s*\n/)) {
        card.append(richText(block.replace(/\s+/g, " ").trim()));
      }
    }
    const content = (operation.requestBody && operation.requestBody.content) || {};
    const types = Object.keys(content);
    if (types.length) card.append(richText(`Request body: ${types.map((t) => `\`${t}\``).join(", ")}`));
    const responses = element("ul", { class: "responses" });
    for (const [code, response] of Object.entries(operation.responses || {})) {
      responses.append(element("li", {}, element("code", {}, code), ` ${response.description || ""}`));
    }
    card.append(responses);
    const schemaBlock = element("pre", {}, JSON.stringify(
      inlineRefs({ requestBody: operation.requestBody, responses: operation.responses }), null, 1));
    card.append(element("details", {}, element("summary", {}, "Schemas"), schemaBlock));
    card.append(tryPanel(method, path, operation));
    return card;
  }

  async function main() {
    try {
      const spec = await (await fetch("/openapi.json")).json();
      components = (spec.components && spec.components.schemas) || {};
      root.replaceChildren();
      root.append(richText(spec.info.description));
      for (const [path, item] of Object.entries(spec.paths)) {
        for (const [method, operation] of Object.entries(item)) {
          root.append(renderOperation(path, method, operation));
        }
      }
    } catch (error) {
      root.textContent = `Cannot load /openapi.json: ${error.message}`;
    }
  }

  main();
})();
