// Uploads: every file chosen or dropped gets a row with its own progress bar (bytes sent) and then
// its outcome; a refused file shows the server's reason and the others go on. A few go at once. A
// file the server asks to send later (429 or 503 with Retry-After: a full backlog, busy slots) waits
// that long and is sent again, as many times as it takes.
import { upload } from "./api.js";
import { formatBytes } from "./viewer.js";

const atOnce = 3;

export class Uploads {
  constructor(list, { tags, onUploaded }) {
    Object.assign(this, { list, tagsInput: tags, onUploaded });
    this.queue = [];
    this.running = 0;
  }

  // add queues files, each named for its file name, with the tags typed so far.
  add(files) {
    const tags = this.tagsInput.value;
    for (const file of files) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      const bar = document.createElement("progress");
      bar.max = file.size || 1;
      bar.value = 0;
      bar.setAttribute("aria-label", `Upload of ${file.name}`);
      const status = document.createElement("span");
      status.className = "status";
      status.setAttribute("role", "status");
      status.textContent = `Waiting (${formatBytes(file.size)})`;
      li.append(name, bar, status);
      this.list.prepend(li);
      this.queue.push({ file, tags, bar, status, li });
    }
    this.pump();
  }

  pump() {
    while (this.running < atOnce && this.queue.length) {
      const job = this.queue.shift();
      this.running++;
      this.send(job).finally(() => {
        this.running--;
        this.pump();
      });
    }
  }

  async send({ file, tags, bar, status, li }) {
    status.textContent = "Sending…";
    try {
      const im = await upload(file, file.name, tags, (sent, total) => {
        bar.max = total;
        bar.value = sent;
        status.textContent = `Sending: ${formatBytes(sent)} of ${formatBytes(total)}`;
      });
      bar.value = bar.max;
      status.textContent = "Uploaded";
      li.dataset.state = "done";
      li.dataset.id = im.id;
      this.onUploaded(im);
    } catch (e) {
      if ((e.status === 429 || e.status === 503) && e.retryAfter > 0) {
        const secs = Math.min(e.retryAfter, 60);
        status.textContent = `Waiting ${secs} s: ${e.message}`;
        await new Promise((r) => setTimeout(r, secs * 1000));
        return this.send({ file, tags, bar, status, li });
      }
      status.classList.add("error");
      status.textContent = `Refused: ${e.message}`;
      li.dataset.state = "refused";
    }
  }
}
