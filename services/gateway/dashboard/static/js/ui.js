// Small shared pieces: formatting, a loader hook, status badges, error boxes, the copy button.
import { html, useCallback, useEffect, useRef, useState } from "../vendor/preact-htm.module.js";

export { html };

export const money = (v, digits = 2) => (v === null || v === undefined ? "–" : `$${Number(v).toFixed(digits)}`);
export const num = (v, digits = 4) =>
  v === null || v === undefined || Number.isNaN(v) ? "–"
    : Math.abs(v) >= 1000 || (Math.abs(v) < 1e-3 && v !== 0) ? Number(v).toExponential(2) : Number(v.toFixed(digits)).toString();
export const short = (id) => (id ? String(id).slice(0, 8) : "–");

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/** The ETA of a running job from its progress and the time since it started, as a number of seconds. */
export function etaSeconds(job) {
  const progress = job.live_cost?.progress ?? job.progress;
  if (!job.started_at || !progress || progress <= 0 || progress >= 1 || isTerminal(job.status)) return null;
  const elapsed = (Date.now() - new Date(job.started_at).getTime()) / 1000;
  return (elapsed / progress) * (1 - progress);
}

export const TERMINAL = new Set(["completed", "failed", "stopped", "budget_exceeded"]);
export const isTerminal = (status) => TERMINAL.has(status);

export function Status({ status }) {
  return html`<span class=${`badge status-${status}`}>${String(status || "unknown").replace(/_/g, " ")}</span>`;
}

/** Shows an ApiError (or any error) with the fields it names, each with its problem. */
export function ErrorBox({ error, title = "That did not work" }) {
  if (!error) return null;
  const lines = error.errors?.length ? error.errors : [];
  return html`<div class="error" role="alert">
    <strong>${title}:</strong> ${error.message}
    ${lines.length > 0 && html`<ul>${lines.slice(0, 50).map((e) => html`<li>
      ${e.line !== undefined ? html`<b>line ${e.line}</b>: ` : e.field ? html`<b>${e.field}</b>: ` : ""}${e.problem}
    </li>`)}</ul>`}
  </div>`;
}

/** Load something from the API: { data, error, loading, reload }. */
export function useLoad(load, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const alive = useRef(true);
  const reload = useCallback(async () => {
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await load();
      if (alive.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (alive.current) setState((s) => ({ ...s, error, loading: false }));
    }
  }, deps);
  useEffect(() => { alive.current = true; reload(); return () => { alive.current = false; }; }, [reload]);
  return { ...state, reload };
}

export function CopyButton({ text, label = "Copy" }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try { await navigator.clipboard.writeText(text); } catch {
      const area = Object.assign(document.createElement("textarea"), { value: text });
      document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
    }
    setDone(true); setTimeout(() => setDone(false), 1500);
  };
  return html`<button type="button" class="secondary" onClick=${copy}>${done ? "Copied" : label}</button>`;
}

/** A modal dialog on <dialog>: Escape and the close button close it; focus stays inside while open. */
export function Dialog({ title, onClose, children }) {
  const ref = useRef();
  useEffect(() => {
    const dialog = ref.current;
    dialog.showModal();
    const cancel = (e) => { e.preventDefault(); onClose(); };
    dialog.addEventListener("cancel", cancel);
    return () => { dialog.removeEventListener("cancel", cancel); if (dialog.open) dialog.close(); };
  }, []);
  return html`<dialog ref=${ref} aria-labelledby="dialog-title">
    <header class="dialog-head"><h2 id="dialog-title">${title}</h2>
      <button type="button" class="icon" aria-label="Close" onClick=${onClose}>×</button></header>
    ${children}
  </dialog>`;
}

export const navigate = (path) => { window.location.hash = `#${path}`; };
