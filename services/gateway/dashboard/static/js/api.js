// The API client: every call carries the key kept in this tab's sessionStorage, and every error becomes an
// ApiError with the server's message and, where it names them, the fields at fault.

const KEY = "tunefleet.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    const message = typeof detail === "string" ? detail : detail?.message || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = detail?.code;
    this.field = detail?.field;
    // [{field, problem}] from validation, or [{line, problem}] from a data set's check
    this.errors = Array.isArray(detail?.errors) ? detail.errors
      : Array.isArray(detail?.details?.errors) ? detail.details.errors : [];
  }

  /** The problems by field name (a dotted path such as "training.lora.r"). */
  byField() {
    const out = {};
    for (const e of this.errors) if (e.field) (out[e.field] ||= []).push(e.problem);
    if (this.field && !out[this.field]) out[this.field] = [this.message];
    return out;
  }
}

async function parse(response) {
  const text = await response.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return text; }
}

export async function api(path, { method = "GET", body, form, key = session.key, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  let payload;
  if (form) payload = form;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the gateway cannot be reached; is TuneFleet running?");
  }
  const data = await parse(response);
  if (!response.ok) {
    if (response.status === 401 && key === session.key) window.dispatchEvent(new CustomEvent("tunefleet:signed-out"));
    throw new ApiError(response.status, data?.detail ?? data);
  }
  return data;
}

/** An upload with progress (fetch has no upload progress): resolves with the parsed answer, rejects with ApiError. */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "the upload was cut off; is TuneFleet running?"));
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = xhr.responseText; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data?.detail ?? data));
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** A download through fetch (the key is a header, so a plain link cannot carry it). */
export async function download(path, fallbackName) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${session.key}` } });
  if (!response.ok) throw new ApiError(response.status, (await parse(response))?.detail);
  const disposition = response.headers.get("content-disposition") || "";
  const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] || fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Server-sent events over fetch (EventSource cannot send the key). Calls onEvent(name, data) for each event and
 * reconnects after a dropped connection until stop() is called or the server ends the stream.
 * Returns { stop }.
 */
export function stream(path, onEvent, { onState = () => {}, retryMs = 2000 } = {}) {
  const controller = new AbortController();
  let stopped = false;

  async function once() {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${session.key}`, Accept: "text/event-stream" },
      signal: controller.signal,
    });
    if (!response.ok) throw new ApiError(response.status, (await parse(response))?.detail);
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const at = line.indexOf(":");
          const field = at < 0 ? line : line.slice(0, at);
          const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
        }
        if (data.length) {
          let parsed = data.join("\n");
          try { parsed = JSON.parse(parsed); } catch { /* a plain-text event */ }
          onEvent(event, parsed);
        }
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
        if (!stopped) onState("ended");
        return;
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) { onState("refused", err); return; }
        onState("reconnecting", err);
        await new Promise((r) => setTimeout(r, retryMs));
      }
    }
  })();
  return { stop() { stopped = true; controller.abort(); } };
}
