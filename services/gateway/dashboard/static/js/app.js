// The shell: sign-in, navigation and the routes (the URL's fragment: #/jobs/ID …).
import { render, useEffect, useState } from "../vendor/preact-htm.module.js";
import { api, ApiError, session } from "./api.js";
import { html } from "./ui.js";
import { ConfigsPage } from "./pages/configs.js";
import { DatasetsPage } from "./pages/datasets.js";
import { JobPage } from "./pages/job.js";
import { JobsPage } from "./pages/jobs.js";
import { ModelsPage } from "./pages/models.js";
import { SettingsPage } from "./pages/settings.js";

const PAGES = [
  ["jobs", "Jobs"], ["datasets", "Data sets"], ["configs", "Configurations"], ["models", "Models"],
  ["settings", "Settings"],
];

function SignIn({ onSignedIn }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api("/api/keys", { key: key.trim() });
      session.key = key.trim();
      onSignedIn();
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401
        ? "That API key is unknown or revoked. Ask your operator for one (tunefleet keys create --user NAME)."
        : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="signin">
    <h1>TuneFleet</h1>
    <form onSubmit=${submit} class="card" aria-describedby=${error ? "signin-error" : undefined}>
      <h2>Sign in</h2>
      <label for="api-key">API key</label>
      <input id="api-key" name="api-key" type="password" autocomplete="current-password" required
             value=${key} onInput=${(e) => setKey(e.target.value)} />
      <p class="hint">The key is kept in this browser tab only, and forgotten when the tab closes.</p>
      ${error && html`<p id="signin-error" class="error" role="alert">${error}</p>`}
      <button type="submit" disabled=${busy}>${busy ? "Checking…" : "Sign in"}</button>
    </form>
  </main>`;
}

function parseRoute() {
  const parts = (window.location.hash.replace(/^#\/?/, "") || "jobs").split("/").map(decodeURIComponent);
  return { page: parts[0], id: parts[1], rest: parts.slice(2) };
}

function Page({ route }) {
  switch (route.page) {
    case "datasets": return html`<${DatasetsPage} />`;
    case "configs": return html`<${ConfigsPage} id=${route.id} />`;
    case "models": return html`<${ModelsPage} id=${route.id} />`;
    case "settings": return html`<${SettingsPage} />`;
    case "jobs": return route.id ? html`<${JobPage} id=${route.id} />` : html`<${JobsPage} />`;
    default: return html`<p>No such page. <a href="#/jobs">Go to the jobs</a>.</p>`;
  }
}

function App() {
  const [signedIn, setSignedIn] = useState(Boolean(session.key));
  const [route, setRoute] = useState(parseRoute());
  useEffect(() => {
    const onHash = () => setRoute(parseRoute());
    const onSignedOut = () => { session.key = null; setSignedIn(false); };
    window.addEventListener("hashchange", onHash);
    window.addEventListener("tunefleet:signed-out", onSignedOut);
    return () => { window.removeEventListener("hashchange", onHash); window.removeEventListener("tunefleet:signed-out", onSignedOut); };
  }, []);
  useEffect(() => {
    const label = PAGES.find(([p]) => p === route.page)?.[1] || "TuneFleet";
    document.title = `${route.id ? `${label} · ${route.id.slice(0, 8)}` : label} · TuneFleet`;
  }, [route]);
  if (!signedIn) return html`<${SignIn} onSignedIn=${() => setSignedIn(true)} />`;
  const signOut = () => { session.key = null; setSignedIn(false); };
  return html`
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <a class="brand" href="#/jobs">TuneFleet</a>
      <nav aria-label="Main">
        ${PAGES.map(([page, label]) => html`<a href=${`#/${page}`}
          aria-current=${route.page === page ? "page" : undefined}>${label}</a>`)}
      </nav>
      <button type="button" class="secondary" onClick=${signOut}>Sign out</button>
    </header>
    <main id="main" tabindex="-1"><${Page} route=${route} /></main>`;
}

render(html`<${App} />`, document.getElementById("app"));
