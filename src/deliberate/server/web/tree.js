// The tree page of deliberate's web view: a task's tree drawn as a graph.
//
// Reads the JSON API (…/tree for the whole tree, …/nodes/ID for one node's detail),
// lays the expanded part out with a tidy-tree layout (Reingold–Tilford: each subtree
// is placed as close to its left sibling as their contours allow, a parent centred
// over its children), and draws only that part as SVG. Everything is written with
// textContent and DOM calls, never innerHTML: node texts are model output.
"use strict";

(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const W = 152;             // node box width
  const H = 56;              // node box height
  const GAP_X = 16;          // least horizontal gap between boxes
  const LEVEL = H + 52;      // vertical distance between levels
  const INITIAL_SHOWN = 80;  // a tree this small is shown whole at first
  const OVERVIEW_K = 0.3;    // below this zoom, boxes are drawn without text, in bulk
  const VALUE_STOPS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
  const VERDICT = {
    correct: { fill: "#1b7837", text: "#ffffff", mark: "✓", name: "correct" },
    incorrect: { fill: "#c2410c", text: "#ffffff", mark: "✗", name: "incorrect" },
    none: { fill: "#e5e7eb", text: "#111827", mark: "", name: "not graded" },
  };

  const app = document.getElementById("tree-app");
  if (!app) return;
  const svg = document.getElementById("tree-svg");
  const viewport = document.getElementById("viewport");
  const edgeLayer = document.getElementById("edges");
  const nodeLayer = document.getElementById("nodes");
  const statusLine = document.getElementById("tree-status");
  const shownLine = document.getElementById("shown");
  const legend = document.getElementById("legend");
  const colourBy = document.getElementById("colour-by");
  const detail = document.getElementById("detail");
  const detailTitle = document.getElementById("detail-title");
  const detailBody = document.getElementById("detail-body");

  const state = {
    byId: new Map(),   // id -> view node {d, kids, parent, expanded, size, x, y}
    root: null,
    visible: [],
    focusedId: null,
    selectedId: null,
    colour: "value",
    domain: [0, 1],
    view: { x: 0, y: 0, k: 1 },
    detailToken: 0,
    drawn: null,       // what the last draw covered: {overview, rect}
    bounds: null,      // the shown part's extent in the tree's plane
    pendingDraw: 0,
    draws: 0,
  };

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function sv(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }

  function clip(text, n) {
    const flat = String(text).replace(/\s+/g, " ").trim();
    return flat.length <= n ? flat : flat.slice(0, n - 1) + "…";
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "—";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x)) return x.toLocaleString("en");
    return x.toFixed(digits === undefined ? 2 : digits);
  }

  function hexToRgb(h) {
    const n = parseInt(h.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function scaleColour(t) {
    const c = Math.min(1, Math.max(0, t)) * (VALUE_STOPS.length - 1);
    const i = Math.min(VALUE_STOPS.length - 2, Math.floor(c));
    const f = c - i;
    const a = hexToRgb(VALUE_STOPS[i]);
    const b = hexToRgb(VALUE_STOPS[i + 1]);
    const rgb = a.map((v, j) => Math.round(v + (b[j] - v) * f));
    return "rgb(" + rgb.join(",") + ")";
  }

  function textOn(fill) {
    const m = fill.match(/\d+/g);
    const [r, g, b] = m ? m.map(Number) : hexToRgb(fill);
    const lum = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    return lum > 140 ? "#111827" : "#ffffff";
  }

  function nodeStyle(n) {
    if (state.colour === "verdict") {
      const v = VERDICT[n.d.label || "none"];
      return { fill: v.fill, text: v.text };
    }
    if (n.d.value === null || n.d.value === undefined) return { fill: "#e5e7eb", text: "#111827" };
    const [lo, hi] = state.domain;
    const fill = scaleColour(hi > lo ? (n.d.value - lo) / (hi - lo) : 1);
    return { fill: fill, text: textOn(fill) };
  }

  // ------------------------------------------------------------------ the model

  function build(data) {
    state.byId.clear();
    for (const d of data.nodes) {
      state.byId.set(d.id, { d: d, kids: [], parent: null, expanded: false, size: 1, x: 0, y: 0, level: 0 });
    }
    for (const n of state.byId.values()) {
      const p = n.d.parent_id ? state.byId.get(n.d.parent_id) : null;
      if (p) { n.parent = p; p.kids.push(n); }
    }
    state.root = state.byId.get(data.root_id) || [...state.byId.values()].find((n) => !n.parent) || null;
    // Subtree sizes and levels, without recursion (trees may be deep).
    const order = preorder(state.root, () => true);
    for (const n of order) n.level = n.parent ? n.parent.level + 1 : 0;
    for (let i = order.length - 1; i >= 0; i--) {
      const n = order[i];
      n.size = 1;
      for (const k of n.kids) n.size += k.size;
    }
    const values = data.nodes.map((d) => d.value).filter((v) => typeof v === "number");
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    state.domain = values.length === 0 || (lo >= 0 && hi <= 1) ? [0, 1] : [lo, hi];
  }

  function preorder(root, descend) {
    const out = [];
    if (!root) return out;
    const stack = [root];
    while (stack.length) {
      const n = stack.pop();
      out.push(n);
      if (descend(n)) for (let i = n.kids.length - 1; i >= 0; i--) stack.push(n.kids[i]);
    }
    return out;
  }

  function chosenPath() {
    return [...state.byId.values()].filter((n) => n.d.chosen);
  }

  // A small tree opens whole. A large one opens along its chosen path (each step with
  // its siblings, collapsed), or, with no chosen path yet, level by level while the
  // levels fit in INITIAL_SHOWN nodes.
  function initialExpansion() {
    const small = state.byId.size <= INITIAL_SHOWN;
    for (const n of state.byId.values()) n.expanded = small;
    if (small || !state.root) return;
    const path = chosenPath();
    for (const n of path) n.expanded = true;
    state.root.expanded = true;
    if (path.length > 1) return;
    let shown = 1;
    let level = [state.root];
    while (level.length) {
      const next = [];
      for (const n of level) {
        if (!n.expanded && shown + n.kids.length <= INITIAL_SHOWN) n.expanded = true;
        if (n.expanded) { shown += n.kids.length; next.push(...n.kids); }
      }
      level = next;
    }
  }

  function shownKids(n) {
    return n.expanded ? n.kids : [];
  }

  // ------------------------------------------------------------------ layout

  // Reingold–Tilford on the shown part. Contours are per-level arrays of the
  // leftmost and rightmost box edges, relative to the subtree root's centre.
  function layout() {
    const order = preorder(state.root, (n) => n.expanded);
    const contour = new Map();
    for (let i = order.length - 1; i >= 0; i--) {
      const n = order[i];
      const kids = shownKids(n);
      if (kids.length === 0) {
        contour.set(n, { l: [-W / 2], r: [W / 2] });
        continue;
      }
      const first = contour.get(kids[0]);
      const accL = first.l.slice();
      const accR = first.r.slice();
      kids[0].off = 0;
      for (let j = 1; j < kids.length; j++) {
        const c = contour.get(kids[j]);
        let shift = -Infinity;
        const shared = Math.min(accR.length, c.l.length);
        for (let d = 0; d < shared; d++) shift = Math.max(shift, accR[d] - c.l[d] + GAP_X);
        kids[j].off = shift;
        for (let d = 0; d < c.l.length; d++) {
          if (d < accR.length) accR[d] = c.r[d] + shift;
          else { accL.push(c.l[d] + shift); accR.push(c.r[d] + shift); }
        }
      }
      const mid = (kids[0].off + kids[kids.length - 1].off) / 2;
      for (const k of kids) { k.off -= mid; contour.delete(k); }
      const l = [-W / 2];
      const r = [W / 2];
      for (let d = 0; d < accL.length; d++) { l.push(accL[d] - mid); r.push(accR[d] - mid); }
      contour.set(n, { l: l, r: r });
    }
    for (const n of order) {
      n.x = n.parent && n !== state.root ? n.parent.x + n.off : 0;
      n.y = n.level * LEVEL;
    }
    state.visible = order;
  }

  // ------------------------------------------------------------------ drawing

  function nodeLabel(n) {
    const d = n.d;
    const bits = [d.operator === "root" ? "task (root)" : d.operator];
    if (d.answer !== null && d.operator !== "root") bits.push("answer " + d.answer);
    if (d.value !== null) bits.push("value " + fmt(d.value));
    if (d.visits) bits.push(d.visits + " visits");
    if (d.label) bits.push(d.label);
    if (d.chosen) bits.push("on the chosen path");
    if (n.kids.length) bits.push((n.expanded ? "expanded, " : "collapsed, ") + (n.size - 1) + " nodes below");
    return bits.join(", ");
  }

  function drawNode(n, frag) {
    const d = n.d;
    const style = nodeStyle(n);
    const classes = ["node"];
    if (d.chosen) classes.push("chosen");
    if (d.label) classes.push(d.label);
    if (n.d.id === state.selectedId) classes.push("selected");
    const g = sv("g", {
      class: classes.join(" "),
      transform: "translate(" + (n.x - W / 2) + "," + (n.y - H / 2) + ")",
      "data-id": d.id,
      role: "treeitem",
      tabindex: d.id === state.focusedId ? "0" : "-1",
      "aria-level": String(n.level + 1),
      "aria-selected": d.id === state.selectedId ? "true" : "false",
      "aria-label": nodeLabel(n),
    });
    if (n.kids.length) g.setAttribute("aria-expanded", n.expanded ? "true" : "false");
    g.appendChild(sv("rect", { class: "ring", x: -5, y: -5, width: W + 10, height: H + 10, rx: 10 }));
    g.appendChild(sv("rect", { class: "box", width: W, height: H, rx: 7, fill: style.fill }));
    const lines = [];
    const mark = d.label ? VERDICT[d.label].mark : "";
    if (d.operator === "root") {
      lines.push(["head", "task" + (mark ? " " + mark : "")]);
      lines.push(["", clip(d.text, 19)]);
    } else {
      lines.push(["head", (d.chosen ? "★ " : "") + d.operator + (mark ? " " + mark : "")]);
      lines.push(["", d.answer !== null ? "ans " + clip(d.answer, 15) : clip(d.text, 19)]);
    }
    const stats = [];
    if (d.value !== null) stats.push("v " + fmt(d.value));
    if (d.visits) stats.push("n " + d.visits);
    if (d.value === null && d.judgements.length) {
      const j = d.judgements.find((x) => x.score !== null && x.role !== "grader");
      if (j) stats.push(j.role + " " + fmt(j.score, 1));
    }
    if (stats.length) lines.push(["", stats.join(" · ")]);
    lines.forEach(([cls, text], i) => {
      const t = sv("text", { x: 9, y: 17 + i * 16, fill: style.text, class: cls });
      t.textContent = text;
      g.appendChild(t);
    });
    if (n.kids.length) {
      const knob = sv("g", {
        class: "knob",
        transform: "translate(" + W / 2 + "," + (H + 9) + ")",
        role: "button",
        tabindex: d.id === state.focusedId ? "0" : "-1",
        "aria-label": (n.expanded ? "Collapse" : "Expand") + " the " + (n.size - 1) + " nodes below",
        "aria-expanded": n.expanded ? "true" : "false",
      });
      knob.appendChild(sv("circle", { r: 9 }));
      const sign = sv("text", { class: "sign", x: 0, y: 4 });
      sign.textContent = n.expanded ? "−" : "+";
      knob.appendChild(sign);
      if (!n.expanded) {
        const more = sv("text", { class: "more", x: 14, y: 4 });
        more.textContent = (n.size - 1).toLocaleString("en");
        knob.appendChild(more);
      }
      g.appendChild(knob);
    }
    frag.appendChild(g);
  }

  function edgePath(p, n) {
    const y0 = p.y + H / 2 + 18;
    const y1 = n.y - H / 2;
    const ym = (y0 + y1) / 2;
    return "M" + p.x + "," + y0 + "C" + p.x + "," + ym + " " + n.x + "," + ym + " " + n.x + "," + y1;
  }

  // The part of the tree's plane on screen, widened by `margin` screens on each side.
  function viewRect(margin) {
    const r = svg.getBoundingClientRect();
    const v = state.view;
    const w = r.width / v.k;
    const ky = kY(v.k);
    const h = r.height / ky;
    const x0 = -v.x / v.k;
    const y0 = -v.y / ky;
    return { x0: x0 - w * margin, x1: x0 + w * (1 + margin), y0: y0 - h * margin, y1: y0 + h * (1 + margin) };
  }

  function contains(outer, inner) {
    return inner.x0 >= outer.x0 && inner.x1 <= outer.x1 && inner.y0 >= outer.y0 && inner.y1 <= outer.y1;
  }

  // Nodes as elements, only those near the screen (and the focused and selected ones,
  // so keyboard focus always has an element to sit on).
  function drawDetail(rect) {
    const near = (n) => n.x + W / 2 >= rect.x0 && n.x - W / 2 <= rect.x1 &&
      n.y + H / 2 + 20 >= rect.y0 && n.y - H / 2 <= rect.y1;
    const edges = document.createDocumentFragment();
    const nodes = document.createDocumentFragment();
    let drawn = 0;
    for (const n of state.visible) {
      const keep = near(n) || n.d.id === state.focusedId || n.d.id === state.selectedId;
      if (n.parent && n !== state.root && (keep || near(n.parent))) {
        edges.appendChild(sv("path", {
          d: edgePath(n.parent, n),
          class: "edge" + (n.d.chosen && n.parent.d.chosen ? " chosen" : ""),
        }));
      }
      if (keep) { drawNode(n, nodes); drawn++; }
    }
    edgeLayer.replaceChildren(edges);
    nodeLayer.replaceChildren(nodes);
    return drawn;
  }

  // Zoomed far out, boxes are a few pixels wide: draw every shown node, but as a few
  // paths (one per colour, one for all edges, one for the chosen path), not thousands
  // of elements. Text and knobs come back when zoomed in.
  function drawOverview() {
    const edges = [];
    const chosenEdges = [];
    const chosenBoxes = [];
    const byFill = new Map();
    // Boxes keep their shape on screen although the overview stretches levels apart.
    const bh = H * state.view.k / kY(state.view.k);
    for (const n of state.visible) {
      if (n.parent && n !== state.root) {
        const d = edgePath(n.parent, n);
        (n.d.chosen && n.parent.d.chosen ? chosenEdges : edges).push(d);
      }
      const box = "M" + (n.x - W / 2) + "," + (n.y - bh / 2) + "h" + W + "v" + bh + "h" + -W + "z";
      const fill = overviewFill(n);
      if (!byFill.has(fill)) byFill.set(fill, []);
      byFill.get(fill).push(box);
      if (n.d.chosen) chosenBoxes.push(box);
    }
    edgeLayer.replaceChildren(
      sv("path", { class: "edge", d: edges.join("") }),
      sv("path", { class: "edge chosen", d: chosenEdges.join("") }),
    );
    const frag = document.createDocumentFragment();
    for (const [fill, boxes] of byFill) frag.appendChild(sv("path", { class: "overview-box", fill: fill, d: boxes.join("") }));
    frag.appendChild(sv("path", { class: "overview-chosen", d: chosenBoxes.join("") }));
    nodeLayer.replaceChildren(frag);
    return 0;
  }

  // Value colours in 32 steps, so the overview needs at most ~35 paths.
  function overviewFill(n) {
    if (state.colour === "verdict") return VERDICT[n.d.label || "none"].fill;
    if (n.d.value === null || n.d.value === undefined) return "#e5e7eb";
    const [lo, hi] = state.domain;
    const t = hi > lo ? (n.d.value - lo) / (hi - lo) : 1;
    return scaleColour(Math.round(Math.min(1, Math.max(0, t)) * 31) / 31);
  }

  // Draw what the current view needs; `t0` is when the work that led here began.
  function draw(t0) {
    const start = t0 === undefined ? performance.now() : t0;
    const active = document.activeElement;
    const refocus = active && nodeLayer.contains(active) ? (active.classList.contains("knob") ? "knob" : "node") : null;
    const overview = state.view.k < OVERVIEW_K;
    const rect = viewRect(0.75);
    const drawn = overview ? drawOverview() : drawDetail(rect);
    state.drawn = { overview: overview, rect: rect };
    svg.classList.toggle("overview", overview);
    if (overview) {
      svg.setAttribute("tabindex", "0");
      svg.setAttribute("aria-label", "Overview of the tree (" + state.visible.length + " nodes): press Enter to zoom in");
    } else {
      svg.removeAttribute("tabindex");
      svg.setAttribute("aria-label", svg.dataset.label);
    }
    const ms = performance.now() - start;
    svg.dataset.renderMs = ms.toFixed(1);
    svg.dataset.drawn = String(drawn);
    // Until the next frame has been painted: the browser's own style, layout and paint.
    const seq = (state.draws = (state.draws || 0) + 1);
    requestAnimationFrame(() => setTimeout(() => {
      if (seq === state.draws) svg.dataset.paintMs = (performance.now() - start).toFixed(1);
    }, 0));
    if (refocus && state.focusedId && !overview) {
      const g = nodeEl(state.focusedId);
      const target = g && (refocus === "knob" ? g.querySelector(".knob") || g : g);
      if (target) target.focus({ preventScroll: true });
    } else if (refocus && overview) {
      svg.focus({ preventScroll: true });
    }
  }

  // After the expansion changed: lay out again, then draw.
  function render() {
    if (!state.root) return;
    const t0 = performance.now();
    layout();
    state.bounds = bounds();
    setTransform();
    svg.dataset.shown = String(state.visible.length);
    svg.setAttribute("aria-busy", "false");
    shownLine.textContent = "showing " + state.visible.length.toLocaleString("en") + " of " +
      state.byId.size.toLocaleString("en") + " nodes";
    draw(t0);
  }

  function nodeEl(id) {
    return nodeLayer.querySelector('g.node[data-id="' + CSS.escape(id) + '"]');
  }

  // ------------------------------------------------------------------ legend

  function drawLegend() {
    legend.replaceChildren();
    if (state.colour === "verdict") {
      for (const key of ["correct", "incorrect", "none"]) {
        const v = VERDICT[key];
        const item = el("span", { class: "swatch-item" });
        const sw = el("span", { class: "swatch" }, v.mark);
        sw.style.background = v.fill;
        sw.style.color = v.text;
        item.append(sw, document.createTextNode(v.name));
        legend.appendChild(item);
      }
    } else {
      const [lo, hi] = state.domain;
      legend.appendChild(el("span", { class: "muted" }, "value " + fmt(lo)));
      const bar = el("span", { class: "gradient", role: "img", "aria-label": "colour scale from value " + fmt(lo) + " to " + fmt(hi) });
      bar.style.background = "linear-gradient(to right, " + VALUE_STOPS.join(", ") + ")";
      legend.appendChild(bar);
      legend.appendChild(el("span", { class: "muted" }, fmt(hi)));
      const none = el("span", { class: "swatch-item" });
      const sw = el("span", { class: "swatch" });
      sw.style.background = "#e5e7eb";
      none.append(sw, document.createTextNode("no value"));
      legend.appendChild(none);
    }
    const chosen = el("span", { class: "swatch-item" });
    chosen.append(el("span", { class: "swatch chosen-swatch" }), document.createTextNode("chosen path"));
    legend.appendChild(chosen);
  }

  // ------------------------------------------------------------------ pan and zoom

  // Move the view; redraw when the level of detail changes or the screen leaves the
  // part drawn (at once when `now`, else on the next frame).
  function setTransform() {
    const v = state.view;
    viewport.setAttribute("transform", "translate(" + v.x + "," + v.y + ") scale(" + v.k + "," + kY(v.k) + ")");
    svg.dataset.zoom = v.k.toFixed(3);
  }

  function applyView(now) {
    const v = state.view;
    setTransform();
    if (!state.drawn) return;
    const overview = v.k < OVERVIEW_K;
    const stale = overview !== state.drawn.overview || (!overview && !contains(state.drawn.rect, viewRect(0)));
    if (!stale) return;
    if (now) {
      if (state.pendingDraw) { cancelAnimationFrame(state.pendingDraw); state.pendingDraw = 0; }
      draw();
    } else if (!state.pendingDraw) {
      state.pendingDraw = requestAnimationFrame(() => { state.pendingDraw = 0; draw(); });
    }
  }

  // The vertical scale: the zoom itself, except in the overview, where a tree much
  // wider than high (thousands of leaves, tens of levels) is stretched to fill the
  // height, so its shape shows instead of a thin line.
  function kY(k) {
    if (k >= OVERVIEW_K || !state.bounds) return k;
    const b = state.bounds;
    const r = svg.getBoundingClientRect();
    const fitY = (r.height - 56) / Math.max(1, b.y1 - b.y0);
    return Math.max(k, Math.min(fitY, OVERVIEW_K));
  }

  function zoomAt(factor, cx, cy) {
    const v = state.view;
    const k = Math.min(3, Math.max(0.002, v.k * factor));
    v.x = cx - (cx - v.x) * (k / v.k);
    v.y = cy - (cy - v.y) * (kY(k) / kY(v.k));
    v.k = k;
    applyView();
  }

  function bounds() {
    let x0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of state.visible) {
      x0 = Math.min(x0, n.x - W / 2);
      x1 = Math.max(x1, n.x + W / 2);
      y1 = Math.max(y1, n.y + H / 2 + 12);
    }
    return { x0: x0, x1: x1, y0: -H / 2, y1: y1 };
  }

  function fit(minK) {
    const b = state.bounds;
    const rect = svg.getBoundingClientRect();
    const pad = 28;
    const k = Math.min(1.25, (rect.width - 2 * pad) / (b.x1 - b.x0), (rect.height - 2 * pad) / (b.y1 - b.y0));
    const v = state.view;
    v.k = Math.max(minK || 0.002, k);
    v.x = (rect.width - (b.x1 - b.x0) * v.k) / 2 - b.x0 * v.k;
    v.y = pad - b.y0 * kY(v.k);
    if ((b.x1 - b.x0) * v.k > rect.width) {
      // Too wide to fit at a readable size: show the root and where the chosen path
      // leaves it (the chosen child itself when the two are more than a screen apart).
      const child = state.root.kids.find((k) => k.d.chosen && state.root.expanded);
      let x = state.root.x;
      if (child) {
        const apart = Math.abs(child.x - state.root.x) * v.k;
        x = apart > rect.width / 2 - W * v.k ? child.x : (child.x + state.root.x) / 2;
      }
      v.x = rect.width / 2 - x * v.k;
    }
    applyView();
  }

  function ensureVisible(n) {
    const rect = svg.getBoundingClientRect();
    const v = state.view;
    if (v.k < OVERVIEW_K) {
      // Keyboard focus needs the detailed drawing: zoom in on the node.
      v.k = 0.8;
      v.x = rect.width / 2 - n.x * v.k;
      v.y = rect.height / 2 - n.y * kY(v.k);
      applyView(true);
      return;
    }
    const sx = n.x * v.k + v.x;
    const sy = n.y * kY(v.k) + v.y;
    const mx = (W / 2 + 20) * v.k;
    const my = (H / 2 + 20) * v.k;
    if (sx < mx || sx > rect.width - mx || sy < my || sy > rect.height - my) {
      v.x = rect.width / 2 - n.x * v.k;
      v.y = rect.height / 2 - n.y * kY(v.k);
      applyView(true);
    }
  }

  let drag = null;
  svg.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || e.target.closest("g.node")) return;
    drag = { x: e.clientX, y: e.clientY, vx: state.view.x, vy: state.view.y, moved: false };
    svg.setPointerCapture(e.pointerId);
    svg.classList.add("dragging");
  });
  svg.addEventListener("pointermove", (e) => {
    if (!drag || !svg.hasPointerCapture(e.pointerId)) return;
    if (Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 3) drag.moved = true;
    state.view.x = drag.vx + e.clientX - drag.x;
    state.view.y = drag.vy + e.clientY - drag.y;
    applyView();
  });
  // The drag record lives until the click that ends it has been seen.
  const endDrag = (e) => {
    if (svg.hasPointerCapture(e.pointerId)) svg.releasePointerCapture(e.pointerId);
    svg.classList.remove("dragging");
    setTimeout(() => { drag = null; }, 0);
  };
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });

  function zoomCentre(factor) {
    const r = svg.getBoundingClientRect();
    zoomAt(factor, r.width / 2, r.height / 2);
  }

  // ------------------------------------------------------------------ focus and keys

  function setFocus(id, opts) {
    const prev = state.focusedId ? nodeEl(state.focusedId) : null;
    if (prev) {
      prev.setAttribute("tabindex", "-1");
      const k = prev.querySelector(".knob");
      if (k) k.setAttribute("tabindex", "-1");
    }
    state.focusedId = id;
    ensureVisible(state.byId.get(id));
    let g = nodeEl(id);
    if (!g) { draw(); g = nodeEl(id); }
    if (!g) return;
    g.setAttribute("tabindex", "0");
    const k = g.querySelector(".knob");
    if (k) k.setAttribute("tabindex", "0");
    if (!opts || opts.move !== false) g.focus({ preventScroll: true });
  }

  function toggle(n) {
    if (!n.kids.length) return;
    n.expanded = !n.expanded;
    render();
  }

  function neighbour(n, dir) {
    const same = state.visible.filter((m) => m.level === n.level).sort((a, b) => a.x - b.x);
    const i = same.indexOf(n);
    return same[i + dir] || null;
  }

  // In the overview a click zooms in where it lands; Enter zooms in on the focused node.
  svg.addEventListener("click", (e) => {
    if (!svg.classList.contains("overview") || drag && drag.moved) return;
    // Zoom in on the node nearest the click (on screen).
    const r = svg.getBoundingClientRect();
    const v = state.view;
    const ky = kY(v.k);
    const cx = e.clientX - r.left;
    const cy = e.clientY - r.top;
    let best = null;
    let bestD = Infinity;
    for (const n of state.visible) {
      const d = Math.hypot(n.x * v.k + v.x - cx, n.y * ky + v.y - cy);
      if (d < bestD) { best = n; bestD = d; }
    }
    if (best) setFocus(best.d.id);
  });
  svg.addEventListener("keydown", (e) => {
    if (e.target !== svg || !svg.classList.contains("overview")) return;
    if (["Enter", " ", "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home"].includes(e.key)) {
      e.preventDefault();
      setFocus(state.focusedId || state.root.d.id);
    }
  });

  nodeLayer.addEventListener("click", (e) => {
    const g = e.target.closest("g.node");
    if (!g) return;
    const n = state.byId.get(g.dataset.id);
    if (e.target.closest(".knob")) {
      setFocus(n.d.id);
      toggle(n);
      return;
    }
    setFocus(n.d.id);
    openDetail(n.d.id);
  });

  nodeLayer.addEventListener("keydown", (e) => {
    const g = e.target.closest("g.node");
    if (!g) return;
    const n = state.byId.get(g.dataset.id);
    const onKnob = !!e.target.closest(".knob");
    let target = null;
    switch (e.key) {
      case "Enter":
      case " ":
        e.preventDefault();
        if (onKnob) toggle(n);
        else openDetail(n.d.id);
        return;
      case "c":
      case "C":
        e.preventDefault();
        toggle(n);
        return;
      case "ArrowUp":
        target = n.parent;
        break;
      case "ArrowDown":
        if (n.kids.length && !n.expanded) { n.expanded = true; render(); }
        target = n.kids.find((k) => k.d.chosen) || n.kids[0] || null;
        break;
      case "ArrowLeft":
        target = neighbour(n, -1);
        break;
      case "ArrowRight":
        target = neighbour(n, 1);
        break;
      case "Home":
        target = state.root;
        break;
      default:
        return;
    }
    e.preventDefault();
    if (target) setFocus(target.d.id);
  });

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !detail.hidden) {
      e.preventDefault();
      closeDetail();
      return;
    }
    const tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (detail.contains(e.target)) return;
    if (e.key === "f" || e.key === "F") { fit(0); e.preventDefault(); }
    else if (e.key === "+" || e.key === "=") { zoomCentre(1.25); e.preventDefault(); }
    else if (e.key === "-" || e.key === "_") { zoomCentre(0.8); e.preventDefault(); }
  });

  // ------------------------------------------------------------------ the detail panel

  function section(title, count) {
    const s = el("section", { class: "block" });
    s.appendChild(el("h3", null, count === undefined ? title : title + " (" + count + ")"));
    return s;
  }

  function pre(text, cls) {
    return el("pre", { class: cls || "text" }, text === null || text === undefined ? "" : text);
  }

  function facts(pairs) {
    const dl = el("dl", { class: "facts-grid" });
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      dl.append(el("dt", null, k), el("dd", null, v === null ? "—" : v));
    }
    return dl;
  }

  function messagesBlock(messages) {
    const wrap = el("div", { class: "messages" });
    for (const m of messages) {
      const item = el("div", { class: "message role-" + (m.role || "user") });
      item.appendChild(el("div", { class: "message-role" }, m.role || "?"));
      item.appendChild(pre(typeof m.content === "string" ? m.content : JSON.stringify(m.content, null, 2)));
      wrap.appendChild(item);
    }
    return wrap;
  }

  function showDetail(data) {
    const node = data.node;
    const view = state.byId.get(node.id);
    detailTitle.textContent = (node.operator === "root" ? "Task (root)" : node.operator + " node") +
      (node.meta && node.meta.chosen ? " ★" : "");
    const body = document.createDocumentFragment();

    const badges = el("p", { class: "badges" });
    if (node.meta && node.meta.chosen) badges.appendChild(el("span", { class: "badge chosen" }, "chosen path"));
    if (view && view.d.label) badges.appendChild(el("span", { class: "badge " + view.d.label }, VERDICT[view.d.label].mark + " " + view.d.label));
    badges.appendChild(el("span", { class: "badge" }, node.role));
    if (node.status !== "done") badges.appendChild(el("span", { class: "badge" }, node.status));
    body.appendChild(badges);

    const isNum = (x) => typeof x === "number";
    body.appendChild(facts([
      ["answer", node.answer],
      ["value", isNum(node.value) ? fmt(node.value, 3) : null],
      ["visits", String(node.visits)],
      ["reward", isNum(node.meta.reward) ? fmt(node.meta.reward, 3) : undefined],
      ["prior", isNum(node.meta.prior) ? fmt(node.meta.prior, 3) : undefined],
      ["depth", String(node.depth)],
      ["sample", node.sample_index === null ? undefined : String(node.sample_index)],
      ["id", node.id],
    ]));

    const out = section(node.operator === "root" ? "Task" : "Output");
    out.appendChild(pre(node.text, "text output"));
    if (typeof node.meta.candidate === "string" && node.meta.candidate && node.meta.candidate !== node.text) {
      out.appendChild(el("h4", null, "Whole candidate"));
      out.appendChild(pre(node.meta.candidate));
    }
    body.appendChild(out);

    if (data.diff.length) {
      const s = section("Changes from its parent");
      const p = el("pre", { class: "text diff", "aria-label": "word diff against the parent: insertions and deletions marked" });
      let ins = 0, del = 0;
      for (const op of data.diff) {
        if (op.op === "equal") p.appendChild(document.createTextNode(op.text));
        else if (op.op === "insert") { p.appendChild(el("ins", null, op.text)); ins++; }
        else { p.appendChild(el("del", null, op.text)); del++; }
      }
      if (ins + del === 0) {
        s.appendChild(el("p", { class: "muted same" }, "The same text as its parent's."));
      } else {
        s.appendChild(el("p", { class: "muted" }, ins + (ins === 1 ? " insertion, " : " insertions, ") +
          del + (del === 1 ? " deletion" : " deletions") + " (word level; inserted words marked, deleted ones struck through)"));
        s.appendChild(p);
      }
      body.appendChild(s);
    }

    if (data.parent) {
      const s = el("p", { class: "parent-link" });
      const b = el("button", { type: "button", class: "linklike" }, "Go to the parent node");
      b.addEventListener("click", () => { revealNode(data.parent.id); openDetail(data.parent.id); });
      s.appendChild(b);
      body.appendChild(s);
    }

    const maker = data.calls.find((c) => c.id === node.call_id);
    if (maker) {
      const s = section("Prompt");
      s.appendChild(messagesBlock(maker.messages));
      body.appendChild(s);
    }

    const js = section("Judgements", data.judgements.length);
    if (!data.judgements.length) js.appendChild(el("p", { class: "muted" }, "No judgements."));
    for (const j of data.judgements) {
      const card = el("article", { class: "judgement" + (j.verdict ? " v-" + j.verdict : "") });
      let score = "";
      if (isNum(j.score)) {
        score = fmt(j.score, 2);
        if (isNum(j.scale_min) && isNum(j.scale_max)) score += " on " + fmt(j.scale_min) + "…" + fmt(j.scale_max);
      }
      const head = el("div", { class: "judgement-head" });
      head.append(el("strong", null, j.role), el("span", { class: "muted" }, " " + j.source));
      card.appendChild(head);
      card.appendChild(facts([
        ["score", score || null],
        ["verdict", j.verdict],
        ["first wrong step", j.first_wrong_step === null ? undefined : String(j.first_wrong_step)],
      ]));
      if (j.critique) card.appendChild(pre(j.critique, "text critique"));
      if (j.meta && typeof j.meta.advice === "string" && j.meta.advice) {
        card.appendChild(el("p", { class: "advice" }, "Advice: " + j.meta.advice));
      }
      js.appendChild(card);
    }
    body.appendChild(js);

    const cs = section("Model calls", data.calls.length);
    if (!data.calls.length) cs.appendChild(el("p", { class: "muted" }, "No model calls recorded for this node."));
    else {
      const table = el("table", { class: "data calls" });
      const head = el("tr");
      for (const h of ["role", "model", "tokens in → out", "latency", "cost"]) {
        head.appendChild(el("th", { scope: "col", class: h === "role" || h === "model" ? "" : "num" }, h));
      }
      table.appendChild(el("thead")).appendChild(head);
      const tb = el("tbody");
      for (const c of data.calls) {
        const tr = el("tr", { class: "call" });
        const role = el("td", null, c.role);
        if (c.cached) role.appendChild(el("span", { class: "badge" }, "cached"));
        if (c.error) role.appendChild(el("span", { class: "badge incorrect" }, "error"));
        const ms = c.latency_s * 1000;
        tr.append(
          role,
          el("td", { class: "clip", title: c.model }, c.model),
          el("td", { class: "num" }, fmt(c.prompt_tokens) + " → " + fmt(c.completion_tokens)),
          el("td", { class: "num" }, ms < 1000 ? ms.toFixed(ms < 10 ? 2 : 0) + " ms" : (ms / 1000).toFixed(1) + " s"),
          el("td", { class: "num" }, "$" + c.cost.toFixed(4)),
        );
        tb.appendChild(tr);
        const more = el("tr", { class: "call-more" });
        const td = el("td", { colspan: "5" });
        const det = el("details");
        det.appendChild(el("summary", null, "request and response" + (c.id === node.call_id ? " (made this node)" : " (about this node)")));
        det.appendChild(messagesBlock(c.messages));
        det.appendChild(el("div", { class: "message-role" }, "response"));
        det.appendChild(pre(c.response_text === null ? "(no response)" : c.response_text));
        if (c.error) det.appendChild(pre(c.error, "text error"));
        td.appendChild(det);
        more.appendChild(td);
        tb.appendChild(more);
      }
      table.appendChild(tb);
      cs.appendChild(table);
    }
    body.appendChild(cs);

    const meta = el("details", { class: "block" });
    meta.appendChild(el("summary", null, "All fields"));
    meta.appendChild(pre(JSON.stringify(node, null, 2), "text json"));
    body.appendChild(meta);

    detailBody.replaceChildren(body);
    detailBody.scrollTop = 0;
  }

  function revealNode(id) {
    let n = state.byId.get(id);
    let changed = false;
    while (n && n.parent) {
      if (!n.parent.expanded) { n.parent.expanded = true; changed = true; }
      n = n.parent;
    }
    if (changed) render();
  }

  async function openDetail(id) {
    const token = ++state.detailToken;
    state.selectedId = id;
    for (const g of nodeLayer.querySelectorAll("g.node.selected")) {
      g.classList.remove("selected");
      g.setAttribute("aria-selected", "false");
    }
    const g = nodeEl(id);
    if (g) { g.classList.add("selected"); g.setAttribute("aria-selected", "true"); }
    const opened = detail.hidden;
    detail.hidden = false;
    if (state.byId.has(id)) ensureVisible(state.byId.get(id));
    detailBody.setAttribute("aria-busy", "true");
    const url = new URL(window.location.href);
    url.searchParams.set("node", id);
    history.replaceState(null, "", url);
    try {
      const res = await fetch(app.dataset.nodeUrl.replace("__NODE__", encodeURIComponent(id)));
      const data = await res.json();
      if (token !== state.detailToken) return;
      if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
      showDetail(data);
    } catch (err) {
      if (token !== state.detailToken) return;
      detailBody.replaceChildren(el("p", { class: "error" }, "Could not load the node: " + err.message));
    }
    detailBody.setAttribute("aria-busy", "false");
    detail.dataset.nodeId = id;
    if (opened) detailTitle.focus({ preventScroll: true });
  }

  function closeDetail() {
    detail.hidden = true;
    state.detailToken++;
    const id = state.selectedId;
    state.selectedId = null;
    for (const g of nodeLayer.querySelectorAll("g.node.selected")) {
      g.classList.remove("selected");
      g.setAttribute("aria-selected", "false");
    }
    const url = new URL(window.location.href);
    url.searchParams.delete("node");
    history.replaceState(null, "", url);
    if (id && nodeEl(id)) setFocus(id);
  }

  document.getElementById("detail-close").addEventListener("click", closeDetail);

  // ------------------------------------------------------------------ controls

  colourBy.addEventListener("change", () => {
    state.colour = colourBy.value;
    drawLegend();
    draw();
  });
  document.getElementById("btn-fit").addEventListener("click", () => fit(0));
  document.getElementById("btn-zoom-in").addEventListener("click", () => zoomCentre(1.25));
  document.getElementById("btn-zoom-out").addEventListener("click", () => zoomCentre(0.8));
  document.getElementById("btn-expand").addEventListener("click", () => {
    for (const n of state.byId.values()) n.expanded = true;
    render();
    fit(0);
  });
  document.getElementById("btn-chosen").addEventListener("click", () => {
    for (const n of state.byId.values()) n.expanded = !!n.d.chosen;
    if (state.root) state.root.expanded = true;
    render();
    fit(0.25);
  });
  const helpButton = document.getElementById("btn-help");
  helpButton.addEventListener("click", () => {
    const help = document.getElementById("help");
    help.hidden = !help.hidden;
    helpButton.setAttribute("aria-expanded", help.hidden ? "false" : "true");
  });

  window.addEventListener("resize", () => applyView());

  // ------------------------------------------------------------------ start

  async function start() {
    let data;
    try {
      const res = await fetch(app.dataset.treeUrl);
      data = await res.json();
      if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
    } catch (err) {
      statusLine.textContent = "Could not load the tree: " + err.message;
      statusLine.classList.add("error");
      return;
    }
    const t0 = performance.now();
    build(data);
    if (!state.root) {
      statusLine.textContent = "This task has no tree (it may not have started).";
      return;
    }
    initialExpansion();
    state.focusedId = state.root.d.id;
    drawLegend();
    render();
    fit(0.75);
    svg.dataset.loadMs = (performance.now() - t0).toFixed(1);
    statusLine.textContent = "";
    statusLine.hidden = true;
    const wanted = new URL(window.location.href).searchParams.get("node");
    if (wanted && state.byId.has(wanted)) {
      revealNode(wanted);
      setFocus(wanted, { move: false });
      openDetail(wanted);
    }
    app.dataset.ready = "true";
  }

  start();
})();
