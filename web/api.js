// The API client: the token (kept in sessionStorage, never localStorage), JSON calls, and problem+json
// errors as ApiError. A 401 anywhere calls onSignedOut with the reason.
const tokenKey = "imageapi.token";
const userKey = "imageapi.user";

export class ApiError extends Error {
  constructor(status, detail, retryAfter = 0) {
    super(detail);
    this.status = status;
    this.retryAfter = retryAfter; // seconds, from a 429's or 503's Retry-After
  }
}

let onSignedOut = () => {};

// whenSignedOut registers what to do when the server refuses the token.
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

export function token() {
  return sessionStorage.getItem(tokenKey);
}

export function username() {
  return sessionStorage.getItem(userKey);
}

export function signOut() {
  sessionStorage.removeItem(tokenKey);
  sessionStorage.removeItem(userKey);
}

// problem reads a failed response's detail (problem+json), or says what the status means.
export async function problem(resp) {
  try {
    const p = await resp.json();
    if (p && p.detail) return new ApiError(resp.status, p.detail);
  } catch {}
  return new ApiError(resp.status, `the server answered ${resp.status} ${resp.statusText}`);
}

// call sends a JSON request with the token and returns the parsed body (or null for 204), with the
// response's headers; it throws ApiError.
export async function call(method, path, body, { signal } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "the server cannot be reached; check your connection and try again");
  }
  if (resp.status === 401 && token()) {
    const err = await problem(resp);
    signOut();
    onSignedOut(`You were signed out: ${err.message}. Sign in again.`);
    throw err;
  }
  if (!resp.ok) throw await problem(resp);
  const data = resp.status === 204 ? null : await resp.json();
  return { data, headers: resp.headers };
}

// keepToken keeps a token the server answered with (a password change returns a fresh one).
export function keepToken(accessToken) {
  sessionStorage.setItem(tokenKey, accessToken);
}

// signIn exchanges credentials for a token and keeps it for this tab.
export async function signIn(name, password) {
  const { data } = await call("POST", "/api/v1/auth/token", { username: name, password });
  sessionStorage.setItem(tokenKey, data.access_token);
  sessionStorage.setItem(userKey, name);
}

export async function signUp(name, password) {
  await call("POST", "/api/v1/auth/signup", { username: name, password });
  await signIn(name, password);
}

// upload sends one file as multipart, reporting bytes sent through onProgress(sent, total), and
// resolves with the new Image; it rejects with ApiError. (fetch reports no upload progress: XHR does.)
export function upload(file, name, tags, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const q = new URLSearchParams({ name });
    if (tags) q.set("tags", tags);
    xhr.open("POST", `/api/v1/images/?${q}`);
    xhr.setRequestHeader("Authorization", `Bearer ${token()}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError(0, "the upload was cut off; check your connection and try again"));
    xhr.onload = () => {
      const body = xhr.response;
      if (xhr.status === 201) return resolve(body);
      if (xhr.status === 401) {
        signOut();
        onSignedOut("You were signed out. Sign in again.");
      }
      const retryAfter = Number.parseInt(xhr.getResponseHeader("Retry-After") || "0", 10) || 0;
      reject(new ApiError(xhr.status, (body && body.detail) || `the server answered ${xhr.status}`, retryAfter));
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
