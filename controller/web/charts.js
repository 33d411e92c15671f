/* Tiny SVG time-series charts: numeric lines and categorical step charts. No dependencies. */
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 560, H = 150, PAD = { l: 46, r: 10, t: 10, b: 22 };

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmtTime(t) {
    const d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /* series: [{name, color, points: [[t, y], ...]}]; opts: {yMax, unit, categories, step} */
  function render(container, series, opts) {
    opts = opts || {};
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    const all = series.flatMap(s => s.points).filter(p => p[1] !== null && p[1] !== undefined);
    const cats = opts.categories;
    const left = cats ? 78 : PAD.l;  // room for category names such as "performance"
    const iw = W - left - PAD.r, ih = H - PAD.t - PAD.b;
    if (all.length === 0) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no data yet"));
      container.replaceChildren(svg);
      return;
    }
    const t0 = Math.min(...all.map(p => p[0])), t1 = Math.max(...all.map(p => p[0]), t0 + 1);
    const yMax = cats ? cats.length - 1 : (opts.yMax || niceMax(Math.max(...all.map(p => p[1]))));
    const x = t => left + (t - t0) / (t1 - t0) * iw;
    const y = v => PAD.t + ih - (cats ? v : Math.min(v, yMax)) / (yMax || 1) * ih;

    // grid and y labels
    const ticks = cats ? cats.map((_, i) => i) : [0, yMax / 2, yMax];
    for (const v of ticks) {
      svg.appendChild(el("line", { x1: left, x2: W - PAD.r, y1: y(v), y2: y(v), class: "grid" }));
      const label = cats ? cats[v] : (Number.isInteger(v) ? v : v.toFixed(1)) + (opts.unit || "");
      svg.appendChild(el("text", { x: left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, label));
    }
    svg.appendChild(el("text", { x: left, y: H - 5, class: "axis" }, fmtTime(t0)));
    svg.appendChild(el("text", { x: W - PAD.r, y: H - 5, class: "axis", "text-anchor": "end" }, fmtTime(t1)));

    for (const s of series) {
      const pts = s.points.filter(p => p[1] !== null && p[1] !== undefined);
      if (!pts.length) continue;
      let d = "";
      pts.forEach((p, i) => {
        const px = x(p[0]).toFixed(1), py = y(p[1]).toFixed(1);
        if (i === 0) d += `M${px},${py}`;
        else if (opts.step || cats) d += `H${px}V${py}`;
        else d += `L${px},${py}`;
      });
      svg.appendChild(el("path", { d, class: "line", stroke: s.color || "#3b82f6" }));
      const last = pts[pts.length - 1];
      svg.appendChild(el("circle", { cx: x(last[0]), cy: y(last[1]), r: 2.5, fill: s.color || "#3b82f6" }));
    }
    if (series.length > 1) {
      let lx = left + 6;
      for (const s of series) {
        svg.appendChild(el("rect", { x: lx, y: PAD.t + 2, width: 10, height: 3, fill: s.color }));
        svg.appendChild(el("text", { x: lx + 13, y: PAD.t + 7, class: "axis" }, s.name));
        lx += 16 + 7 * s.name.length;
      }
    }
    container.replaceChildren(svg);
  }

  return { render };
})();
