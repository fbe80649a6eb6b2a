// One image, in a modal dialog: its large view first (the display size the screen wants, from the
// Image's srcset; thumb_500 where there is none), then the original or the grayscale on demand; its
// details; rename and retag (PUT); download any file; delete after a confirmation.
import { call } from "./api.js";
import { paint } from "./blurhash.js";

const $ = (id) => document.getElementById(id);

export class Viewer {
  constructor({ onChanged }) {
    this.dialog = $("viewer");
    this.onChanged = onChanged;
    this.im = null;
    this.returnFocus = null;
    $("viewer-close").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => {
      this.hideConfirm();
      this.returnFocus?.focus();
    });
    for (const [id, variant] of [["show-large", "thumb_500"], ["show-original", "original"], ["show-grayscale", "grayscale"]]) {
      $(id).addEventListener("click", () => this.show(variant));
    }
    $("edit").addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    $("delete").addEventListener("click", () => {
      $("confirm").hidden = false;
      $("cancel-delete").focus();
    });
    $("cancel-delete").addEventListener("click", () => this.hideConfirm());
    $("confirm-delete").addEventListener("click", () => this.remove());
  }

  // open shows image im; focus returns to from when the dialog closes.
  open(im, from) {
    this.returnFocus = from;
    this.im = im;
    $("viewer-title").textContent = im.name;
    $("edit-name").value = im.name;
    $("edit-tags").value = im.tags.join(", ");
    $("edit-message").textContent = "";
    this.hideConfirm();
    paint($("viewer-placeholder"), im.placeholder);
    this.details();
    this.downloads();
    this.show(im.status === "ready" ? "thumb_500" : "original");
    if (!this.dialog.open) this.dialog.showModal();
  }

  // show puts one file of the image on the stage.
  show(variant) {
    const im = this.im;
    const file = variant === "original" ? { signed_url: im.signed_url, width: im.width, height: im.height } : im.variants[variant];
    for (const [id, v] of [["show-large", "thumb_500"], ["show-original", "original"], ["show-grayscale", "grayscale"]]) {
      $(id).setAttribute("aria-pressed", String(v === variant));
      $(id).disabled = v !== "original" && !im.variants[v];
    }
    const img = $("viewer-img");
    img.alt = `${im.name}${variant === "grayscale" ? " (grayscale)" : ""}`;
    img.dataset.variant = variant;
    if (file) {
      img.width = file.width;
      img.height = file.height;
      // The large view takes the display size the screen wants (made by the server on its first
      // request); the original and the grayscale are shown as they are.
      img.src = variant === "thumb_500" ? largeURL(im, file.signed_url) : file.signed_url;
    }
    $("viewer-caption").textContent = { thumb_500: "Large preview", original: "Original, as uploaded", grayscale: "Grayscale copy, full size" }[variant];
  }

  details() {
    const im = this.im;
    const rows = [
      ["Status", im.status + (im.error ? `: ${im.error}` : "")],
      ["Type", im.content_type],
      ["Dimensions", `${im.width} × ${im.height} pixels`],
      ["Size", formatBytes(im.size)],
      ["SHA-256", im.sha256],
      ["Tags", im.tags.join(", ") || "none"],
      ["Uploaded", new Date(im.created_at).toLocaleString()],
    ];
    $("details").replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      return [dt, dd];
    }));
  }

  downloads() {
    const im = this.im;
    const files = [["Original", im.signed_url, im.size], ...Object.entries(im.variants).map(([k, v]) => [k, v.signed_url, v.size])];
    $("downloads").replaceChildren(...files.map(([label, url, size]) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = url;
      a.download = "";
      a.textContent = `${label} (${formatBytes(size)})`;
      li.append(a);
      return li;
    }));
  }

  async save() {
    const msg = $("edit-message");
    msg.className = "message";
    try {
      const { data } = await call("PUT", `/api/v1/images/${this.im.id}`, { name: $("edit-name").value, tags: $("edit-tags").value });
      this.im = data;
      $("viewer-title").textContent = data.name;
      this.details();
      msg.className = "message ok";
      msg.textContent = "Saved.";
      this.onChanged();
    } catch (e) {
      msg.textContent = e.message;
    }
  }

  hideConfirm() {
    $("confirm").hidden = true;
  }

  async remove() {
    try {
      await call("DELETE", `/api/v1/images/${this.im.id}`);
    } catch (e) {
      if (e.status !== 404) {
        $("edit-message").textContent = e.message;
        return;
      }
    }
    this.returnFocus = null;
    this.dialog.close();
    this.onChanged();
  }
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// largeURL is the smallest size in im's srcset at least as wide as the stage shows the image on this
// screen (its CSS width times the pixel ratio), or the largest there is; fallback when there is none.
function largeURL(im, fallback) {
  const want = Math.min(window.innerWidth * 0.92, 38 * 16) * (window.devicePixelRatio || 1);
  const sizes = (im.srcset || "").split(", ")
    .map((s) => { const [url, w] = s.split(" "); return { url, width: Number.parseInt(w, 10) }; })
    .filter((s) => s.url && s.width > 0)
    .sort((a, b) => a.width - b.width);
  return (sizes.find((s) => s.width >= want) || sizes[sizes.length - 1] || { url: fallback }).url;
}
