// The account panel: storage used against the quota, password change, API keys (made, shown once,
// copied, deleted), sign out everywhere, and deleting the account after typing its name.
import { call, keepToken, signOut, username } from "./api.js";
import { formatBytes } from "./viewer.js";

const $ = (id) => document.getElementById(id);

export class AccountPanel {
  constructor({ onGone }) {
    this.dialog = $("account-panel");
    this.onGone = onGone; // (message): the account's sessions ended here
    $("account-close").addEventListener("click", () => this.dialog.close());
    $("password-form").addEventListener("submit", (e) => { e.preventDefault(); this.changePassword(); });
    $("key-form").addEventListener("submit", (e) => { e.preventDefault(); this.createKey(); });
    $("keys").addEventListener("click", (e) => {
      const id = e.target.closest("button[data-key]")?.dataset.key;
      if (id) this.deleteKey(id);
    });
    $("key-copy").addEventListener("click", () => this.copyKey());
    $("logout-all").addEventListener("click", () => this.logoutAll());
    $("delete-account").addEventListener("click", () => {
      $("delete-account-form").hidden = false;
      $("confirm-username").focus();
    });
    $("keep-account").addEventListener("click", () => {
      $("delete-account-form").hidden = true;
      $("delete-account").focus();
    });
    $("delete-account-form").addEventListener("submit", (e) => { e.preventDefault(); this.deleteAccount(); });
  }

  async open() {
    for (const id of ["password-message", "key-message", "delete-account-message"]) $(id).textContent = "";
    $("key-made").hidden = true;
    $("delete-account-form").hidden = true;
    this.dialog.showModal();
    await Promise.all([this.loadUsage(), this.loadKeys()]);
  }

  async loadUsage() {
    try {
      const { data: me } = await call("GET", "/api/v1/auth/me");
      const images = `${me.images} image${me.images === 1 ? "" : "s"}`;
      const bar = $("usage-bar");
      if (me.quota) {
        $("usage").textContent = `${images}, ${formatBytes(me.bytes_stored)} of ${formatBytes(me.quota)} used (originals and their copies).`;
        bar.max = me.quota;
        bar.value = Math.min(me.bytes_stored, me.quota);
        bar.hidden = false;
      } else {
        $("usage").textContent = `${images}, ${formatBytes(me.bytes_stored)} stored (originals and their copies).`;
        bar.hidden = true;
      }
    } catch (e) {
      $("usage").textContent = e.message;
    }
  }

  async loadKeys() {
    try {
      const { data: keys } = await call("GET", "/api/v1/auth/keys");
      $("keys").replaceChildren(...keys.map((k) => {
        const li = document.createElement("li");
        const text = document.createElement("span");
        const used = k.last_used_at ? `last used ${new Date(k.last_used_at).toLocaleString()}` : "never used";
        const expires = k.expires_at ? `, expires ${new Date(k.expires_at).toLocaleDateString()}` : "";
        text.textContent = `${k.name} (${k.prefix}…): ${used}${expires}`;
        const del = document.createElement("button");
        del.type = "button";
        del.dataset.key = k.id;
        del.textContent = "Delete";
        del.setAttribute("aria-label", `Delete key ${k.name}`);
        li.append(text, del);
        return li;
      }));
    } catch (e) {
      $("key-message").textContent = e.message;
    }
  }

  async changePassword() {
    const msg = $("password-message");
    msg.classList.remove("ok");
    try {
      const { data } = await call("POST", "/api/v1/auth/password", {
        current_password: $("current-password").value, new_password: $("new-password").value,
      });
      keepToken(data.access_token);
      $("current-password").value = $("new-password").value = "";
      msg.classList.add("ok");
      msg.textContent = "Password changed. Other sessions and your API keys have been signed out.";
      await this.loadKeys();
    } catch (e) {
      msg.textContent = e.message;
    }
  }

  async createKey() {
    const msg = $("key-message");
    msg.textContent = "";
    try {
      const { data } = await call("POST", "/api/v1/auth/keys", { name: $("key-name").value.trim() });
      $("key-name").value = "";
      $("key-secret").value = data.key;
      $("key-made").hidden = false;
      $("key-secret").focus();
      $("key-secret").select();
      await this.loadKeys();
    } catch (e) {
      msg.textContent = e.message;
    }
  }

  async copyKey() {
    try {
      await navigator.clipboard.writeText($("key-secret").value);
      $("key-message").textContent = "";
      $("key-copy").textContent = "Copied";
    } catch {
      $("key-secret").select(); // the clipboard is not ours: the key stays selected to copy by hand
    }
  }

  async deleteKey(id) {
    try {
      await call("DELETE", `/api/v1/auth/keys/${id}`);
      $("key-made").hidden = true;
      await this.loadKeys();
      $("key-name").focus();
    } catch (e) {
      $("key-message").textContent = e.message;
    }
  }

  async logoutAll() {
    try {
      await call("POST", "/api/v1/auth/logout-all");
    } catch {}
    this.dialog.close();
    signOut();
    this.onGone("You are signed out everywhere.");
  }

  async deleteAccount() {
    const msg = $("delete-account-message");
    if ($("confirm-username").value.trim().toLowerCase() !== (username() || "").toLowerCase()) {
      msg.textContent = "Type your username exactly to confirm.";
      $("confirm-username").focus();
      return;
    }
    try {
      await call("DELETE", "/api/v1/auth/me", { password: $("confirm-password").value });
      this.dialog.close();
      signOut();
      this.onGone("Your account and all its images have been deleted.");
    } catch (e) {
      msg.textContent = e.message;
    }
  }
}
