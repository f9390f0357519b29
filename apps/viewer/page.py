"""What the page carries besides components: the hover script (value under the cursor) and a little CSS."""

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

CSS = """
#viewer-image img { image-rendering: pixelated; }
#viewer-status p { font-weight: 600; }
"""
