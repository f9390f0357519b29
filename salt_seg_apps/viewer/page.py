"""What the page carries besides components: scripts for the hover readout, the mouse wheel, keyboard shortcuts,
brush drags and the label panel, and the CSS that keeps the image and the main actions in view.

The scripts talk to the server the way a user would: they click the page's own buttons, or write a command into a
hidden textbox and click its hidden button (``#viewer-cmd``, handled by :func:`salt_seg_apps.viewer.handlers.on_command`).
"""

from __future__ import annotations

#: sends the display pixel under the mouse to the server (throttled), for the value under the cursor.
HOVER_SCRIPT = """
<script>
(() => {
  let last = "", pending = null, timer = null;
  const send = () => {
    timer = null;
    const box = document.querySelector("#viewer-hover textarea, #viewer-hover input");
    const btn = document.querySelector("#viewer-hover-btn");
    if (!box || !btn || pending === null) return;
    box.value = pending;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    setTimeout(() => btn.click(), 20);
  };
  document.addEventListener("mousemove", (e) => {
    const img = e.target && e.target.closest ? e.target.closest("#viewer-image img") : null;
    if (!img || !img.naturalWidth) return;
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
    const ox = (r.width - img.naturalWidth * s) / 2, oy = (r.height - img.naturalHeight * s) / 2;
    const x = Math.round((e.clientX - r.left - ox) / s), y = Math.round((e.clientY - r.top - oy) / s);
    if (x < 0 || y < 0 || x >= img.naturalWidth || y >= img.naturalHeight) return;
    const v = x + "," + y;
    if (v === last) return;
    last = v;
    pending = v;
    if (!timer) timer = setTimeout(send, 120);
  });
})();
</script>
"""

#: mouse wheel over the image (slices), keyboard shortcuts, brush drags and the label panel's buttons.
PAGE_SCRIPT = """
<script>
(() => {
  const q = (sel) => document.querySelector(sel);
  const send = (text) => {
    const box = q("#viewer-cmd textarea, #viewer-cmd input");
    const btn = q("#viewer-cmd-btn");
    if (!box || !btn) return;
    box.value = text;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    setTimeout(() => btn.click(), 20);
  };
  const naturalXY = (img, e) => {
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
    const ox = (r.width - img.naturalWidth * s) / 2, oy = (r.height - img.naturalHeight * s) / 2;
    return [Math.floor((e.clientX - r.left - ox) / s), Math.floor((e.clientY - r.top - oy) / s)];
  };
  const overImage = (e) => e.target && e.target.closest ? e.target.closest("#viewer-image img") : null;
  const typing = (e) => {
    const t = e.target;
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))
      && !(t.type === "radio" || t.type === "range" || t.type === "checkbox");
  };

  // mouse wheel over the image: one slice per notch, notches within 60 ms sent together
  let wheelSteps = 0, wheelTimer = null;
  document.addEventListener("wheel", (e) => {
    if (!overImage(e)) return;
    e.preventDefault();
    wheelSteps += e.deltaY > 0 ? 1 : -1;
    if (!wheelTimer) wheelTimer = setTimeout(() => {
      wheelTimer = null;
      const n = wheelSteps;
      wheelSteps = 0;
      if (n) send("step:" + n);
    }, 60);
  }, { passive: false, capture: true });

  // keyboard: Ctrl+Z undo, arrows / Page keys change slice, letters pick the tool
  const TOOL_KEYS = { p: "positive point", n: "negative point", b: "box", r: "brush", e: "eraser",
                      i: "inspect" };
  document.addEventListener("keydown", (e) => {
    if (typing(e)) return;
    const k = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && k === "z" && !e.shiftKey) {
      e.preventDefault();
      const b = q("#viewer-undo");
      if (b) b.click();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const steps = { arrowup: -1, arrowdown: 1, pageup: -10, pagedown: 10 }[k];
    if (steps) { e.preventDefault(); send("step:" + steps); return; }
    if (TOOL_KEYS[k]) {
      const radio = q('#viewer-tool input[value="' + TOOL_KEYS[k] + '"]');
      if (radio) { e.preventDefault(); radio.click(); }
    }
  });

  // brush and eraser: a drag is one stroke; a click without a drag stays a click (one dab)
  let stroke = null, swallowClick = false;
  const brushTool = () => {
    const t = q("#viewer-tool input:checked");
    return t && (t.value === "brush" || t.value === "eraser");
  };
  document.addEventListener("mousedown", (e) => {
    const img = overImage(e);
    if (!img || e.button !== 0 || !brushTool() || !img.naturalWidth) return;
    e.preventDefault();  // no image drag-and-drop ghost
    stroke = { img: img, points: [naturalXY(img, e)] };
  }, true);
  document.addEventListener("mousemove", (e) => {
    if (!stroke) return;
    const p = naturalXY(stroke.img, e), last = stroke.points[stroke.points.length - 1];
    if (p[0] !== last[0] || p[1] !== last[1]) stroke.points.push(p);
  }, true);
  document.addEventListener("mouseup", () => {
    if (!stroke) return;
    const pts = stroke.points;
    stroke = null;
    if (pts.length < 2) return;  // a plain click: Gradio's select event handles it
    swallowClick = true;
    setTimeout(() => { swallowClick = false; }, 300);
    send("stroke:" + pts.map((p) => p[0] + "," + p[1]).join(";"));
  }, true);
  document.addEventListener("click", (e) => {
    if (swallowClick && overImage(e)) { e.stopPropagation(); e.preventDefault(); swallowClick = false; }
  }, true);

  // label panel: make a label active, show or hide it
  document.addEventListener("click", (e) => {
    const b = e.target && e.target.closest ? e.target.closest("#viewer-volumes [data-cmd]") : null;
    if (b) { e.preventDefault(); send(b.getAttribute("data-cmd")); }
  });
})();
</script>
"""

CSS = """
#viewer-image img { image-rendering: pixelated; }
#viewer-status p { font-weight: 600; margin: 0; }
#viewer-status { min-height: 1.6em; }
/* the controls scroll inside their column, so the image and the actions beside them never leave the screen */
#viewer-controls { max-height: calc(100vh - 70px); overflow-y: auto; flex-wrap: nowrap; }
#viewer-controls > * { flex-shrink: 0; }
#viewer-main { position: sticky; top: 4px; align-self: flex-start; }
#viewer-download:not(:has(a)) { display: none; }
#viewer-actions button { min-width: 0; }
#viewer-model-note p { font-size: 0.85em; margin: 0; }
#viewer-info p, #viewer-cursor p { font-size: 0.85em; margin: 0; }
table.label-panel { width: 100%; border-collapse: collapse; font-size: 0.85em; }
table.label-panel td, table.label-panel th { padding: 2px 4px; border-bottom: 1px solid #ddd; text-align: left; }
table.label-panel td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.label-panel tr.active { font-weight: 700; background: rgba(127, 127, 127, 0.15); }
table.label-panel .swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #333;
  vertical-align: middle; }
table.label-panel button { background: none; border: none; padding: 0; cursor: pointer; font: inherit;
  color: inherit; text-align: left; }
"""
