"""An emulator of the Hugging Face Hub's wire API (model repos and Docker Spaces), at least as strict as the Hub
where that hurts.

Reached through ``HF_ENDPOINT`` (``HfApi(endpoint=...)``); speaks what ``huggingface_hub`` 2.4.0 sends. As the Hub:

* a token is an account (``accounts``: username to token, read on every request, so it may change while running);
  an unknown token is a 401 ``Invalid credentials in Authorization header``; a token writes to its own namespace
  (and an org's where ``orgs`` gives it ``write``/``admin``) only; a read-only token (``faults.read_only``) reads
  ``role: read`` in ``whoami`` and gets 403 on every write;
* another account's private repo is a 404 ``X-Error-Code: RepoNotFound``; a gated model's files are a 403
  ``GatedRepo`` without access; errors carry ``X-Error-Code``/``X-Error-Message`` and a JSON ``error``;
* preupload answers ``lfs`` for what a new repo's default ``.gitattributes`` sends to LFS (``*.safetensors``,
  ``*.bin``, ...) and for files of 10 MiB or more, as the Hub does, and the commit refuses such a path sent inline.
  The LFS batch path (basic transfer: a signed PUT, then verify) is served; Xet storage is not, so a client
  uploads LFS files with ``HF_HUB_DISABLE_XET=1`` (``huggingface_hub.constants.HF_HUB_DISABLE_XET``) or fails;
* a Space with no files is NO_APP_FILE; a commit (or a restart, or new hardware) makes it BUILDING for ``build_s``:
  the emulator reads its README (``sdk: docker``, ``app_port``; else CONFIG_ERROR) and its Dockerfile (FROM a known
  image, WORKDIR, COPY, ENV, EXPOSE, USER, CMD/ENTRYPOINT in JSON form; anything else, or an unknown image, is
  BUILD_ERROR with the reason in the build log). Then APP_STARTING: the command runs on the stock machine in a copy
  of the repo's files, with the Space's variables and secrets as environment variables and ``PORT`` set to the
  port this Space's app must answer on (each Space gets its own; the Hub's is ``app_port``). RUNNING once an HTTP
  GET there answers; RUNTIME_ERROR ``Launch timed out`` when nothing answers within ``app_start_timeout_s``, and
  RUNTIME_ERROR with the exit code when the process ends. pause kills it (PAUSED); restart builds again; a Space
  with a sleep time that nobody visits goes SLEEPING. Paid hardware is billed per second of APP_STARTING and
  RUNNING (the container holds the hardware then), never while building or paused.

Faults (``.faults``): a build error, the process killed mid-run, 402 on create with paid hardware, read-only
tokens, HTTP 500s and 429s. Tests inspect ``repos`` (files, commits), ``spaces`` (secrets, variables, stage history,
billed seconds) and ``requests`` (method, path, user; never a body or a query string).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .images import sandbox_images
from .machines import MachineImage, StockImages, kill_group, kill_machine, machine_env, spawn

#: Hardware flavour → (pretty name, GPUs, GPU model, GB per GPU, $/h), from https://huggingface.co/docs/hub/spaces-gpus
#: (the documented hourly prices; the live API gives them per minute).
HARDWARE = {
    "cpu-basic": ("CPU Basic", 0, None, 0, 0.0),
    "cpu-upgrade": ("CPU Upgrade", 0, None, 0, 0.03),
    "t4-small": ("Nvidia T4 - small", 1, "T4", 16, 0.40),
    "t4-medium": ("Nvidia T4 - medium", 1, "T4", 16, 0.60),
    "l4x1": ("1x Nvidia L4", 1, "L4", 24, 0.80),
    "l4x4": ("4x Nvidia L4", 4, "L4", 24, 3.80),
    "l40sx1": ("1x Nvidia L40S", 1, "L40S", 48, 1.80),
    "l40sx4": ("4x Nvidia L40S", 4, "L40S", 48, 8.30),
    "l40sx8": ("8x Nvidia L40S", 8, "L40S", 48, 23.50),
    "a10g-small": ("Nvidia A10G - small", 1, "A10G", 24, 1.00),
    "a10g-large": ("Nvidia A10G - large", 1, "A10G", 24, 1.50),
    "a10g-largex2": ("2x Nvidia A10G - large", 2, "A10G", 24, 3.00),
    "a10g-largex4": ("4x Nvidia A10G - large", 4, "A10G", 24, 5.00),
    "a100-large": ("Nvidia A100 - large", 1, "A100", 80, 4.00),
}
BILLED_STAGES = ("APP_STARTING", "RUNNING")
#: A new repo's default .gitattributes: these go to LFS, as does any file of LFS_MIN_SIZE or more.
LFS_PATTERNS = ("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
                "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
                "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
                "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*")
LFS_MIN_SIZE = 10 * 1024 * 1024
SPACE_SDKS = ("gradio", "docker", "static")
REPO_TYPES = ("model", "dataset", "space")
CREATE_FIELDS = frozenset({"name", "organization", "type", "private", "visibility", "sdk", "hardware",
                           "sleepTimeSeconds", "secrets", "variables", "volumes", "template", "resourceGroupId",
                           "region", "license"})
DOCKER_INSTRUCTIONS = ("FROM", "WORKDIR", "COPY", "ENV", "EXPOSE", "USER", "CMD", "ENTRYPOINT")
BAD_TOKEN = "Invalid credentials in Authorization header"
APP_PORT = 7860


@dataclass
class Faults:
    build_error: str | None = None       # the next builds fail with this line in the build log
    kill_after_s: float | None = None    # kill each Space's process this long after it is RUNNING (RUNTIME_ERROR)
    payment_required: bool = False       # 402 on a create or a hardware request of paid hardware
    read_only: set[str] = field(default_factory=set)  # usernames whose token is read-only
    http_errors: int = 0                 # answer the next N API requests with 500
    rate_limited: int = 0                # answer the next N API requests with 429 and Retry-After
    retry_after_s: float = 1.0


@dataclass
class Commit:
    oid: str
    summary: str
    at: float


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created_at: float
    gated: str | bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)       # paths stored in LFS
    commits: list[Commit] = field(default_factory=list)
    access: set[str] = field(default_factory=set)    # users granted a gated model

    @property
    def namespace(self) -> str:
        return self.id.split("/")[0]

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40


@dataclass
class Space:
    repo: Repo
    folder: Path
    hardware: str = "cpu-basic"
    sleep_time: int | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    stage: str = "NO_APP_FILE"
    error_message: str | None = None
    history: list[tuple[float, str]] = field(default_factory=list)
    billed_s: float = 0.0
    cost_usd: float = 0.0
    billed_since: float | None = None
    build_done_at: float = 0.0
    start_deadline: float = 0.0
    running_since: float | None = None
    last_visit: float = 0.0
    build_log: list[tuple[float, str]] = field(default_factory=list)
    run_log: list[tuple[float, str]] = field(default_factory=list)
    run_log_offset: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    machine_id: str = ""
    port: int = 0
    starts: int = 0

    @property
    def price(self) -> float:
        return HARDWARE[self.hardware][4]

    def runtime(self) -> dict:
        current = self.hardware if self.stage in ("APP_STARTING", "RUNNING", "RUNNING_BUILDING",
                                                  "RUNNING_APP_STARTING") else None
        body = {"stage": self.stage, "hardware": {"current": current, "requested": self.hardware},
                "storage": None, "gcTimeout": self.sleep_time, "replicas": {"current": 1, "requested": 1},
                "devMode": False, "sha": self.repo.sha,
                "domains": [{"domain": f"{self.repo.id.replace('/', '-').lower()}.hf.space", "stage": "READY"}]}
        if self.error_message and self.stage in ("BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR"):
            body["errorMessage"] = self.error_message
        return body


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def _now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(t if t is not None else time.time(), UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def front_matter(readme: str) -> dict | None:
    """The YAML block of a README, None when it has none; raises ValueError when it is not YAML."""
    if not readme.startswith("---"):
        return None
    end = readme.find("\n---", 3)
    if end < 0:
        raise ValueError("the YAML block of README.md is not closed with ---")
    try:
        data = yaml.safe_load(readme[3:end]) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"README.md metadata is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a mapping")
    return data


class HubEmulator:
    def __init__(self, workdir: Path, accounts: dict[str, str], *, stock: StockImages, build_s: float = 2.0,
                 app_start_timeout_s: float = 120.0, images: dict[str, MachineImage] | None = None):
        self.workdir, self.accounts, self.stock = workdir, accounts, stock
        self.build_s, self.app_start_timeout_s = build_s, app_start_timeout_s
        self.images = dict(images if images is not None else sandbox_images(stock, pull_s=0.0))
        self.faults = Faults()
        self.orgs: dict[str, dict[str, str]] = {}   # org → {username: role}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.spaces: dict[str, Space] = {}
        self.lfs_blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""
        self._key = secrets.token_bytes(16)
        self.app = Starlette(routes=self._routes(), lifespan=self._lifespan)

    # Seeding and inspection ------------------------------------------------------------------------------

    def add_model(self, repo_id: str, files: dict[str, bytes], *, gated: bool | str = False,
                  private: bool = False) -> Repo:
        repo = Repo("model", repo_id, private, time.time(), gated="auto" if gated is True else gated)
        self.repos[("model", repo_id)] = repo
        for path, data in files.items():
            self._store(repo, path, data, lfs=self._wants_lfs(path, len(data)))
        repo.commits.append(Commit(hashlib.sha1(f"{repo_id}|seed|{time.time()}".encode()).hexdigest(),
                                   "initial commit", time.time()))
        return repo

    def grant(self, repo_id: str, username: str) -> None:
        """Let ``username`` into a gated model (an accepted access request)."""
        self.repos[("model", repo_id)].access.add(username)

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        return dict(self.repos[(repo_type, repo_id)].files)

    def stages(self, space_id: str) -> list[str]:
        return [stage for _, stage in self.spaces[space_id].history]

    def shutdown(self) -> None:
        for space in self.spaces.values():
            self._kill(space)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        ticker = asyncio.create_task(self._tick_forever())
        try:
            yield
        finally:
            ticker.cancel()
            self.shutdown()

    # Accounts ---------------------------------------------------------------------------------------------

    def _user(self, request: Request) -> str | None:
        """The account of the request's token; None when it sends none. An unknown token is refused."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not token:
            return None
        for user, known in list(self.accounts.items()):
            if scheme.lower() == "bearer" and hmac.compare_digest(known, token):
                return user
        raise HubError(401, BAD_TOKEN)

    def _member(self, user: str | None, namespace: str, roles: tuple[str, ...]) -> bool:
        return user is not None and (user == namespace or self.orgs.get(namespace, {}).get(user) in roles)

    def _require_write(self, user: str | None, namespace: str, what: str) -> str:
        if user is None:
            raise HubError(401, "You must be authenticated to do this")
        if user in self.faults.read_only:
            raise HubError(403, f"You don't have the rights to {what}: this token is read-only. Use a write token.")
        if not self._member(user, namespace, ("admin", "write")):
            raise HubError(403, f"You don't have the rights to {what} under the namespace {namespace!r}")
        return user

    def _repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._member(user, repo.namespace,
                                                              ("admin", "write", "contributor", "read"))):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    # Routing ----------------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        repo = "{ns}/{name}"
        space = f"/api/spaces/{repo}"
        routes = [
            ("GET", "/api/whoami-v2", self.whoami), ("POST", "/api/repos/create", self.create_repo),
            ("DELETE", "/api/repos/delete", self.delete_repo), ("POST", "/api/validate-yaml", self.validate_yaml),
            ("GET", "/api/spaces/hardware", self.hardware_list), ("GET", "/api/spaces", self.list_spaces),
            ("GET", f"/api/{{kind}}s/{repo}/revision/{{rev}}", self.repo_info),
            ("GET", f"/api/{{kind}}s/{repo}", self.repo_info),
            ("POST", f"/api/{{kind}}s/{repo}/preupload/{{rev}}", self.preupload),
            ("POST", f"/api/{{kind}}s/{repo}/commit/{{rev}}", self.commit),
            ("GET", f"/api/{{kind}}s/{repo}/xet-{{which}}-token/{{rev}}", self.xet_token),
            ("GET", f"{space}/secrets", self.list_secrets), ("POST", f"{space}/secrets", self.add_secret),
            ("DELETE", f"{space}/secrets", self.delete_secret),
            ("GET", f"{space}/variables", self.variables), ("POST", f"{space}/variables", self.variables),
            ("DELETE", f"{space}/variables", self.variables),
            ("GET", f"{space}/runtime", self.runtime), ("POST", f"{space}/hardware", self.request_hardware),
            ("POST", f"{space}/sleeptime", self.sleeptime), ("POST", f"{space}/pause", self.pause),
            ("POST", f"{space}/restart", self.restart), ("GET", f"{space}/logs/{{which}}", self.logs),
            ("POST", f"/{repo}.git/info/lfs/objects/batch", self.lfs_batch),
            ("POST", f"/{{prefix}}/{repo}.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", "/_lfs/upload/{oid}", self.lfs_upload), ("POST", "/_lfs/verify/{oid}", self.lfs_verify),
            ("GET", f"/{{prefix}}/{repo}/resolve/{{rev}}/{{path:path}}", self.resolve),
            ("HEAD", f"/{{prefix}}/{repo}/resolve/{{rev}}/{{path:path}}", self.resolve),
            ("GET", f"/{repo}/resolve/{{rev}}/{{path:path}}", self.resolve),
            ("HEAD", f"/{repo}/resolve/{{rev}}/{{path:path}}", self.resolve),
        ]
        return [Route(path, self._handler(fn), methods=[method]) for method, path, fn in routes]

    def _handler(self, fn):
        async def handle(request: Request) -> Response:
            try:
                user = self._user(request)
            except HubError as exc:
                self.requests.append((request.method, request.url.path, None))
                return _error(exc)
            self.requests.append((request.method, request.url.path, user))
            if request.url.path.startswith("/api/"):
                if self.faults.rate_limited > 0:
                    self.faults.rate_limited -= 1
                    return _error(HubError(429, "Too Many Requests"),
                                  {"Retry-After": str(self.faults.retry_after_s)})
                if self.faults.http_errors > 0:
                    self.faults.http_errors -= 1
                    return _error(HubError(500, "Internal Error"))
            try:
                return await fn(request, user)
            except HubError as exc:
                return _error(exc)
        return handle

    # Accounts and repos -----------------------------------------------------------------------------------

    async def whoami(self, request: Request, user: str | None) -> Response:
        if user is None:
            raise HubError(401, BAD_TOKEN)
        role = "read" if user in self.faults.read_only else "write"
        orgs = [{"type": "org", "name": org, "fullname": org, "roleInOrg": members[user], "isEnterprise": False}
                for org, members in self.orgs.items() if user in members]
        return JSONResponse({
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
            "email": f"{user}@example.com", "emailVerified": True, "canPay": not self.faults.payment_required,
            "isPro": False, "periodEnd": None, "avatarUrl": "", "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {"displayName": "tunefleet", "role": role,
                                                             "createdAt": _now_iso()}}})

    async def create_repo(self, request: Request, user: str | None) -> Response:
        body = await _json(request)
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise HubError(400, f"Invalid field {unknown[0]!r}")
        name, kind = body.get("name"), body.get("type") or "model"
        if not isinstance(name, str) or not name or "/" in name or kind not in REPO_TYPES:
            raise HubError(400, "Invalid repo name or type")
        namespace = body.get("organization") or user
        self._require_write(user, namespace or "", f"create a {kind}")
        repo_id = f"{namespace}/{name}"
        url = f"{self._base(request)}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
        if (kind, repo_id) in self.repos:
            raise HubError(409, f"You already created this {kind} repo", url=url)
        hardware = body.get("hardware") or "cpu-basic"
        if kind == "space":
            if body.get("sdk") not in SPACE_SDKS:
                raise HubError(400, f"Invalid sdk: choose one of {', '.join(SPACE_SDKS)}")
            self._check_hardware(hardware)
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        repo = Repo(kind, repo_id, private, time.time())
        repo.files[".gitattributes"] = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                                               for p in LFS_PATTERNS).encode()
        repo.commits.append(Commit(hashlib.sha1(f"{repo_id}|{time.time()}".encode()).hexdigest(),
                                   "initial commit", time.time()))
        self.repos[(kind, repo_id)] = repo
        if kind == "space":
            space = Space(repo, self.workdir / "spaces" / repo_id.replace("/", "--"), hardware=hardware,
                          sleep_time=body.get("sleepTimeSeconds"))
            shutil.rmtree(space.folder, ignore_errors=True)
            space.folder.mkdir(parents=True)
            for item in body.get("secrets") or []:
                space.secrets[_env_key(item.get("key"))] = str(item.get("value", ""))
            for item in body.get("variables") or []:
                space.variables[_env_key(item.get("key"))] = {"value": str(item.get("value", "")),
                                                              "updatedAt": _now_iso()}
            self.spaces[repo_id] = space
            self._set_stage(space, "NO_APP_FILE")
        return JSONResponse({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _check_hardware(self, hardware: str) -> None:
        if hardware not in HARDWARE:
            raise HubError(400, f"Invalid hardware {hardware!r}")
        if HARDWARE[hardware][4] > 0 and self.faults.payment_required:
            raise HubError(402, "Payment required: add a payment method to your account "
                                "(https://huggingface.co/settings/billing) to use paid hardware")

    async def delete_repo(self, request: Request, user: str | None) -> Response:
        body = await _json(request)
        kind = body.get("type") or "model"
        repo_id = f"{body.get('organization') or user}/{body.get('name')}"
        repo = self._repo(kind, repo_id, user)
        self._require_write(user, repo.namespace, f"delete this {kind}")
        del self.repos[(kind, repo_id)]
        if kind == "space":
            space = self.spaces.pop(repo_id)
            self._kill(space)
            self._set_stage(space, "DELETING")
        return Response(status_code=200)

    async def validate_yaml(self, request: Request, user: str | None) -> Response:
        body = await _json(request)
        try:
            front_matter(str(body.get("content", "")))
        except ValueError as exc:
            return JSONResponse({"errors": [{"message": str(exc)}], "error": str(exc)}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    async def repo_info(self, request: Request, user: str | None) -> Response:
        kind = request.path_params["kind"]
        if kind not in REPO_TYPES:
            raise HubError(404, "Not Found")
        repo = self._repo(kind, _repo_id(request), user)
        self._revision(repo, request.path_params.get("rev", "main"))
        blobs = request.query_params.get("blobs") in ("1", "true", "True")
        siblings = []
        for path, data in sorted(repo.files.items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=len(data), blobId=_git_blob_sha(data))
                if path in repo.lfs:
                    sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                      "pointerSize": 134}
            siblings.append(sibling)
        body = {"_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id, "author": repo.namespace,
                "sha": repo.sha, "lastModified": _now_iso(repo.commits[-1].at), "createdAt": _now_iso(repo.created_at),
                "private": repo.private, "gated": repo.gated, "disabled": False, "likes": 0, "tags": [],
                "siblings": siblings, "usedStorage": sum(len(d) for d in repo.files.values())}
        if kind == "model":
            body.update(modelId=repo.id, downloads=0, library_name="transformers" if "config.json" in repo.files
                        else None, spaces=[])
            with contextlib.suppress(ValueError, KeyError):
                config = json.loads(repo.files["config.json"])
                body["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
        if kind == "space":
            space = self.spaces[repo.id]
            body.update(sdk="docker", subdomain=repo.id.replace("/", "-").lower(), runtime=space.runtime(),
                        host=f"https://{repo.id.replace('/', '-').lower()}.hf.space")
        return JSONResponse(body)

    async def list_spaces(self, request: Request, user: str | None) -> Response:
        author, search = request.query_params.get("author"), request.query_params.get("search")
        found = []
        for (kind, repo_id), repo in list(self.repos.items()):
            if kind != "space" or (author and repo.namespace != author) or (search and search not in repo_id):
                continue
            if repo.private and not self._member(user, repo.namespace, ("admin", "write", "contributor", "read")):
                continue
            found.append({"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                          "author": repo.namespace, "likes": 0, "private": repo.private, "sdk": "docker",
                          "tags": [], "createdAt": _now_iso(repo.created_at),
                          "lastModified": _now_iso(repo.commits[-1].at)})
        return JSONResponse(found)

    def _revision(self, repo: Repo, revision: str) -> None:
        revision = unquote(revision)
        if revision != "main" and revision not in {c.oid for c in repo.commits}:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # Uploads ----------------------------------------------------------------------------------------------

    def _wants_lfs(self, path: str, size: int) -> bool:
        name = PurePosixPath(path).name
        return size >= LFS_MIN_SIZE or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)

    def _store(self, repo: Repo, path: str, data: bytes, *, lfs: bool) -> None:
        repo.files[path] = data
        (repo.lfs.add if lfs else repo.lfs.discard)(path)

    def _writable(self, request: Request, user: str | None) -> Repo:
        kind = request.path_params.get("kind", "model")
        if kind not in REPO_TYPES:
            raise HubError(404, "Not Found")
        repo = self._repo(kind, _repo_id(request), user)
        self._require_write(user, repo.namespace, f"write to this {kind}")
        return repo

    async def preupload(self, request: Request, user: str | None) -> Response:
        repo = self._writable(request, user)
        self._revision(repo, request.path_params["rev"])
        files = []
        for item in (await _json(request)).get("files") or []:
            path, size = item["path"], int(item["size"])
            existing = repo.files.get(path)
            lfs = self._wants_lfs(path, size)
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if path in repo.lfs else _git_blob_sha(existing)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        return JSONResponse({"files": files, "commitOid": repo.sha})

    async def xet_token(self, request: Request, user: str | None) -> Response:
        """Xet storage is not emulated: a client uploads through the LFS batch path with HF_HUB_DISABLE_XET=1."""
        raise HubError(501, "Xet storage is not emulated here; set HF_HUB_DISABLE_XET=1 so that LFS files go "
                            "through the LFS batch API")

    async def lfs_batch(self, request: Request, user: str | None) -> Response:
        prefix = request.path_params.get("prefix")
        kind = {None: "model", "spaces": "space", "datasets": "dataset"}.get(prefix)
        if kind is None:
            raise HubError(404, "Not Found")
        request.path_params["kind"] = kind
        self._writable(request, user)
        body = await _json(request)
        if body.get("operation") != "upload" or "basic" not in (body.get("transfers") or ["basic"]):
            raise HubError(422, "Only the basic upload transfer is supported")
        base, objects = self._base(request), []
        for obj in body.get("objects") or []:
            oid, size = str(obj["oid"]), int(obj["size"])
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_blobs:
                signature = hmac.new(self._key, f"{oid}:{size}".encode(), "sha256").hexdigest()
                entry["actions"] = {"upload": {"href": f"{base}/_lfs/upload/{oid}?size={size}&sig={signature}",
                                               "header": {}},
                                    "verify": {"href": f"{base}/_lfs/verify/{oid}", "header": {}}}
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    async def lfs_upload(self, request: Request, user: str | None) -> Response:
        """The storage's signed PUT: no token, the signature authorises it."""
        oid, size = request.path_params["oid"], request.query_params.get("size", "")
        expected = hmac.new(self._key, f"{oid}:{size}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(expected, request.query_params.get("sig", "")):
            return Response("<Error><Code>AccessDenied</Code></Error>", 403, media_type="application/xml")
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != oid or str(len(data)) != size:
            return Response("<Error><Code>BadDigest</Code></Error>", 400, media_type="application/xml")
        self.lfs_blobs[oid] = data
        return Response(status_code=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def lfs_verify(self, request: Request, user: str | None) -> Response:
        if user is None:
            raise HubError(401, "You must be authenticated to do this")
        body = await _json(request)
        data = self.lfs_blobs.get(request.path_params["oid"])
        if data is None or len(data) != int(body.get("size", -1)):
            raise HubError(404, "Object not found", "EntryNotFound")
        return JSONResponse({"success": True})

    async def commit(self, request: Request, user: str | None) -> Response:
        repo = self._writable(request, user)
        self._revision(repo, request.path_params["rev"])
        if not request.headers.get("content-type", "").startswith("application/x-ndjson"):
            raise HubError(400, "The commit payload must be application/x-ndjson")
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header, changes = lines[0]["value"], []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", ""))
            if not path or path.startswith("/") or ".." in PurePosixPath(path).parts:
                raise HubError(400, f"Invalid path {path!r}")
            if key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                    else str(value["content"]).encode()
                if self._wants_lfs(path, len(data)) and data:
                    raise HubError(400, f"Your push was rejected because {path} must be stored with Git LFS "
                                        "(see .gitattributes); upload it as an LFS file")
                changes.append((path, data, False))
            elif key == "lfsFile":
                data = self.lfs_blobs.get(value.get("oid", ""))
                if data is None:
                    raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                        f"does not exist ({path})")
                changes.append((path, data, True))
            elif key in ("deletedFile", "deletedFolder"):
                folder = key == "deletedFolder"
                gone = [p for p in repo.files if (p.startswith(path.rstrip("/") + "/") if folder else p == path)]
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                changes.extend((p, None, False) for p in gone)
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        for path, data, lfs in changes:
            if data is None:
                repo.files.pop(path, None)
                repo.lfs.discard(path)
            else:
                self._store(repo, path, data, lfs=lfs)
        oid = hashlib.sha1(f"{repo.sha}|{header.get('summary')}|{time.time()}|{len(changes)}".encode()).hexdigest()
        repo.commits.append(Commit(oid, str(header.get("summary", "")), time.time()))
        if repo.type == "space":
            self._rebuild(self.spaces[repo.id], on_commit=True)
        prefix = "" if repo.type == "model" else f"{repo.type}s/"
        return JSONResponse({"commitUrl": f"{self._base(request)}/{prefix}{repo.id}/commit/{oid}",
                             "commitOid": oid, "success": True})

    # Downloads --------------------------------------------------------------------------------------------

    async def resolve(self, request: Request, user: str | None) -> Response:
        kind = {None: "model", "spaces": "space", "datasets": "dataset"}.get(request.path_params.get("prefix"))
        if kind is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        repo = self._repo(kind, _repo_id(request), user)
        if repo.gated and user != repo.namespace and user not in repo.access:
            raise HubError(403, f"Access to model {repo.id} is restricted. You must have access to it and be "
                                "authenticated to access it. Please log in.", "GatedRepo")
        self._revision(repo, request.path_params["rev"])
        path = unquote(request.path_params["path"])
        data = repo.files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs else _git_blob_sha(data)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                   "Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{PurePosixPath(path).name}"'}
        if path in repo.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers, media_type="application/octet-stream")
        return Response(data, headers=headers, media_type="application/octet-stream")

    # Spaces -----------------------------------------------------------------------------------------------

    def _space(self, request: Request, user: str | None, *, write: bool = True) -> Space:
        repo = self._repo("space", _repo_id(request), user)
        if write:
            self._require_write(user, repo.namespace, "manage this Space")
        return self.spaces[repo.id]

    async def list_secrets(self, request: Request, user: str | None) -> Response:
        space = self._space(request, user)
        return JSONResponse([{"key": k, "updatedAt": _now_iso()} for k in space.secrets])

    async def add_secret(self, request: Request, user: str | None) -> Response:
        space, body = self._space(request, user), await _json(request)
        space.secrets[_env_key(body.get("key"))] = str(body.get("value", ""))
        return Response(status_code=200)

    async def delete_secret(self, request: Request, user: str | None) -> Response:
        space, body = self._space(request, user), await _json(request)
        space.secrets.pop(str(body.get("key")), None)
        return Response(status_code=200)

    async def variables(self, request: Request, user: str | None) -> Response:
        space = self._space(request, user)
        if request.method == "POST":
            body = await _json(request)
            entry = {"value": str(body.get("value", "")), "updatedAt": _now_iso()}
            if body.get("description"):
                entry["description"] = body["description"]
            space.variables[_env_key(body.get("key"))] = entry
        elif request.method == "DELETE":
            space.variables.pop(str((await _json(request)).get("key")), None)
        return JSONResponse(space.variables)

    async def runtime(self, request: Request, user: str | None) -> Response:
        return JSONResponse(self._space(request, user, write=False).runtime())

    async def request_hardware(self, request: Request, user: str | None) -> Response:
        space, body = self._space(request, user), await _json(request)
        flavor = body.get("flavor")
        self._check_hardware(str(flavor))
        space.hardware = flavor
        if body.get("sleepTimeSeconds") is not None:
            space.sleep_time = int(body["sleepTimeSeconds"])
        if space.stage not in ("PAUSED", "NO_APP_FILE"):
            self._rebuild(space)
        return JSONResponse(space.runtime())

    async def sleeptime(self, request: Request, user: str | None) -> Response:
        space, body = self._space(request, user), await _json(request)
        if space.hardware == "cpu-basic":
            raise HubError(400, "The sleep time of a Space on cpu-basic is 48 hours and cannot be changed")
        space.sleep_time = int(body["seconds"]) if body.get("seconds") is not None else None
        return JSONResponse(space.runtime())

    async def pause(self, request: Request, user: str | None) -> Response:
        space = self._space(request, user)
        self._kill(space)
        self._set_stage(space, "PAUSED")
        return JSONResponse(space.runtime())

    async def restart(self, request: Request, user: str | None) -> Response:
        space = self._space(request, user)
        self._rebuild(space)
        return JSONResponse(space.runtime())

    async def logs(self, request: Request, user: str | None) -> Response:
        space, which = self._space(request, user), request.path_params["which"]
        if which not in ("build", "run"):
            raise HubError(404, "Not Found")
        events = space.build_log if which == "build" else space.run_log

        def live() -> bool:
            return space.stage == "BUILDING" if which == "build" else space.stage in BILLED_STAGES

        async def stream():
            sent = 0
            while True:
                while sent < len(events):
                    at, line = events[sent]
                    # Whole seconds: a no-follow client stops at the first event after the Date header + 1 s,
                    # and uvicorn's Date may lag the clock by up to a second.
                    yield f"data: {json.dumps({'data': line, 'timestamp': _now_iso(int(at))})}\n\n"
                    sent += 1
                if not live():
                    return
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def hardware_list(self, request: Request, user: str | None) -> Response:
        out = []
        for name, (pretty, count, model, vram, price) in HARDWARE.items():
            per_minute = price / 60.0
            out.append({"name": name, "prettyName": pretty, "cpu": "8 vCPU" if count else "2 vCPU",
                        "ram": "30 GB" if count else "16 GB", "ephemeralStorage": "50 GB",
                        "accelerator": {"type": "gpu", "model": model, "quantity": str(count), "vram": f"{vram} GB",
                                        "manufacturer": "Nvidia"} if count else None,
                        "unitCostMicroUSD": round(per_minute * 1e6), "unitCostUSD": round(per_minute, 8),
                        "unitLabel": "minute"})
        return JSONResponse(out)

    # The Space's container --------------------------------------------------------------------------------

    def _set_stage(self, space: Space, stage: str, error: str | None = None) -> None:
        now = time.time()
        if space.billed_since is not None:
            space.billed_s += now - space.billed_since
            space.cost_usd += space.price * (now - space.billed_since) / 3600.0
        space.billed_since = now if stage in BILLED_STAGES and space.price > 0 else None
        space.stage, space.error_message = stage, error
        space.running_since = now if stage == "RUNNING" else None
        space.history.append((now, stage))

    def billed(self, space_id: str) -> tuple[float, float]:
        """Seconds billed and their cost in USD so far."""
        space = self.spaces[space_id]
        extra = time.time() - space.billed_since if space.billed_since is not None else 0.0
        return space.billed_s + extra, space.cost_usd + space.price * extra / 3600.0

    def _rebuild(self, space: Space, *, on_commit: bool = False) -> None:
        if on_commit and space.stage == "PAUSED":
            return
        self._kill(space)
        if "Dockerfile" not in space.repo.files and "README.md" not in space.repo.files:
            self._set_stage(space, "NO_APP_FILE")
            return
        space.build_log = [(time.time(), "===== Build Queued =====")]
        space.build_done_at = time.time() + self.build_s
        self._set_stage(space, "BUILDING")

    def _kill(self, space: Space) -> None:
        if space.process is not None:
            kill_group(space.process)
            space.process = None
        if space.machine_id:
            kill_machine(space.machine_id)

    async def _tick_forever(self) -> None:
        while True:
            for space in list(self.spaces.values()):
                try:
                    await self._advance(space)
                except Exception as exc:  # an emulator bug shows as the Space's error, never as a dead ticker
                    self._kill(space)
                    self._set_stage(space, "RUNTIME_ERROR", f"emulator: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.1)

    async def _advance(self, space: Space) -> None:
        now = time.time()
        self._read_run_log(space)
        if space.stage == "BUILDING" and now >= space.build_done_at:
            self._build_and_start(space)
        elif space.stage in BILLED_STAGES:
            code = space.process.poll() if space.process else -9
            if code is not None:
                self._read_run_log(space)
                self._kill(space)
                self._set_stage(space, "RUNTIME_ERROR", f"Exit code: {code}. Reason: the app exited")
            elif space.stage == "APP_STARTING":
                if await _answers(space.port):
                    space.last_visit = now
                    self._set_stage(space, "RUNNING")
                elif now > space.start_deadline:
                    self._kill(space)
                    self._set_stage(space, "RUNTIME_ERROR", "Launch timed out, workload was not healthy after "
                                                            f"{self.app_start_timeout_s:.0f}s")
            else:
                kill_after = self.faults.kill_after_s
                if kill_after is not None and space.running_since and now - space.running_since >= kill_after:
                    self._kill(space)
                    self._set_stage(space, "RUNTIME_ERROR", "Exit code: 137. Reason: the container was killed")
                elif space.sleep_time and now - space.last_visit > space.sleep_time:
                    self._kill(space)
                    self._set_stage(space, "SLEEPING")

    def _build_and_start(self, space: Space) -> None:
        log = space.build_log

        def say(line: str) -> None:
            log.append((time.time(), line))

        try:
            card = front_matter(space.repo.files.get("README.md", b"").decode("utf-8", "replace"))
        except ValueError as exc:
            say(f"Configuration error: {exc}")
            self._set_stage(space, "CONFIG_ERROR", str(exc))
            return
        if not card or card.get("sdk") != "docker":
            self._set_stage(space, "CONFIG_ERROR", "Missing configuration in README: set sdk: docker in its YAML "
                                                   "block (https://huggingface.co/docs/hub/spaces-config-reference)")
            return
        if "Dockerfile" not in space.repo.files:
            self._set_stage(space, "NO_APP_FILE")
            return
        try:
            plan = self._plan(space.repo.files["Dockerfile"].decode("utf-8", "replace"), say)
        except ValueError as exc:
            say(f"ERROR: {exc}")
            self._set_stage(space, "BUILD_ERROR", "Build failed with exit code: 1")
            return
        if self.faults.build_error:
            say(f"ERROR: {self.faults.build_error}")
            self._set_stage(space, "BUILD_ERROR", "Build failed with exit code: 1")
            return
        say("===== Build succeeded =====")
        self._start(space, plan, int(card.get("app_port") or APP_PORT))

    def _plan(self, text: str, say) -> dict:
        """A Dockerfile as what the container runs; ValueError for what the emulator cannot build."""
        joined = text.replace("\\\n", " ")
        steps = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
        plan: dict = {"image": None, "workdir": "/", "env": {}, "copies": [], "cmd": None, "entrypoint": []}
        for number, step in enumerate(steps, 1):
            say(f"Step {number}/{len(steps)} : {step}")
            instruction, _, args = step.partition(" ")
            instruction, args = instruction.upper(), args.strip()
            if instruction not in DOCKER_INSTRUCTIONS:
                raise ValueError(f"the instruction {instruction} is not supported by this builder")
            if plan["image"] is None and instruction != "FROM":
                raise ValueError("the Dockerfile must start with FROM")
            if instruction == "FROM":
                image = self.images.get(args.split()[0])
                if image is None:
                    raise ValueError(f"failed to solve: {args.split()[0]}: not found")
                plan["image"] = image
            elif instruction == "WORKDIR":
                plan["workdir"] = str(PurePosixPath(plan["workdir"]) / args)
            elif instruction == "COPY":
                parts = [p for p in args.split() if not p.startswith("--")]
                if len(parts) < 2:
                    raise ValueError("COPY needs a source and a destination")
                plan["copies"].append((parts[:-1], str(PurePosixPath(plan["workdir"]) / parts[-1])))
            elif instruction == "ENV":
                plan["env"].update(_env_pairs(args))
            elif instruction in ("CMD", "ENTRYPOINT"):
                try:
                    argv = json.loads(args)
                except ValueError:
                    argv = None
                if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                    raise ValueError(f"{instruction} must be in JSON form (exec form) here")
                plan["cmd" if instruction == "CMD" else "entrypoint"] = argv
        if plan["image"] is None:
            raise ValueError("the Dockerfile has no FROM")
        return plan

    def _start(self, space: Space, plan: dict, app_port: int) -> None:
        root = space.folder / "root"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)

        def host(path: str) -> Path:
            return root / path.lstrip("/")

        for sources, dest in plan["copies"]:
            for source in sources:
                if source in (".", "./"):
                    for path, data in space.repo.files.items():
                        target = host(dest) / path
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data)
                elif source in space.repo.files:
                    target = host(dest) / PurePosixPath(source).name if dest.endswith("/") else host(dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(space.repo.files[source])
        image: MachineImage = plan["image"]
        argv = [*plan["entrypoint"], *(plan["cmd"] if plan["cmd"] is not None else image.cmd)]
        env = {k: str(host(v)) if v.startswith("/") else v for k, v in plan["env"].items()}
        owner, _, name = space.repo.id.partition("/")
        space.port, space.starts = _free_port(), space.starts + 1
        space.machine_id = f"hf-{owner}-{name}-{space.starts}"
        values = {k: v["value"] for k, v in space.variables.items()}
        env = machine_env(space.machine_id, image, self.stock, host("/home/user"),
                          {**env, **values, **space.secrets, "PORT": str(space.port), "SPACE_ID": space.repo.id,
                           "SPACE_AUTHOR_NAME": owner, "SPACE_REPO_NAME": name, "SYSTEM": "spaces",
                           "SPACE_HOST": f"{owner}-{name}.hf.space".lower(), "APP_PORT": str(app_port)})
        host("/home/user").mkdir(parents=True, exist_ok=True)
        log_path = space.folder / "container.log"
        log_path.unlink(missing_ok=True)
        space.run_log, space.run_log_offset = [], 0
        self._set_stage(space, "APP_STARTING")
        space.start_deadline = time.time() + self.app_start_timeout_s
        try:
            space.process = spawn(argv, env, host(plan["workdir"]), log_path)
        except OSError as exc:
            self._set_stage(space, "RUNTIME_ERROR", f"Exit code: 127. Reason: exec: {exc}")

    def _read_run_log(self, space: Space) -> None:
        path = space.folder / "container.log"
        try:
            with open(path, "rb") as f:
                f.seek(space.run_log_offset)
                chunk = f.read()
        except OSError:
            return
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            return
        space.run_log_offset += cut
        now = time.time()
        space.run_log.extend((now, line.decode("utf-8", "replace") + "\n") for line in chunk[:cut].splitlines())

    def _base(self, request: Request) -> str:
        return self.url or str(request.base_url).rstrip("/")


async def _answers(port: int) -> bool:
    """An HTTP GET on the app's port answers, as the Hub's health check needs."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 1.0)
        return line.startswith(b"HTTP/")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


def _env_key(key) -> str:
    key = str(key or "")
    if not key or not (key[0].isalpha() or key[0] == "_") or not all(c.isalnum() or c == "_" for c in key):
        raise HubError(400, f"Invalid key {key!r}: letters, digits and underscores, not starting with a digit")
    return key


def _env_pairs(args: str) -> dict[str, str]:
    import shlex

    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def _repo_id(request: Request) -> str:
    return f"{request.path_params['ns']}/{request.path_params['name']}"


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError as exc:
        raise HubError(400, "The body must be JSON") from exc
    if not isinstance(body, dict):
        raise HubError(400, "The body must be a JSON object")
    return body


def _error(exc: HubError, headers: dict | None = None) -> Response:
    out = {"X-Error-Message": exc.message, **(headers or {})}
    if exc.code:
        out["X-Error-Code"] = exc.code
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=out)
