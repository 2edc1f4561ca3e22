// The job page: everything about one job, live from its event stream. What it shows is read from the API when
// the page opens (the downsampled metrics, the predictions, the log) and then kept current by the stream; a
// reload or a second tab does the same, so nothing depends on a tab staying open.
import { useEffect, useRef, useState } from "../../vendor/preact-htm.module.js";
import { api, download, stream } from "../api.js";
import { Chart } from "../charts.js";
import { ErrorBox, etaSeconds, html, isTerminal, money, navigate, num, duration, Status, useLoad, when } from "../ui.js";

const MAX_POINTS = 2000;       // per metric, from the downsampled read
const MAX_LIVE_ROWS = 20000;   // kept in the page; older live rows are thinned
const LOG_LINES = 2000;        // kept in the page; the whole log is a download away

/** Merge metric points ({step, values} from the stream, or rows from the API) into rows by step. */
function mergeRows(rows, points) {
  const byStep = new Map(rows.map((r) => [r.step, r]));
  for (const p of points) {
    const values = p.values ? { ...p.values, epoch: p.epoch, attempt: p.attempt } : p;
    byStep.set(p.step, { ...(byStep.get(p.step) || {}), ...values, step: p.step });
  }
  let out = [...byStep.values()].sort((a, b) => a.step - b.step);
  if (out.length > MAX_LIVE_ROWS) out = out.filter((_, i) => i % 2 === 0 || i === out.length - 1);
  return out;
}

function ProgressBlock({ job, rows }) {
  const last = rows[rows.length - 1] || {};
  const progress = job.status === "completed" ? 1 : Math.max(job.live_cost?.progress || 0, job.progress || 0);
  const total = job.result?.total_steps ?? job.latest_metrics?.total_steps;
  const eta = etaSeconds(job);
  return html`<section class="card progress-block" aria-label="Progress">
    <div class="row"><${Status} status=${job.status} />
      <span>${job.status_reason || ""}</span></div>
    <label for="job-progress">Progress ${Math.round((progress || 0) * 100)}%</label>
    <progress id="job-progress" max="1" value=${progress || 0}></progress>
    <dl class="facts">
      <dt>Epoch</dt><dd>${num(last.epoch ?? job.metrics?.epoch, 2)}</dd>
      <dt>Step</dt><dd>${last.step ?? job.metrics?.step ?? "–"}${total ? ` / ${total}` : ""}</dd>
      <dt>ETA</dt><dd>${isTerminal(job.status) ? "done" : duration(eta)}</dd>
      <dt>Attempt</dt><dd>${job.attempt}</dd>
      <dt>Started</dt><dd>${when(job.started_at)}</dd>
      ${job.finished_at && html`<dt>Finished</dt><dd>${when(job.finished_at)}</dd>`}
    </dl>
  </section>`;
}

function CostBlock({ job }) {
  const c = job.live_cost || {};
  const budget = c.budget_limit ?? job.budget_limit_usd;
  const spent = c.cost_so_far ?? job.cost_usd ?? 0;
  return html`<section class="card" aria-label="Cost">
    <h2>Cost</h2>
    <dl class="facts">
      <dt>Per hour</dt><dd>${money(c.cost_per_hour ?? job.cost?.cost_per_hour, 3)}</dd>
      <dt>So far</dt><dd data-testid="cost-so-far">${money(spent, 4)}</dd>
      <dt>Projected</dt><dd>${money(c.projected_total, 3)}</dd>
      <dt>Budget</dt><dd>${budget ? money(budget) : "none"}</dd>
      ${budget && html`<dt>Remaining</dt><dd>${money(c.budget_remaining ?? Math.max(0, budget - spent))}</dd>`}
    </dl>
    ${budget && html`<label for="budget-meter">Budget used</label>
      <meter id="budget-meter" min="0" max=${budget} value=${spent} high=${budget * 0.8} optimum="0">${money(spent)}</meter>`}
  </section>`;
}

function Charts({ rows }) {
  const [log, setLog] = useState(false);
  const [smoothing, setSmoothing] = useState(0);
  return html`<section class="card charts" aria-label="Charts">
    <div class="row chart-controls">
      <h2>Training</h2>
      <label><input type="checkbox" checked=${log} onChange=${(e) => setLog(e.target.checked)} /> Log scale</label>
      <label for="smoothing">Smoothing ${smoothing.toFixed(2)}</label>
      <input id="smoothing" type="range" min="0" max="0.99" step="0.01" value=${smoothing}
        onInput=${(e) => setSmoothing(Number(e.target.value))} />
    </div>
    <div class="chart-grid">
      <${Chart} title="Loss" rows=${rows} names=${["loss", "eval_loss"]} labels=${{ loss: "train", eval_loss: "eval" }}
        log=${log} smoothing=${smoothing} />
      <${Chart} title="Learning rate" rows=${rows} names=${["learning_rate"]} />
      <${Chart} title="Gradient norm" rows=${rows} names=${["grad_norm"]} smoothing=${smoothing} />
      <${Chart} title="Speed" rows=${rows} names=${["samples_per_second", "train_samples_per_second"]}
        labels=${{ samples_per_second: "samples/s", train_samples_per_second: "samples/s" }} unit="samples/s" />
      <${Chart} title="GPU memory" rows=${rows} names=${["gpu_mem_used_mb", "gpu_memory_allocated_mb"]}
        labels=${{ gpu_mem_used_mb: "used", gpu_memory_allocated_mb: "allocated" }} unit="MB" />
      <${Chart} title="GPU use and temperature" rows=${rows} names=${["gpu_util_percent", "gpu_temperature_c"]}
        labels=${{ gpu_util_percent: "use %", gpu_temperature_c: "°C" }} />
      <${Chart} title="CPU use" rows=${rows} names=${["system_cpu_percent"]} labels=${{ system_cpu_percent: "%" }} unit="%" />
      <${Chart} title="RAM" rows=${rows} names=${["system_ram_used_mb"]} labels=${{ system_ram_used_mb: "MB" }} unit="MB" />
    </div>
  </section>`;
}

function Predictions({ predictions }) {
  const steps = [...new Set(predictions.map((p) => p.step))].sort((a, b) => b - a);
  const [step, setStep] = useState(null);
  const shown = step === null ? steps[0] : step;
  const rows = predictions.filter((p) => p.step === shown).sort((a, b) => a.sample_index - b.sample_index);
  return html`<section class="card" aria-label="Predictions">
    <div class="row"><h2>Predictions</h2>
      <span>${predictions.length} generated</span>
      ${steps.length > 0 && html`<label for="pred-step">Step</label>
        <select id="pred-step" value=${shown} onChange=${(e) => setStep(Number(e.target.value))}>
          ${steps.map((s) => html`<option value=${s}>${s}</option>`)}</select>`}</div>
    ${rows.length === 0 ? html`<p class="hint">No predictions yet.</p>` : html`<table class="list predictions" data-testid="predictions">
      <thead><tr><th scope="col">#</th><th scope="col">Prompt</th><th scope="col">Expected</th>
        <th scope="col">Generated</th><th scope="col">BLEU</th><th scope="col">ROUGE-L</th></tr></thead>
      <tbody>${rows.map((p) => html`<tr>
        <td>${p.sample_index}</td><td><pre>${p.prompt}</pre></td><td><pre>${p.expected}</pre></td>
        <td><pre>${p.generated}</pre></td><td>${num(p.scores?.bleu, 2)}</td><td>${num(p.scores?.rouge_l, 3)}</td>
      </tr>`)}</tbody></table>`}
  </section>`;
}

function LogView({ jobId, lines, tail }) {
  const [query, setQuery] = useState("");
  const [follow, setFollow] = useState(true);
  const [found, setFound] = useState(null);
  const [error, setError] = useState(null);
  const box = useRef();
  const text = lines.length ? lines.map((l) => l.text) : (tail || "").split("\n");
  useEffect(() => { if (follow && box.current) box.current.scrollTop = box.current.scrollHeight; }, [text.length, follow]);
  const search = async (e) => {
    e.preventDefault();
    setError(null);
    if (!query) { setFound(null); return; }
    try {
      const answer = await api(`/api/training/jobs/${jobId}/logs?q=${encodeURIComponent(query)}&limit=1000`);
      setFound(answer.lines);
    } catch (err) { setError(err); }
  };
  const shown = found ? found.map((l) => `${l.number}: ${l.text}`) : text.slice(-LOG_LINES);
  return html`<section class="card" aria-label="Log">
    <div class="row"><h2>Log</h2>
      <form role="search" onSubmit=${search} class="row">
        <label for="log-search" class="visually-hidden">Search the whole log</label>
        <input id="log-search" type="search" placeholder="Search the whole log" value=${query}
          onInput=${(e) => { setQuery(e.target.value); if (!e.target.value) setFound(null); }} />
        <button type="submit" class="secondary">Search</button>
      </form>
      <label><input type="checkbox" checked=${follow} onChange=${(e) => setFollow(e.target.checked)} /> Follow</label>
      <button type="button" class="secondary" onClick=${() => download(`/api/training/jobs/${jobId}/logs.txt`, `${jobId}.log`).catch(setError)}>
        Download the whole log</button>
    </div>
    ${found && html`<p role="status">${found.length} matching lines${found.length >= 1000 ? " (the first 1000)" : ""}.</p>`}
    <${ErrorBox} error=${error} />
    <pre ref=${box} class="log" tabindex="0" aria-label="Log lines" data-testid="log">${shown.join("\n")}</pre>
  </section>`;
}

function History({ job, errors }) {
  return html`<section class="card" aria-label="History">
    <h2>State history</h2>
    <ol class="history">${(job.history || []).map((h) => html`<li>
      <time>${when(h.occurred_at)}</time> <${Status} status=${h.status} /> ${h.reason || ""}</li>`)}</ol>
    ${errors?.length > 0 && html`<h3>Errors</h3><ul>${errors.map((e) => html`<li>
      attempt ${e.attempt}: <b>${e.error_type}</b>${e.error_field ? ` (${e.error_field})` : ""}: ${e.error_message}</li>`)}</ul>`}
  </section>`;
}

export function JobPage({ id }) {
  const [job, setJob] = useState(null);
  const [rows, setRows] = useState([]);
  const [predictions, setPredictions] = useState([]);
  const [lines, setLines] = useState([]);
  const [live, setLive] = useState("connecting");
  const [error, setError] = useState(null);
  const [alert, setAlert] = useState(null);
  const [busy, setBusy] = useState(false);
  const errors = useLoad(() => api(`/api/training/jobs/${id}/errors`), [id, job?.status]);
  // A read of the job (GET, or the stop's answer) that began before the latest status event arrived keeps the
  // event's status: the event is newer, and a final one ends the stream, so nothing would put it right again (a
  // GET in flight while the job stopped used to leave the page at "running").
  const statusEvents = useRef(0);
  const read = async (request) => {
    const seen = statusEvents.current;
    const fresh = await request();
    setJob((j) => (j && statusEvents.current !== seen
      ? { ...j, ...fresh, status: j.status, status_reason: j.status_reason, history: j.history }
      : { ...j, ...fresh }));
  };

  useEffect(() => {
    let cancelled = false;
    const backfill = async () => {
      try {
        const [metrics, preds, log] = await Promise.all([
          api(`/api/training/metrics/${id}?max_points=${MAX_POINTS}`),
          api(`/api/training/predictions/${id}?limit=500`),
          api(`/api/training/jobs/${id}/logs?limit=${LOG_LINES}&tail=true`).catch(() => null),
        ]);
        if (cancelled) return;
        setRows((r) => mergeRows(r, metrics.metrics));
        setPredictions(preds.predictions);
        if (log) setLines(log.lines);
      } catch (err) { if (!cancelled) setError(err); }
    };
    // progress, ETA and cost are the job's own fields: read again after new points, at most every few seconds
    let last = 0, pending = null;
    const refresh = () => {
      if (pending) return;
      pending = setTimeout(async () => {
        pending = null; last = Date.now();
        try { if (!cancelled) await read(() => api(`/api/training/jobs/${id}`)); } catch { /* the stream goes on */ }
      }, Math.max(0, 3000 - (Date.now() - last)));
    };
    const s = stream(`/api/training/jobs/${id}/events`, (event, data) => {
      if (event === "snapshot") { setJob(data); backfill(); }
      else if (event === "status") {
        statusEvents.current += 1;
        setJob((j) => ({ ...j, status: data.status, status_reason: data.reason ?? j.status_reason,
          ...(data.cost ? { live_cost: data.cost } : {}),
          history: [...(j.history || []), { status: data.status, previous: data.previous, reason: data.reason, occurred_at: data.occurred_at }] }));
      }
      else if (event === "metrics") {
        setRows((r) => mergeRows(r, data.metrics.map((m) => ({ ...m, attempt: data.attempt }))));
        refresh();
      }
      else if (event === "predictions") setPredictions((p) => [...data.predictions.map((x) => ({ ...x, attempt: data.attempt })), ...p]);
      else if (event === "cost") setJob((j) => ({ ...j, live_cost: data.cost }));
      else if (event === "log") setLines((l) => [...l, ...(data.lines || [])].slice(-LOG_LINES));
      else if (event === "budget_alert") setAlert(data);
    }, { onState: (state, err) => { setLive(state); if (state === "refused") setError(err); } });
    return () => { cancelled = true; s.stop(); clearTimeout(pending); };
  }, [id]);

  // a finished job's last log lines may be stored after its final status, when the stream has ended: read the
  // log's tail again a few times
  useEffect(() => {
    if (!job || !isTerminal(job.status)) return undefined;
    const timers = [1000, 3000, 6000, 12000, 25000].map((ms) => setTimeout(() =>
      api(`/api/training/jobs/${id}/logs?limit=${LOG_LINES}&tail=true`).then((log) => setLines(log.lines)).catch(() => {}), ms));
    return () => timers.forEach(clearTimeout);
  }, [job?.status]);

  // a finished job: read it again for its final fields (result, cost), and until its model is registered (the
  // registry does that just after the job completes; the stream has ended by then)
  useEffect(() => {
    if (!job || !isTerminal(job.status)) return undefined;
    const waiting = job.status === "completed" && !job.model_id;
    const timer = setTimeout(() => read(() => api(`/api/training/jobs/${id}`)).catch(() => {}), waiting ? 1500 : 0);
    return () => clearTimeout(timer);
  }, [job?.status, job?.model_id, job?.finished_at]);

  if (error && !job) return html`<${ErrorBox} error=${error} title="This job cannot be shown" />`;
  if (!job) return html`<p aria-busy="true">Loading the job…</p>`;

  const stop = async () => {
    if (!window.confirm("Stop this job? Its last checkpoint is kept.")) return;
    setBusy(true);
    try { await read(() => api(`/api/training/jobs/${id}/stop`, { method: "POST" })); } catch (err) { setError(err); }
    setBusy(false);
  };
  const retry = async () => {
    setBusy(true);
    try { const answer = await api(`/api/training/jobs/${id}/retry`, { method: "POST" }); navigate(`/jobs/${answer.job_id}`); } catch (err) { setError(err); }
    setBusy(false);
  };
  const liveLabel = { live: "live", reconnecting: "reconnecting…", ended: "ended", connecting: "connecting…", refused: "refused" }[live];
  return html`<div class="job-page">
    <header class="row page-head">
      <h1>${job.name || "Job"} <code>${id.slice(0, 8)}</code></h1>
      <span class=${`live live-${live}`} role="status" aria-live="polite">Stream: ${liveLabel}</span>
      <span>${job.provider}${job.gpu_type ? ` · ${job.gpu_type}` : ""}</span>
      <div class="actions">
        ${!isTerminal(job.status) && html`<button type="button" class="danger" onClick=${stop} disabled=${busy}>Stop</button>`}
        ${isTerminal(job.status) && html`<button type="button" onClick=${retry} disabled=${busy}>Retry</button>`}
        ${job.model_id && html`<a class="button secondary" href=${`#/models/${job.model_id}`}>Model</a>`}
      </div>
    </header>
    <${ErrorBox} error=${error} />
    ${alert && html`<p class="warning" role="alert">Budget alert: ${alert.kind === "threshold" ? `${alert.threshold_pct}% of the budget is spent` : "the budget is reached"} (${money(alert.cost?.cost_so_far, 3)}).</p>`}
    <div class="two">
      <${ProgressBlock} job=${job} rows=${rows} />
      <${CostBlock} job=${job} />
    </div>
    <${Charts} rows=${rows} />
    <${Predictions} predictions=${predictions} />
    <${LogView} jobId=${id} lines=${lines} tail=${job.logs_tail} />
    <${History} job=${job} errors=${errors.data?.errors} />
  </div>`;
}
