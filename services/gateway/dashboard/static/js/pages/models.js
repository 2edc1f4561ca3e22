// Models: the registry with the job each came from; serve and stop serving; a chat playground against a served
// model through the gateway's OpenAI-compatible /v1; copyable curl and openai snippets; download.
import { useEffect, useRef, useState } from "../../vendor/preact-htm.module.js";
import { api, download } from "../api.js";
import { CopyButton, ErrorBox, html, num, short, useLoad, when } from "../ui.js";

function snippets(serving) {
  const base = serving.base_url;
  const curl = `curl ${base}/chat/completions \\
  -H "Authorization: Bearer $TUNEFLEET_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"model": "${serving.name}", "messages": [{"role": "user", "content": "Hello"}]}'`;
  const python = `from openai import OpenAI

client = OpenAI(base_url="${base}", api_key=os.environ["TUNEFLEET_API_KEY"])
answer = client.chat.completions.create(
    model="${serving.name}", messages=[{"role": "user", "content": "Hello"}])
print(answer.choices[0].message.content)`;
  return { curl, python: `import os\n${python}` };
}

function Chat({ serving }) {
  const [messages, setMessages] = useState([]);
  const [text, setText] = useState("");
  const [maxTokens, setMaxTokens] = useState(64);
  const [temperature, setTemperature] = useState(0.7);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const end = useRef();
  useEffect(() => end.current?.scrollIntoView({ block: "nearest" }), [messages.length]);
  const send = async (e) => {
    e.preventDefault();
    if (!text.trim()) return;
    const next = [...messages, { role: "user", content: text }];
    setMessages(next); setText(""); setBusy(true); setError(null);
    try {
      const answer = await api("/v1/chat/completions", { method: "POST", body: {
        model: serving.name, messages: next, max_tokens: maxTokens, temperature } });
      setMessages([...next, answer.choices[0].message]);
    } catch (err) { setError(err); } finally { setBusy(false); }
  };
  return html`<section class="card chat" aria-label=${`Chat with ${serving.name}`}>
    <h3>Playground: ${serving.name}</h3>
    <ol class="messages" aria-live="polite" data-testid="chat">
      ${messages.map((m) => html`<li class=${`message ${m.role}`}><b>${m.role}</b><pre>${m.content}</pre></li>`)}
      <li ref=${end} class="end" aria-hidden="true"></li>
    </ol>
    <form onSubmit=${send} class="chat-form">
      <label for="chat-input">Message</label>
      <textarea id="chat-input" rows="2" value=${text} onInput=${(e) => setText(e.target.value)}
        onKeyDown=${(e) => { if (e.key === "Enter" && !e.shiftKey) send(e); }}></textarea>
      <div class="row">
        <label for="chat-max">Max tokens</label>
        <input id="chat-max" type="number" min="1" max="4096" value=${maxTokens} onInput=${(e) => setMaxTokens(Number(e.target.value))} />
        <label for="chat-temp">Temperature</label>
        <input id="chat-temp" type="number" min="0" max="2" step="0.1" value=${temperature} onInput=${(e) => setTemperature(Number(e.target.value))} />
        <button type="submit" disabled=${busy}>${busy ? "Thinking…" : "Send"}</button>
        <button type="button" class="secondary" onClick=${() => setMessages([])}>Clear</button>
      </div>
    </form>
    <${ErrorBox} error=${error} title="No answer" />
  </section>`;
}

function Serving({ serving, onChanged }) {
  const [error, setError] = useState(null);
  const code = snippets(serving);
  const stop = async () => {
    try { await api(`/api/servings/${serving.id}`, { method: "DELETE" }); onChanged(); } catch (err) { setError(err); }
  };
  return html`<div class="serving" data-serving=${serving.name}>
    <div class="row"><span class=${`badge serving-${serving.state}`}>${serving.state}</span>
      <b>${serving.name}</b> on ${serving.server_type} ${serving.reason ? `: ${serving.reason}` : ""}
      ${["starting", "ready"].includes(serving.state) && html`<button type="button" class="danger" onClick=${stop}>Stop serving</button>`}</div>
    ${serving.findings?.length > 0 && html`<ul class="findings">${serving.findings.map((f) => html`<li>${f.level || ""} ${f.message || JSON.stringify(f)}</li>`)}</ul>`}
    <${ErrorBox} error=${error} />
    ${serving.state === "ready" && html`
      <details><summary>Call it from code</summary>
        <h4>curl</h4><pre class="code">${code.curl}</pre><${CopyButton} text=${code.curl} label="Copy curl" />
        <h4>Python (openai)</h4><pre class="code">${code.python}</pre><${CopyButton} text=${code.python} label="Copy Python" />
      </details>
      <${Chat} serving=${serving} />`}
  </div>`;
}

function ModelDetail({ model, servings, onChanged }) {
  const [serverType, setServerType] = useState("builtin");
  const [name, setName] = useState("");
  const [error, setError] = useState(null);
  const mine = servings.filter((s) => s.model_id === model.id);
  const serve = async (e) => {
    e.preventDefault(); setError(null);
    try {
      await api("/api/training/deploy", { method: "POST", body: { model_id: model.id, server_type: serverType, ...(name ? { name } : {}) } });
      onChanged();
    } catch (err) { setError(err); }
  };
  return html`<section class="card" aria-label=${`Model ${model.name}`}>
    <header class="row"><h2>${model.name} <small>v${model.version}</small></h2>
      <button type="button" class="secondary" onClick=${() => download(`/api/models/${model.id}/download`, `${model.name}.tar.gz`).catch(setError)}>Download the adapter</button></header>
    <dl class="facts">
      <dt>Base model</dt><dd>${model.base_model}</dd>
      <dt>Method</dt><dd>${model.method}${model.lora_r ? ` · LoRA r ${model.lora_r}, alpha ${model.lora_alpha}` : ""}</dd>
      <dt>From job</dt><dd>${model.job_id ? html`<a href=${`#/jobs/${model.job_id}`}>${short(model.job_id)}</a>` : "–"}</dd>
      <dt>Final loss</dt><dd>${num(model.final_loss)}${model.final_eval_loss != null ? ` (eval ${num(model.final_eval_loss)})` : ""}</dd>
      <dt>Cost</dt><dd>${model.cost_usd != null ? `$${Number(model.cost_usd).toFixed(4)}` : "–"}</dd>
      <dt>Registered</dt><dd>${when(model.created_at)}</dd>
    </dl>
    <form class="row" onSubmit=${serve}>
      <label for="serve-engine">Serve with</label>
      <select id="serve-engine" value=${serverType} onChange=${(e) => setServerType(e.target.value)}>
        <option value="builtin">the built-in server</option><option value="vllm">vLLM</option><option value="ollama">Ollama</option>
      </select>
      <label for="serve-name">Name</label>
      <input id="serve-name" placeholder=${model.name} value=${name} onInput=${(e) => setName(e.target.value)} />
      <button type="submit">Serve</button>
    </form>
    <${ErrorBox} error=${error} title="Not served" />
    ${mine.map((s) => html`<${Serving} key=${s.id} serving=${s} onChanged=${onChanged} />`)}
  </section>`;
}

export function ModelsPage({ id }) {
  const models = useLoad(() => api("/api/models"));
  const servings = useLoad(() => api("/api/servings"));
  const [selected, setSelected] = useState(id || null);
  useEffect(() => setSelected(id || null), [id]);
  // a serving that is starting: look again until it is ready or failed
  useEffect(() => {
    if (!(servings.data || []).some((s) => s.state === "starting")) return undefined;
    const t = setTimeout(servings.reload, 1500);
    return () => clearTimeout(t);
  }, [servings.data]);
  const list = models.data || [];
  const model = list.find((m) => m.id === selected);
  return html`<h1>Models</h1>
    <${ErrorBox} error=${models.error || servings.error} />
    <section class="card"><h2>Registry</h2>
      ${list.length === 0 ? html`<p>No models yet: a completed job registers one.</p>` : html`<table class="list">
        <thead><tr><th scope="col">Name</th><th scope="col">Version</th><th scope="col">Base model</th>
          <th scope="col">Method</th><th scope="col">Job</th><th scope="col">Serving</th><th scope="col">Registered</th></tr></thead>
        <tbody>${list.map((m) => html`<tr aria-selected=${m.id === selected}>
          <td><a href=${`#/models/${m.id}`}>${m.name}</a></td><td>${m.version}</td><td>${m.base_model}</td>
          <td>${m.method}</td><td>${m.job_id ? html`<a href=${`#/jobs/${m.job_id}`}>${short(m.job_id)}</a>` : "–"}</td>
          <td>${(servings.data || []).filter((s) => s.model_id === m.id && s.state !== "stopped").map((s) => `${s.name} (${s.state})`).join(", ") || "–"}</td>
          <td>${when(m.created_at)}</td></tr>`)}</tbody></table>`}
    </section>
    ${model && html`<${ModelDetail} key=${model.id} model=${model} servings=${servings.data || []} onChanged=${servings.reload} />`}`;
}
