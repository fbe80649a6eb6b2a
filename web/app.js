// imageapi's page: sign in or up, upload, browse, open. It uses the public API only
// (openapi.json), with the token in sessionStorage for this tab.
import { signIn, signUp, signOut, token, username, whenSignedOut } from "./api.js";
import { Gallery } from "./gallery.js";
import { Uploads } from "./uploads.js";
import { Viewer } from "./viewer.js";
import { AccountPanel } from "./account.js";

const $ = (id) => document.getElementById(id);
const signupOpen = document.querySelector('meta[name="imageapi-signup"]')?.content !== "closed";

const gallery = new Gallery($("gallery"), {
  count: $("count"), page: $("page"), prev: $("prev"), next: $("next"),
  onOpen: (im, from) => im && viewer.open(im, from),
});
const viewer = new Viewer({ onChanged: () => gallery.refresh() });
const account = new AccountPanel({ onGone: (message) => showAccount(message) });
const uploads = new Uploads($("uploads"), { tags: $("tags-new"), onUploaded: () => gallery.refresh() });

function showAccount(message = "") {
  gallery.stop();
  if ($("viewer").open) $("viewer").close();
  if ($("account-panel").open) $("account-panel").close();
  $("library").hidden = true;
  $("account").hidden = false;
  $("signout").hidden = true;
  $("account-open").hidden = true;
  $("whoami").hidden = true;
  $("auth-message").textContent = message;
  $("signup").hidden = !signupOpen;
  $("password").value = "";
  $("username").focus();
}

function showLibrary() {
  $("account").hidden = true;
  $("library").hidden = false;
  $("signout").hidden = false;
  $("account-open").hidden = false;
  $("whoami").hidden = false;
  $("whoami").textContent = `Signed in as ${username() || "you"}`;
  $("uploads").replaceChildren();
  gallery.filter("");
  $("files").focus();
}

async function authenticate(how) {
  const name = $("username").value.trim(), password = $("password").value;
  const msg = $("auth-message");
  if (!name || !password) {
    msg.textContent = "Enter a username and a password.";
    return;
  }
  msg.textContent = "";
  for (const b of [$("signin"), $("signup")]) b.disabled = true;
  try {
    await (how === "up" ? signUp(name, password) : signIn(name, password));
    showLibrary();
  } catch (e) {
    msg.textContent = e.message;
  } finally {
    for (const b of [$("signin"), $("signup")]) b.disabled = false;
  }
}

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  authenticate("in");
});
$("signup").addEventListener("click", () => authenticate("up"));
$("account-open").addEventListener("click", () => account.open());
$("signout").addEventListener("click", () => {
  signOut();
  showAccount("You are signed out.");
});
whenSignedOut((reason) => showAccount(reason));

$("files").addEventListener("change", (e) => {
  uploads.add([...e.target.files]);
  e.target.value = "";
});
const zone = $("dropzone");
zone.addEventListener("dragover", (e) => {
  e.preventDefault();
  zone.classList.add("over");
});
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  uploads.add([...e.dataTransfer.files]);
});

$("filter").addEventListener("submit", (e) => {
  e.preventDefault();
  gallery.filter($("tag-filter").value.trim());
});
$("clear-filter").addEventListener("click", () => {
  $("tag-filter").value = "";
  gallery.filter("");
});

if (token()) showLibrary();
else showAccount();
