// The deploy dialog: provider (or automatic placement), GPU from the catalogue, budget controls, the preflight
// before paying, and the credentials a provider still needs.
import { useState } from "../../vendor/preact-htm.module.js";
import { api } from "../api.js";
import { Dialog, ErrorBox, html, money, navigate, useLoad } from "../ui.js";

// Per provider: its deploy route, the request field its GPU goes in, the credentials it needs, extra fields.
export const PROVIDERS = {
  auto: { label: "Automatic placement (cheapest offer that fits)", route: "auto", gpuField: null, credentials: [] },
  local: { label: "This machine", route: "local", gpuField: null, credentials: [] },
  runpod: { label: "RunPod", route: "runpod", gpuField: "gpu_type", credentials: ["runpod"], catalogue: "runpod" },
  lambda: { label: "Lambda", route: "lambda", gpuField: "instance_type", credentials: ["lambda"], catalogue: "lambda" },
  kaggle: { label: "Kaggle notebooks", route: "kaggle", gpuField: "machine_shape", credentials: ["kaggle"],
    catalogue: "kaggle", extra: { name: "notebook_title", label: "Notebook title" } },
  "hf-spaces": { label: "Hugging Face Spaces", route: "hf-spaces", gpuField: "gpu_tier", credentials: ["huggingface"],
    catalogue: "hfspaces", extra: { name: "space_name", label: "Space name" } },
};

const offersFor = (catalogue, provider) =>
  (catalogue?.offers || []).filter((o) => o.provider.replace(/[-_]/g, "") === (PROVIDERS[provider].catalogue || "").replace(/[-_]/g, ""));

function number(value) { return value === "" ? null : Number(value); }

export function DeployDialog({ configId, config, datasetId, onClose }) {
  const catalogue = useLoad(() => api("/api/gpus"));
  const secrets = useLoad(() => api("/api/secrets"));
  const [provider, setProvider] = useState("local");
  const [gpu, setGpu] = useState("");
  const [extra, setExtra] = useState("");
  const [budget, setBudget] = useState({ budget_limit: "", alert_threshold: "80", max_duration_hours: "", notify_email: "" });
  const [preflight, setPreflight] = useState(null);
  const [checking, setChecking] = useState(false);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const spec = PROVIDERS[provider];
  const offers = offersFor(catalogue.data, provider);
  const stored = new Set((secrets.data || []).map((s) => s.provider));
  const missing = spec.credentials.filter((c) => !stored.has(c));

  const body = () => {
    const out = { ...(configId ? { configuration_id: configId } : { config }) };
    if (datasetId) out.dataset_id = datasetId;
    for (const [k, v] of Object.entries(budget)) {
      if (v === "" || (k === "alert_threshold" && budget.budget_limit === "")) continue; // an alert needs a budget
      out[k] = k === "notify_email" ? v : number(v);
    }
    if (spec.gpuField && gpu) out[spec.gpuField] = gpu;
    if (spec.extra && extra) out[spec.extra.name] = extra;
    return out;
  };

  const runPreflight = async () => {
    setChecking(true); setPreflight(null); setError(null);
    const { configuration_id, config: inline, dataset_id } = body();
    try {
      setPreflight(await api("/api/training/preflight", { method: "POST", body: { configuration_id, config: inline, dataset_id } }));
    } catch (err) { setError(err); } finally { setChecking(false); }
  };

  const deploy = async (e) => {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      const answer = await api(`/api/training/deploy/${spec.route}`, { method: "POST", body: body() });
      onClose();
      navigate(`/jobs/${answer.job_id}`);
    } catch (err) { setError(err); } finally { setBusy(false); }
  };

  const setB = (k) => (e) => setBudget({ ...budget, [k]: e.target.value });
  return html`<${Dialog} title="Deploy" onClose=${onClose}>
    <form onSubmit=${deploy} class="deploy">
      <label for="deploy-provider">Provider</label>
      <select id="deploy-provider" value=${provider} onChange=${(e) => { setProvider(e.target.value); setGpu(""); setPreflight(null); }}>
        ${Object.entries(PROVIDERS).map(([key, p]) => html`<option value=${key}>${p.label}</option>`)}
      </select>
      ${missing.length > 0 && html`<p class="warning" role="status">${`${spec.label} needs your ${missing.join(" and ")} credentials: `}
        <a href="#/settings" onClick=${onClose}>add them in Settings</a>.</p>`}
      ${spec.gpuField && html`<label for="deploy-gpu">GPU</label>
        <select id="deploy-gpu" required value=${gpu} onChange=${(e) => setGpu(e.target.value)}>
          <option value="">Choose…</option>
          ${offers.map((o) => html`<option value=${o.gpu_type} disabled=${o.capacity === false}>
            ${o.description} · ${o.vram_gb ?? "?"} GB · ${money(o.usd_per_hour)}/h${o.per_gpu ? " per GPU" : ""}${o.capacity === false ? " · no capacity" : ""}</option>`)}
        </select>
        ${catalogue.error && html`<${ErrorBox} error=${catalogue.error} title="No catalogue" />`}`}
      ${spec.extra && html`<label for="deploy-extra">${spec.extra.label}</label>
        <input id="deploy-extra" required value=${extra} onInput=${(e) => setExtra(e.target.value)} />`}
      <fieldset><legend>Budget and limits</legend>
        <label for="deploy-budget">Budget (USD)</label>
        <input id="deploy-budget" type="number" min="0" step="any" value=${budget.budget_limit} onInput=${setB("budget_limit")} />
        <label for="deploy-alert">Alert at (% of the budget)</label>
        <input id="deploy-alert" type="number" min="1" max="99" value=${budget.alert_threshold} onInput=${setB("alert_threshold")}
          disabled=${budget.budget_limit === ""} aria-describedby="deploy-alert-help" />
        <small id="deploy-alert-help" class="hint">With a budget only: an email and event once this share is spent.</small>
        <label for="deploy-hours">Maximum duration (hours)</label>
        <input id="deploy-hours" type="number" min="0" step="any" value=${budget.max_duration_hours} onInput=${setB("max_duration_hours")} />
        <label for="deploy-email">Notification email</label>
        <input id="deploy-email" type="email" value=${budget.notify_email} onInput=${setB("notify_email")} />
      </fieldset>
      <div class="preflight">
        <button type="button" class="secondary" onClick=${runPreflight} disabled=${checking}>
          ${checking ? "Running the preflight…" : "Run the preflight (a few CPU steps, free)"}</button>
        ${preflight && html`<p class=${preflight.ok ? "ok" : "error"} role="status" data-testid="preflight">
          ${preflight.ok ? `Preflight passed: ${preflight.steps} steps, loss ${preflight.final_loss?.toFixed(3)}.`
            : `Preflight failed: ${preflight.error_type}${preflight.error_field ? ` (${preflight.error_field})` : ""}: ${preflight.error_message}`}</p>`}
      </div>
      <${ErrorBox} error=${error} title="Not deployed" />
      <div class="actions">
        <button type="submit" disabled=${busy || missing.length > 0}>${busy ? "Deploying…" : "Deploy"}</button>
        <button type="button" class="secondary" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}
