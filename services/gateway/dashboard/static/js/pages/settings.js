// Settings: provider credentials (write-only: stored values never come back), webhooks with their delivery log,
// the notification address, and API keys.
import { useState } from "../../vendor/preact-htm.module.js";
import { api } from "../api.js";
import { CopyButton, ErrorBox, html, short, useLoad, when } from "../ui.js";

// What each provider's credentials are made of (PUT /api/secrets/{provider}).
const CREDENTIALS = {
  runpod: [["api_key", "API key"]],
  lambda: [["api_key", "API key"]],
  kaggle: [["username", "User name", "text"], ["key", "API key"]],
  huggingface: [["token", "Access token"]],
  judge: [["api_key", "Judge endpoint API key"]],
};

function Credential({ provider, stored, onChanged }) {
  const fields = CREDENTIALS[provider];
  const [values, setValues] = useState({});
  const [error, setError] = useState(null);
  const [done, setDone] = useState(false);
  const save = async (e) => {
    e.preventDefault(); setError(null); setDone(false);
    try {
      await api(`/api/secrets/${provider}`, { method: "PUT", body: values });
      setValues({}); setDone(true); onChanged();
    } catch (err) { setError(err); }
  };
  const remove = async () => {
    try { await api(`/api/secrets/${provider}`, { method: "DELETE" }); onChanged(); } catch (err) { setError(err); }
  };
  return html`<form class="credential" onSubmit=${save} aria-label=${`${provider} credentials`}>
    <h3>${provider} ${stored ? html`<small class="ok">stored ${when(stored.updated_at)}</small>` : html`<small>not stored</small>`}</h3>
    ${fields.map(([name, label, type = "password"]) => html`<label for=${`cred-${provider}-${name}`}>${label}</label>
      <input id=${`cred-${provider}-${name}`} type=${type} autocomplete="off" value=${values[name] || ""}
        placeholder=${stored ? "(stored; type to replace)" : ""}
        onInput=${(e) => setValues({ ...values, [name]: e.target.value })} />`)}
    <div class="actions"><button type="submit">${stored ? "Replace" : "Store"}</button>
      ${stored && html`<button type="button" class="danger" onClick=${remove}>Delete</button>`}</div>
    ${done && html`<p class="ok" role="status">Stored. It cannot be read back, only replaced.</p>`}
    <${ErrorBox} error=${error} />
  </form>`;
}

function Deliveries({ webhook }) {
  const { data, error } = useLoad(() => api(`/api/webhooks/${webhook.id}/deliveries`), [webhook.id]);
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (!data) return html`<p aria-busy="true">Loading…</p>`;
  if (!data.length) return html`<p class="hint">No deliveries yet.</p>`;
  return html`<table class="list"><caption>Deliveries</caption>
    <thead><tr><th scope="col">Event</th><th scope="col">Status</th><th scope="col">Attempts</th><th scope="col">Last answer</th><th scope="col">When</th></tr></thead>
    <tbody>${data.map((d) => {
      const last = d.attempt_log?.[d.attempt_log.length - 1];
      return html`<tr><td>${d.type}</td><td>${d.status}</td><td>${d.attempts}</td>
        <td>${last ? `${last.http_status ?? ""} ${last.error ?? ""}` : "–"}</td><td>${when(d.created_at)}</td></tr>`;
    })}</tbody></table>`;
}

function Webhooks() {
  const hooks = useLoad(() => api("/api/webhooks"));
  const [url, setUrl] = useState("");
  const [events, setEvents] = useState("*");
  const [created, setCreated] = useState(null);
  const [open, setOpen] = useState(null);
  const [error, setError] = useState(null);
  const create = async (e) => {
    e.preventDefault(); setError(null);
    try {
      setCreated(await api("/api/webhooks", { method: "POST", body: { url, events: events.split(",").map((s) => s.trim()).filter(Boolean) } }));
      setUrl(""); hooks.reload();
    } catch (err) { setError(err); }
  };
  const act = async (path, method) => {
    setError(null);
    try { await api(path, { method }); hooks.reload(); } catch (err) { setError(err); }
  };
  return html`<section class="card"><h2>Webhooks</h2>
    <form class="row" onSubmit=${create}>
      <label for="hook-url">URL</label><input id="hook-url" type="url" required value=${url} onInput=${(e) => setUrl(e.target.value)} />
      <label for="hook-events">Events</label><input id="hook-events" value=${events} onInput=${(e) => setEvents(e.target.value)}
        aria-describedby="hook-events-help" />
      <button type="submit">Add</button>
    </form>
    <small id="hook-events-help" class="hint">Comma-separated event types, or * for all.</small>
    ${created && html`<p class="ok" role="status">Signing secret (shown once): <code>${created.secret}</code> <${CopyButton} text=${created.secret} /></p>`}
    <${ErrorBox} error=${error || hooks.error} />
    ${(hooks.data || []).map((h) => html`<div class="webhook">
      <div class="row"><code>${h.url}</code> <span>${h.events.join(", ")}</span>
        ${h.disabled_at && html`<span class="warning">disabled: ${h.disabled_reason}</span>`}
        <button type="button" class="secondary" onClick=${() => act(`/api/webhooks/${h.id}/test`, "POST")}>Send a test</button>
        <button type="button" class="secondary" onClick=${() => setOpen(open === h.id ? null : h.id)}>${open === h.id ? "Hide" : "Show"} deliveries</button>
        <button type="button" class="danger" onClick=${() => act(`/api/webhooks/${h.id}`, "DELETE")}>Delete</button></div>
      ${open === h.id && html`<${Deliveries} webhook=${h} />`}
    </div>`)}
  </section>`;
}

function Keys() {
  const keys = useLoad(() => api("/api/keys"));
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const create = async () => {
    setError(null);
    try { setCreated(await api("/api/keys", { method: "POST" })); keys.reload(); } catch (err) { setError(err); }
  };
  const revoke = async (key) => {
    if (!window.confirm(`Revoke the key ${key.prefix}…? Requests with it are refused from then on.`)) return;
    try { await api(`/api/keys/${key.id}`, { method: "DELETE" }); keys.reload(); } catch (err) { setError(err); }
  };
  return html`<section class="card"><h2>API keys</h2>
    <button type="button" onClick=${create}>Create a key</button>
    ${created && html`<p class="ok" role="status">New key (shown once): <code>${created.key}</code> <${CopyButton} text=${created.key} /></p>`}
    <${ErrorBox} error=${error || keys.error} />
    <table class="list"><thead><tr><th scope="col">Key</th><th scope="col">Created</th><th scope="col">Revoked</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${(keys.data || []).map((k) => html`<tr><td><code>${k.prefix}…</code> <small>${short(k.id)}</small></td>
        <td>${when(k.created_at)}</td><td>${k.revoked_at ? when(k.revoked_at) : "–"}</td>
        <td>${!k.revoked_at && html`<button type="button" class="danger" onClick=${() => revoke(k)}>Revoke</button>`}</td></tr>`)}</tbody></table>
  </section>`;
}

function Email() {
  const current = useLoad(() => api("/api/notifications/email"));
  const [address, setAddress] = useState("");
  const [error, setError] = useState(null);
  const save = async (e) => {
    e.preventDefault(); setError(null);
    try { await api("/api/notifications/email", { method: "PUT", body: { email: address } }); setAddress(""); current.reload(); } catch (err) { setError(err); }
  };
  return html`<section class="card"><h2>Notification email</h2>
    <p>${current.data?.email ? html`Job notices go to <b>${current.data.email}</b>.` : "No address: jobs notify only by webhook."}</p>
    <form class="row" onSubmit=${save}><label for="email-address">Address</label>
      <input id="email-address" type="email" required value=${address} onInput=${(e) => setAddress(e.target.value)} />
      <button type="submit">Save</button></form>
    <${ErrorBox} error=${error || current.error} />
  </section>`;
}

export function SettingsPage() {
  const secrets = useLoad(() => api("/api/secrets"));
  const stored = Object.fromEntries((secrets.data || []).map((s) => [s.provider, s]));
  return html`<h1>Settings</h1>
    <section class="card"><h2>Provider credentials</h2>
      <p class="hint">Sealed when stored, so that only the provider services can read them; they never come back out.</p>
      <${ErrorBox} error=${secrets.error} />
      <div class="credentials">${Object.keys(CREDENTIALS).map((p) => html`<${Credential} key=${p} provider=${p} stored=${stored[p]} onChanged=${secrets.reload} />`)}</div>
    </section>
    <${Webhooks} />
    <${Email} />
    <${Keys} />`;
}
