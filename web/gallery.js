// The gallery: the signed-in user's images newest first, a page at a time by the cursors the API
// answers with (each page costs the same at any depth), optionally of one tag,
// as cards that paint the image's placeholder at once and its thumbnail when it has loaded. While any
// image on the page is pending or processing, the page is asked for again every poll interval, and
// the cards whose image changed are drawn anew: a status change shows without a reload.
import { call } from "./api.js";
import { paint } from "./blurhash.js";

const pageSize = 12;
const pollMs = 1000;

export class Gallery {
  constructor(root, { count, page, prev, next, onOpen }) {
    Object.assign(this, { root, countEl: count, pageEl: page, prevEl: prev, nextEl: next, onOpen });
    this.cursors = [""]; // the cursor of each page walked so far: the first page has none
    this.index = 0; // which of them is shown
    this.nextCursor = "";
    this.tag = "";
    this.total = 0;
    this.shown = new Map(); // id → the Image a card shows
    this.timer = null;
    this.loading = null;
    prev.addEventListener("click", () => this.go(this.index - 1));
    next.addEventListener("click", () => {
      if (!this.nextCursor) return;
      this.cursors[this.index + 1] = this.nextCursor;
      this.go(this.index + 1);
    });
    // One listener for every card (event delegation): a click anywhere on a card opens it; its
    // heading's button is what the keyboard reaches.
    root.addEventListener("click", (e) => {
      const art = e.target.closest("article.card");
      if (art) this.onOpen(this.shown.get(Number(art.dataset.id)), art.querySelector("button.open"));
    });
  }

  // filter shows the first page of images with tag ("" for all).
  filter(tag) {
    this.tag = tag;
    this.cursors = [""];
    return this.go(0);
  }

  go(index) {
    this.index = Math.max(0, Math.min(index, this.cursors.length - 1));
    return this.refresh();
  }

  stop() {
    clearTimeout(this.timer);
    this.loading?.abort();
    this.shown.clear();
    this.root.replaceChildren();
  }

  // refresh asks for the current page and redraws what changed.
  async refresh() {
    clearTimeout(this.timer);
    this.loading?.abort();
    const ctl = (this.loading = new AbortController());
    const q = new URLSearchParams({ limit: pageSize });
    if (this.tag) q.set("tag", this.tag);
    if (this.cursors[this.index]) q.set("cursor", this.cursors[this.index]);
    let resp;
    try {
      resp = await call("GET", `/api/v1/images/?${q}`, undefined, { signal: ctl.signal });
    } catch (e) {
      if (e.name === "AbortError") return;
      this.countEl.textContent = `Could not load your images: ${e.message}`;
      this.timer = setTimeout(() => this.refresh(), 5 * pollMs);
      return;
    }
    const images = resp.data;
    this.total = Number(resp.headers.get("X-Total-Count") || images.length);
    this.nextCursor = resp.headers.get("X-Next-Cursor") || "";
    if (images.length === 0 && this.index > 0 && this.total > 0) return this.go(this.index - 1);
    this.draw(images);
    if (images.some((im) => im.status === "pending" || im.status === "processing")) {
      this.timer = setTimeout(() => this.refresh(), pollMs);
    }
  }

  draw(images) {
    const cards = [];
    const next = new Map();
    for (const im of images) {
      const old = this.shown.get(im.id);
      const existing = this.root.querySelector(`article[data-id="${im.id}"]`);
      // A card is kept while its image has not changed: its loaded thumbnail stays on screen.
      cards.push(existing && old && old.updated_at === im.updated_at ? existing : card(im));
      next.set(im.id, im);
    }
    this.shown = next;
    this.root.replaceChildren(...cards);
    const pages = Math.max(1, Math.ceil(this.total / pageSize));
    const page = this.index + 1;
    const what = this.tag ? `tagged “${this.tag}”` : "in all";
    this.countEl.textContent = this.total === 0
      ? (this.tag ? `No images tagged “${this.tag}”.` : "No images yet: upload some above.")
      : `${this.total} image${this.total === 1 ? "" : "s"} ${what}.`;
    this.pageEl.textContent = `Page ${page} of ${pages}`;
    this.prevEl.disabled = page <= 1;
    this.nextEl.disabled = !this.nextCursor;
  }
}

// card draws one image: an <article> whose heading is the image's name (a button that opens it),
// with its thumbnail, or its placeholder while it is processing.
function card(im) {
  const art = document.createElement("article");
  art.className = "card";
  art.dataset.id = im.id;
  art.dataset.status = im.status;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  const canvas = document.createElement("canvas");
  canvas.width = 32;
  canvas.height = 24;
  canvas.setAttribute("aria-hidden", "true");
  paint(canvas, im.placeholder);
  thumb.append(canvas);
  const large = im.variants.thumb_500, small = im.variants.thumb_100;
  if (im.status === "ready" && large) {
    const img = document.createElement("img");
    img.alt = im.name;
    img.decoding = "async";
    img.width = large.width;
    img.height = large.height;
    img.addEventListener("load", () => img.classList.add("loaded"), { once: true });
    if (small) {
      // A 20rem card on a 2× screen wants 640 pixels: the w640 display size, made on first request.
      const w640 = (im.srcset || "").split(", ").find((s) => s.includes("variant=w640"));
      img.srcset = [`${small.signed_url} ${small.width}w`, `${large.signed_url} ${large.width}w`, ...(w640 ? [w640] : [])].join(", ");
      img.sizes = "(max-width: 40rem) 100px, 20rem";
    }
    img.src = large.signed_url;
    thumb.append(img);
  } else {
    const state = document.createElement("p");
    state.className = "state";
    state.textContent = im.status === "failed" ? "Failed" : im.status === "processing" ? "Processing…" : "Waiting…";
    thumb.append(state);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const h = document.createElement("h3");
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.textContent = im.name;
  h.append(open);
  meta.append(h);
  if (im.tags.length) {
    const tags = document.createElement("p");
    tags.className = "tags";
    tags.textContent = im.tags.map((t) => `#${t}`).join(" ");
    meta.append(tags);
  }
  if (im.status === "failed" && im.error) {
    const err = document.createElement("p");
    err.className = "error";
    err.textContent = im.error;
    meta.append(err);
  }
  art.append(thumb, meta);
  return art;
}
