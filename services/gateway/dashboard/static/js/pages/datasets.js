// Data sets: drag-and-drop upload with progress, the check's bad lines, statistics, a preview, delete.
import { useState } from "../../vendor/preact-htm.module.js";
import { api, upload } from "../api.js";
import { ErrorBox, html, short, useLoad, when } from "../ui.js";

/** A bar chart of the token-length histogram: bucket edges (n+1) and counts (n). */
export function Histogram({ histogram, label }) {
  const edges = histogram?.edges, counts = histogram?.counts;
  if (!Array.isArray(edges) || !Array.isArray(counts) || !counts.length) return null;
  const max = Math.max(...counts, 1);
  const w = 480, h = 120, bar = w / counts.length;
  return html`<figure class="histogram">
    <svg viewBox=${`0 0 ${w} ${h + 18}`} role="img" aria-label=${label}>
      ${counts.map((c, i) => html`<rect x=${i * bar + 1} y=${h - (c / max) * h} width=${Math.max(bar - 2, 1)}
        height=${(c / max) * h} class="bar"><title>${edges[i]}–${edges[i + 1]} tokens: ${c} rows</title></rect>`)}
      <text x="0" y=${h + 14} class="axis">${edges[0]}</text>
      <text x=${w} y=${h + 14} class="axis" text-anchor="end">${edges[edges.length - 1]} tokens</text>
    </svg>
    <figcaption>${label}</figcaption>
  </figure>`;
}

function Preview({ dataset }) {
  const { data, error } = useLoad(() => api(`/api/training/datasets/${dataset.id}/preview?limit=5`), [dataset.id]);
  if (error) return html`<${ErrorBox} error=${error} title="No preview" />`;
  if (!data) return html`<p aria-busy="true">Loading the first rows…</p>`;
  return html`<div class="preview"><h4>First rows</h4>
    <ol>${data.rows.map((row) => html`<li><pre>${JSON.stringify(row, null, 1)}</pre></li>`)}</ol></div>`;
}

function DatasetDetail({ dataset, onDeleted }) {
  const [error, setError] = useState(null);
  const stats = dataset.stats || {};
  const remove = async () => {
    if (!window.confirm(`Delete ${dataset.filename}? Jobs that already started keep their copy.`)) return;
    try { await api(`/api/training/datasets/${dataset.id}`, { method: "DELETE" }); onDeleted(); } catch (err) { setError(err); }
  };
  return html`<section class="card" aria-label=${`Data set ${dataset.filename}`}>
    <header class="row"><h3>${dataset.filename}</h3>
      <button type="button" class="danger" onClick=${remove}>Delete</button></header>
    <dl class="facts">
      <dt>Id</dt><dd><code>${dataset.id}</code></dd>
      <dt>Format</dt><dd>${dataset.format}</dd>
      <dt>Rows</dt><dd>${dataset.rows}</dd>
      ${stats.chars_mean !== undefined && html`<dt>Characters per row</dt>
        <dd>${stats.chars_min}–${stats.chars_max}, mean ${stats.chars_mean}</dd>`}
      ${stats.tokens_mean !== undefined && html`<dt>Tokens per row</dt><dd>mean ${stats.tokens_mean}</dd>`}
      <dt>Uploaded</dt><dd>${when(dataset.created_at)}</dd>
    </dl>
    <${Histogram} histogram=${stats.token_lengths} label="Rows by token length" />
    <${ErrorBox} error=${error} />
    <${Preview} dataset=${dataset} />
  </section>`;
}

function Uploader({ onUploaded }) {
  const [over, setOver] = useState(false);
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const send = async (file) => {
    if (!file) return;
    setError(null);
    setProgress(0);
    try {
      const dataset = await upload("/api/training/datasets", file, setProgress);
      onUploaded(dataset);
    } catch (err) {
      setError(err);
    } finally {
      setProgress(null);
    }
  };
  const drop = (e) => { e.preventDefault(); setOver(false); send(e.dataTransfer.files[0]); };
  return html`<section class="card">
    <h2>Upload a data set</h2>
    <div class=${`dropzone${over ? " over" : ""}`} onDragOver=${(e) => { e.preventDefault(); setOver(true); }}
         onDragLeave=${() => setOver(false)} onDrop=${drop}>
      <p>Drop a JSONL file here, or</p>
      <label class="button" for="dataset-file">Choose a file</label>
      <input id="dataset-file" type="file" accept=".jsonl,.json,application/jsonl" class="visually-hidden"
             onChange=${(e) => { send(e.target.files[0]); e.target.value = ""; }} />
      <p class="hint">One JSON object per line: <code>text</code>, chat <code>messages</code>, <code>instruction</code>/<code>output</code>,${" "}
        or <code>prompt</code>/<code>chosen</code>/<code>rejected</code>.</p>
    </div>
    ${progress !== null && html`<label>Uploading <progress value=${progress} max="1">${Math.round(progress * 100)}%</progress></label>`}
    ${error && html`<div class="error" role="alert" data-testid="upload-errors">
      <strong>The file was not accepted:</strong> ${error.message}
      ${error.errors.length > 0 && html`<table><thead><tr><th scope="col">Line</th><th scope="col">Problem</th></tr></thead>
        <tbody>${error.errors.map((e) => html`<tr><td>${e.line}</td><td>${e.problem}</td></tr>`)}</tbody></table>
        <p>Fix these lines and upload the file again; nothing was stored.</p>`}
    </div>`}
  </section>`;
}

export function DatasetsPage() {
  const { data, error, reload } = useLoad(() => api("/api/training/datasets?limit=200"));
  const [selected, setSelected] = useState(null);
  const datasets = data?.datasets || [];
  const current = datasets.find((d) => d.id === selected) || null;
  return html`<h1>Data sets</h1>
    <${Uploader} onUploaded=${(d) => { setSelected(d.id); reload(); }} />
    <${ErrorBox} error=${error} />
    <section class="card"><h2>Your data sets</h2>
      ${datasets.length === 0 ? html`<p>None yet.</p>` : html`<table class="list">
        <thead><tr><th scope="col">Name</th><th scope="col">Format</th><th scope="col">Rows</th>
          <th scope="col">Id</th><th scope="col">Uploaded</th></tr></thead>
        <tbody>${datasets.map((d) => html`<tr aria-selected=${d.id === selected}>
          <td><button type="button" class="link" onClick=${() => setSelected(d.id)}>${d.filename}</button></td>
          <td>${d.format}</td><td>${d.rows}</td><td><code>${short(d.id)}</code></td><td>${when(d.created_at)}</td>
        </tr>`)}</tbody></table>`}
    </section>
    ${current && html`<${DatasetDetail} key=${current.id} dataset=${current}
      onDeleted=${() => { setSelected(null); reload(); }} />`}`;
}
