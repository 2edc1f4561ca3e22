// Configurations: the list, and the editor drawn from the API's JSON Schema of a TrainingConfig, grouped as the
// specification groups it; each change is checked by the estimate route, whose errors land on their fields.
import { useEffect, useMemo, useRef, useState } from "../../vendor/preact-htm.module.js";
import { api, ApiError } from "../api.js";
import { duration, ErrorBox, html, money, navigate, num, short, useLoad, when } from "../ui.js";
import { DeployDialog } from "./deploy.js";

// Fields by group: dotted paths, or a prefix ending in "." for a whole section; every schema field not named here
// is under "Advanced".
const GROUPS = [
  ["Model", ["name", "model.base_model", "model.revision", "model.max_seq_length", "model.torch_dtype",
    "model.device_map", "model.trust_remote_code"]],
  ["Data", ["data.dataset_id", "data.train_path", "data.format", "data.eval_split", "data.max_samples",
    "data.shuffle_seed"]],
  ["Method", ["training.method", "training.beta", "training.rlhf."]],
  ["Hyper-parameters", ["training.epochs", "training.max_steps", "training.batch_size",
    "training.gradient_accumulation_steps", "training.learning_rate", "training.lr_scheduler",
    "training.warmup_ratio", "training.warmup_steps", "training.weight_decay", "training.optimizer",
    "training.max_grad_norm"]],
  ["LoRA", ["training.lora."]],
  ["Quantization", ["training.quantization."]],
  ["Predictions", ["predictions."]],
  ["Serving when done", ["serve."]],
];
const inGroup = (path, entries) => entries.some((e) => (e.endsWith(".") ? path.startsWith(e) : path === e));

// Fields that only apply to some configurations are shown only for those.
const SHOWN_WHEN = [
  ["training.rlhf.", (c) => c.training?.method === "rlhf"],
  ["training.beta", (c) => ["dpo", "orpo"].includes(c.training?.method)],
  ["serve.", (c) => c.serve != null],
];
const shown = (path, config) => SHOWN_WHEN.every(([prefix, test]) => !path.startsWith(prefix) || test(config));

const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
function setPath(obj, path, value) {
  const keys = path.split(".");
  const out = structuredClone(obj);
  let at = out;
  for (const k of keys.slice(0, -1)) { if (at[k] == null || typeof at[k] !== "object") at[k] = {}; at = at[k]; }
  at[keys[keys.length - 1]] = value;
  return out;
}

/** Every leaf field of the schema as {path, schema, nullable}, following $refs into the sections. */
function leaves(schema) {
  const defs = schema.$defs || {};
  const deref = (s) => (s?.$ref ? defs[s.$ref.split("/").pop()] : s);
  const out = [];
  const walk = (s, prefix) => {
    for (const [key, raw] of Object.entries(s.properties || {})) {
      const path = prefix ? `${prefix}.${key}` : key;
      const options = (raw.anyOf || [raw]).map(deref);
      const nullable = options.some((o) => o?.type === "null");
      const concrete = options.filter((o) => o?.type !== "null");
      if (concrete.length === 1 && concrete[0].properties && !concrete[0].additionalProperties) {
        walk(concrete[0], path);
      } else {
        out.push({ path, schema: { ...raw, options: concrete }, nullable });
      }
    }
  };
  walk(schema, "");
  return out;
}

function choices(field) {
  const out = [];
  for (const o of field.schema.options) {
    if (o.enum) out.push(...o.enum);
    else if ("const" in o) out.push(o.const);
    else return null; // free input is allowed too
  }
  return out;
}

const fieldId = (path) => `cfg-${path.replace(/\./g, "-")}`;
const labelOf = (field) => field.schema.title || field.path.split(".").pop().replace(/_/g, " ");

function Field({ field, value, onChange, problems }) {
  const id = fieldId(field.path);
  const described = [problems?.length ? `${id}-error` : null, field.schema.description ? `${id}-help` : null]
    .filter(Boolean).join(" ") || undefined;
  const types = field.schema.options.map((o) => o.type);
  const options = choices(field);
  let input;
  if (types.length === 1 && types[0] === "boolean") {
    input = html`<input id=${id} type="checkbox" checked=${Boolean(value)} aria-describedby=${described}
      onChange=${(e) => onChange(e.target.checked)} />`;
  } else if (options) {
    input = html`<select id=${id} aria-describedby=${described} aria-invalid=${problems?.length ? "true" : undefined}
        onChange=${(e) => onChange(e.target.value === "" ? null : options.find((o) => String(o) === e.target.value))}>
      ${field.nullable && html`<option value="" selected=${value == null}>(not set)</option>`}
      ${options.map((o) => html`<option value=${String(o)} selected=${value === o}>${String(o)}</option>`)}
    </select>`;
  } else if (types.every((t) => t === "integer" || t === "number")) {
    const bounds = field.schema.options[0];
    input = html`<input id=${id} type="number" inputmode="decimal" step="any" value=${value ?? ""}
      min=${bounds.minimum} max=${bounds.maximum} aria-describedby=${described}
      aria-invalid=${problems?.length ? "true" : undefined}
      onInput=${(e) => onChange(e.target.value === "" ? null : Number(e.target.value))} />`;
  } else if (types.includes("array") || types.includes("object")) {
    // lists and mappings (target modules, serving options) as JSON, or a plain word where a string is allowed
    const text = value == null ? "" : typeof value === "string" ? value : JSON.stringify(value);
    input = html`<input id=${id} type="text" value=${text} aria-describedby=${described} spellcheck="false"
      aria-invalid=${problems?.length ? "true" : undefined}
      onChange=${(e) => {
        const v = e.target.value.trim();
        if (!v) return onChange(null);
        try { onChange(JSON.parse(v)); } catch { onChange(v); }
      }} />`;
  } else {
    input = html`<input id=${id} type="text" value=${value ?? ""} aria-describedby=${described} spellcheck="false"
      aria-invalid=${problems?.length ? "true" : undefined}
      onInput=${(e) => onChange(e.target.value === "" && field.nullable ? null : e.target.value)} />`;
  }
  return html`<div class=${`field${problems?.length ? " invalid" : ""}`} data-field=${field.path}>
    <label for=${id}>${labelOf(field)} <code class="path">${field.path}</code></label>
    ${input}
    ${field.schema.description && html`<small id=${`${id}-help`} class="hint">${field.schema.description}</small>`}
    ${problems?.length > 0 && html`<small id=${`${id}-error`} class="problem" role="alert">${problems.join("; ")}</small>`}
  </div>`;
}

function gib(value) {
  if (value === undefined || value === null) return "–";
  return value >= 1 ? `${num(value, 2)} GiB` : `${num(value * 1024, 1)} MiB`;
}

function Estimate({ estimate }) {
  if (!estimate) return html`<p class="hint">The estimate appears once the configuration is valid.</p>`;
  const memory = estimate.memory || {};
  return html`<div class="estimate" aria-live="polite">
    <h3>Estimate</h3>
    <dl class="facts">
      <dt>Peak GPU memory</dt><dd>${gib(memory.peak_gib)}</dd>
      ${memory.needed_gib !== undefined && html`<dt>GPU must have free</dt><dd>${gib(memory.needed_gib)}</dd>`}
      ${estimate.data?.training_tokens !== undefined && html`<dt>Training tokens</dt><dd>${estimate.data.training_tokens}</dd>`}
      <dt>Compute</dt><dd>${num(estimate.flops / 1e15, 3)} PFLOP</dd>
    </dl>
    <table class="list"><caption>Per GPU offer, cheapest that fits first</caption>
      <thead><tr><th scope="col">Offer</th><th scope="col">Fits</th><th scope="col">Time</th><th scope="col">Cost</th></tr></thead>
      <tbody>${estimate.candidates.slice(0, 12).map((c) => html`<tr>
        <td>${c.provider}: ${c.description || c.gpu_type}<br /><small>${num(c.vram_gib, 1)} GiB · ${money(c.usd_per_hour)}/h</small></td>
        <td>${c.fits ? "yes" : html`<span class="problem">no</span><br /><small>${c.reason}</small>`}</td>
        <td>${duration(c.hours * 3600)}</td><td>${money(c.cost_usd, c.cost_usd < 0.01 ? 4 : 2)}</td></tr>`)}</tbody>
    </table>
  </div>`;
}

function Editor({ initial, configId, onSaved }) {
  const { data: schema, error: schemaError } = useLoad(() => api("/api/training/configurations/schema"));
  const { data: datasets } = useLoad(() => api("/api/training/datasets?limit=200"));
  const [config, setConfig] = useState(initial);
  const [problems, setProblems] = useState({});
  const [estimate, setEstimate] = useState(null);
  const [checkError, setCheckError] = useState(null);
  const [saveError, setSaveError] = useState(null);
  const [saved, setSaved] = useState(null);
  const [deploying, setDeploying] = useState(false);
  const timer = useRef();
  useEffect(() => setConfig(initial), [initial]);

  // Check as the user types: the estimate route validates the configuration and the data set it names.
  useEffect(() => {
    clearTimeout(timer.current);
    const controller = new AbortController();
    timer.current = setTimeout(async () => {
      try {
        setEstimate(await api("/api/training/estimate", { method: "POST", body: { config }, signal: controller.signal }));
        setProblems({}); setCheckError(null);
      } catch (err) {
        if (err.name === "AbortError") return;
        setEstimate(null);
        const byField = {};
        if (err instanceof ApiError) {
          for (const [field, list] of Object.entries(err.byField())) byField[field.replace(/^config\./, "")] = list;
        }
        setProblems(byField);
        setCheckError(Object.keys(byField).length ? null : err);
      }
    }, 350);
    return () => { clearTimeout(timer.current); controller.abort(); };
  }, [config]);

  const fields = useMemo(() => (schema ? leaves(schema) : []), [schema]);
  if (schemaError) return html`<${ErrorBox} error=${schemaError} />`;
  if (!schema) return html`<p aria-busy="true">Loading the editor…</p>`;
  const groups = [
    ...GROUPS.map(([title, entries]) => [title, entries.flatMap((e) => fields.filter((f) => inGroup(f.path, [e])))]),
    ["Advanced", fields.filter((f) => !GROUPS.some(([, entries]) => inGroup(f.path, entries)))],
  ].map(([title, list]) => [title, list.filter((f) => shown(f.path, config))]);
  const unplaced = Object.keys(problems).filter((p) => !fields.some((f) => f.path === p));

  const save = async (asNew) => {
    setSaveError(null);
    try {
      const answer = configId && !asNew
        ? await api(`/api/training/configurations/${configId}`, { method: "PUT", body: config })
        : await api("/api/training/configurations", { method: "POST", body: config });
      setSaved(answer);
      onSaved(answer);
    } catch (err) { setSaveError(err); }
  };

  return html`<div class="editor-layout">
    <form class="editor" onSubmit=${(e) => { e.preventDefault(); save(false); }} aria-label="Training configuration">
      ${groups.map(([title, list]) => (list.length > 0 || title === "Serving when done") && html`<fieldset>
        <legend>${title}</legend>
        ${title === "Serving when done" && html`<label class="toggle"><input type="checkbox" checked=${config.serve != null}
          onChange=${(e) => setConfig({ ...config, serve: e.target.checked ? { server_type: "builtin" } : null })} />
          Serve the model when the job completes</label>`}
        ${title === "Data" && datasets?.datasets?.length > 0 && html`<p class="hint">Your data sets:
          ${datasets.datasets.map((d) => html` <button type="button" class="chip"
            onClick=${() => setConfig(setPath(config, "data.dataset_id", d.id))}>${d.filename} (${short(d.id)})</button>`)}</p>`}
        ${list.map((f) => html`<${Field} key=${f.path} field=${f} value=${getPath(config, f.path)} problems=${problems[f.path]}
          onChange=${(v) => setConfig(setPath(config, f.path, v))} />`)}
      </fieldset>`)}
      ${unplaced.length > 0 && html`<div class="error" role="alert">${unplaced.map((p) => html`<p><b>${p}</b>: ${problems[p].join("; ")}</p>`)}</div>`}
      <${ErrorBox} error=${checkError} title="The configuration cannot be checked" />
      <${ErrorBox} error=${saveError} title="Not saved" />
      ${saved && html`<p class="ok" role="status">Saved as <code>${saved.id}</code>.</p>`}
      <div class="actions">
        <button type="submit">${configId ? "Save" : "Save configuration"}</button>
        ${configId && html`<button type="button" class="secondary" onClick=${() => save(true)}>Save as a copy</button>`}
        ${configId && html`<button type="button" onClick=${() => setDeploying(true)}>Deploy…</button>`}
      </div>
    </form>
    <aside class="card"><${Estimate} estimate=${estimate} /></aside>
    ${deploying && html`<${DeployDialog} configId=${configId} config=${config} onClose=${() => setDeploying(false)} />`}
  </div>`;
}

export function ConfigsPage({ id }) {
  const list = useLoad(() => api("/api/training/configurations?limit=200"));
  const presets = useLoad(() => api("/api/training/configurations/presets"));
  const current = useLoad(() => (id && id !== "new" ? api(`/api/training/configurations/${id}`) : Promise.resolve(null)), [id]);
  const [draft, setDraft] = useState(null);
  const configs = list.data?.configurations || [];

  const duplicate = async (c) => {
    const copy = await api("/api/training/configurations", { method: "POST", body: { ...c.config, name: `${c.config.name} (copy)` } });
    list.reload();
    navigate(`/configs/${copy.id}`);
  };
  const initial = id === "new" ? draft : current.data?.config;
  return html`<h1>Configurations</h1>
    <section class="card">
      <h2>Start from a preset</h2>
      <p class="hint">The specification's two default configurations.</p>
      ${presets.data && Object.entries(presets.data).map(([name, config]) => html`<button type="button" class="secondary"
        onClick=${() => { setDraft(config); navigate("/configs/new"); }}>${name === "small" ? "Small model (LoRA)" : name === "large" ? "Large model (QLoRA)" : name}: ${config.name}</button> `)}
      <${ErrorBox} error=${presets.error} />
    </section>
    <section class="card"><h2>Saved</h2>
      <${ErrorBox} error=${list.error} />
      ${configs.length === 0 ? html`<p>None yet.</p>` : html`<table class="list">
        <thead><tr><th scope="col">Name</th><th scope="col">Base model</th><th scope="col">Method</th>
          <th scope="col">Updated</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
        <tbody>${configs.map((c) => html`<tr aria-current=${c.id === id ? "true" : undefined}>
          <td><a href=${`#/configs/${c.id}`}>${c.config.name}</a></td><td>${c.config.model.base_model}</td>
          <td>${c.config.training.method}</td><td>${when(c.updated_at)}</td>
          <td><button type="button" class="secondary" onClick=${() => duplicate(c)}>Duplicate</button></td></tr>`)}
        </tbody></table>`}
    </section>
    ${initial && html`<section class="card"><h2>${id === "new" ? "New configuration" : `Edit ${initial.name}`}</h2>
      <${Editor} key=${id} initial=${initial} configId=${id === "new" ? null : id}
        onSaved=${(saved) => { list.reload(); if (id === "new") navigate(`/configs/${saved.id}`); }} /></section>`}
    <${ErrorBox} error=${current.error} />`;
}
