// BlurHash decoding (github.com/woltapp/blurhash): paints an image's placeholder, which the API
// computes from its thumbnail, onto a small canvas that CSS stretches.
const chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

function decode83(s) {
  let v = 0;
  for (const c of s) {
    const i = chars.indexOf(c);
    if (i < 0) throw new Error("not a BlurHash");
    v = v * 83 + i;
  }
  return v;
}

const toLinear = (c) => {
  const v = c / 255;
  return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
};
const toSRGB = (v) => {
  v = Math.max(0, Math.min(1, v));
  return Math.round(v <= 0.0031308 ? v * 12.92 * 255 : (1.055 * Math.pow(v, 1 / 2.4) - 0.055) * 255);
};
const signPow = (v, e) => Math.sign(v) * Math.pow(Math.abs(v), e);

// pixels decodes hash into w×h RGBA pixels.
export function pixels(hash, w, h) {
  const size = decode83(hash[0]);
  const nx = (size % 9) + 1, ny = Math.floor(size / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) throw new Error("not a BlurHash");
  const maxAC = (decode83(hash[1]) + 1) / 166;
  const colors = [];
  const dc = decode83(hash.slice(2, 6));
  colors.push([toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]);
  for (let i = 1; i < nx * ny; i++) {
    const v = decode83(hash.slice(4 + 2 * i, 6 + 2 * i));
    colors.push([Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19].map((q) => signPow((q - 9) / 9, 2) * maxAC));
  }
  const out = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let r = 0, g = 0, b = 0;
      for (let j = 0; j < ny; j++) {
        const cy = Math.cos((Math.PI * y * j) / h);
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / w) * cy;
          const c = colors[i + j * nx];
          r += c[0] * basis; g += c[1] * basis; b += c[2] * basis;
        }
      }
      const o = 4 * (y * w + x);
      out[o] = toSRGB(r); out[o + 1] = toSRGB(g); out[o + 2] = toSRGB(b); out[o + 3] = 255;
    }
  }
  return out;
}

// paint draws hash on canvas (at the canvas's own small size); a bad hash leaves it blank.
export function paint(canvas, hash) {
  if (!hash) return false;
  try {
    const { width: w, height: h } = canvas;
    canvas.getContext("2d").putImageData(new ImageData(pixels(hash, w, h), w, h), 0, 0);
    return true;
  } catch {
    return false;
  }
}
