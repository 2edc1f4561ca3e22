// The jobs list: status, provider, GPU, $/h, cost so far, ETA, attempts, error; kept current by the user's
// event stream (statuses and costs of every job of theirs).
import { useEffect, useState } from "../../vendor/preact-htm.module.js";
import { api, stream } from "../api.js";
import { ErrorBox, etaSeconds, html, money, duration, short, Status, when } from "../ui.js";

export const JOB_COLUMNS = ["Job", "Status", "Provider", "GPU", "$/h", "Cost so far", "ETA", "Attempts", "Error", "Created"];

export function JobsPage() {
  const [jobs, setJobs] = useState(null);
  const [error, setError] = useState(null);
  const [live, setLive] = useState("connecting");
  const [, tick] = useState(0);

  useEffect(() => {
    let cancelled = false;
    // A list read answered after a job's status event (the read began before it) keeps the event's status: the
    // event is newer, and a job's last event is its final status, after which nothing would correct it.
    let events = 0;
    const latest = new Map();  // job_id -> { n, status, status_reason } of its latest status event
    const load = () => {
      const since = events;
      return api("/api/training/jobs").then((list) => !cancelled && setJobs(list.map((j) => {
        const seen = latest.get(j.job_id);
        return seen && seen.n > since ? { ...j, status: seen.status, status_reason: seen.status_reason ?? j.status_reason } : j;
      }))).catch((e) => !cancelled && setError(e));
    };
    load();
    const s = stream("/api/training/events", (event, data) => {
      if (event === "status") latest.set(data.job_id, { n: ++events, status: data.status, status_reason: data.reason });
      setJobs((list) => {
        if (!list) return list;
        const at = list.findIndex((j) => j.job_id === data.job_id);
        if (at < 0) { load(); return list; }
        const job = { ...list[at] };
        if (event === "status") Object.assign(job, { status: data.status, status_reason: data.reason ?? job.status_reason },
          data.cost ? { live_cost: data.cost } : {});
        else if (event === "cost") job.live_cost = data.cost;
        else return list;
        return [...list.slice(0, at), job, ...list.slice(at + 1)];
      });
    }, { onState: (state) => { setLive(state); if (state === "live") load(); } });
    const clock = setInterval(() => tick((n) => n + 1), 5000); // the ETAs count down
    return () => { cancelled = true; s.stop(); clearInterval(clock); };
  }, []);

  return html`<div class="row page-head"><h1>Jobs</h1>
      <span class=${`live live-${live}`} role="status">Updates: ${live}</span>
      <a class="button" href="#/configs">New job from a configuration</a></div>
    <${ErrorBox} error=${error} />
    ${jobs === null ? html`<p aria-busy="true">Loading…</p>` : jobs.length === 0
      ? html`<p>No jobs yet. <a href="#/datasets">Upload a data set</a>, then <a href="#/configs">make a configuration</a> and deploy it.</p>`
      : html`<div class="scroll"><table class="list jobs" data-testid="jobs">
        <thead><tr>${JOB_COLUMNS.map((c) => html`<th scope="col">${c}</th>`)}</tr></thead>
        <tbody>${jobs.map((j) => html`<tr data-job=${j.job_id}>
          <td><a href=${`#/jobs/${j.job_id}`}>${j.name || short(j.job_id)}</a> <code>${short(j.job_id)}</code></td>
          <td><${Status} status=${j.status} /></td>
          <td>${j.provider}</td>
          <td>${j.gpu_type || "–"}</td>
          <td>${money(j.live_cost?.cost_per_hour ?? j.cost?.cost_per_hour, 3)}</td>
          <td>${money(j.live_cost?.cost_so_far ?? j.cost_usd, 4)}</td>
          <td>${duration(etaSeconds(j))}</td>
          <td>${j.attempt}</td>
          <td class="reason">${["failed", "stopped", "budget_exceeded"].includes(j.status) ? j.status_reason || "" : ""}</td>
          <td>${when(j.created_at)}</td>
        </tr>`)}</tbody></table></div>`}`;
}
