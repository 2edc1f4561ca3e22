"""An emulator of Kaggle's wire API (kernels, datasets, blob uploads, token introspection), at least as strict as
Kaggle where that hurts.

Reached through ``KAGGLE_API_BASE_URL`` (the client's LOCALHOST endpoint, pointed here). Every call is ``POST
/api/v1/{service}/{Method}`` with a camelCase JSON body; errors are ``{"code", "message"}`` with that HTTP status;
push problems are answered 200 with ``error`` set. Auth is HTTP Basic (username and key) or Bearer (the same key
used as an API token), per account: another account's private kernel or dataset is denied (403), an absent one
is 404. As on Kaggle:

* a pushed kernel (a new version per push; ``QUICK_SAVE`` saves without running) is QUEUED for ``queue_s``, then
  RUNNING while its script runs, then COMPLETE on exit 0 or ERROR with a ``failureMessage`` (a non-zero exit, or
  ``sessionTimeoutSeconds``, default 12 h, passing: the process is killed);
* its script runs on a stock machine (the RunPod stock image's Python 3.11 with pip and torch, standing in for
  Kaggle's image; no TuneFleet) in a mount namespace of its own where the attached datasets are bind-mounted
  read-only at ``/kaggle/input/<slug>``, the session's output folder at ``/kaggle/working`` and a ``/tmp`` of
  its own; with internet off
  also in a network namespace of its own (nothing reachable, and no package sources configured). Without
  ``unshare`` the session ends ERROR: it never runs unisolated;
* a new kernel takes the slug its title resolves to (``slugify(newTitle)``), whatever ``slug`` asked for;
* output files and the log are listed only once the session has ended, 20 files a page with a page token, each
  with a URL fetched by a plain unauthenticated GET; the log is a JSON array of ``{stream_name, time, data}``;
* an uploaded ``.zip`` of a dataset is unpacked into a folder named after it (Kaggle unpacks archives).

Faults (``.faults``): kernels queued for ever, the next run killed mid-run (ERROR with a failure message), an
exhausted weekly GPU quota (a push with ``enableGpu`` answers Kaggle's error), HTTP 500s.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from slugify import slugify
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .machines import MachineImage, StockImages, kill_group, kill_machine, machine_env

#: Kaggle's message for a push that needs GPU time the account no longer has this week.
GPU_QUOTA_ERROR = ("You have exceeded your weekly GPU quota of 30 hours. Your quota resets on Saturday at 00:00 UTC; "
                   "save your notebook with the accelerator turned off to keep working.")
DEFAULT_SESSION_TIMEOUT_S = 12 * 3600
MACHINE_SHAPES = frozenset({"NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "NvidiaL4X1", "NvidiaH100", "TpuV5E8",
                            "TpuV6E8", "Tpu1VmV38"})
PAGE_SIZE = 20
MOUNTS = (Path("/kaggle/input"), Path("/kaggle/working"), Path("/kaggle/src"))
#: Runs inside the kernel's new mount namespace (argv only): bind the session's folders onto /kaggle (the inputs
#: and the script read-only) and a /tmp of its own, then exec the stock image's Python on the script.
MOUNT_HELPER = r"""
import os, subprocess, sys
mount, session, python = sys.argv[1:4]
datasets = sys.argv[4:]
def run(*argv):
    subprocess.run(argv, check=True)
def bind(source, target, read_only=False):
    run(mount, "--bind", source, target)
    if read_only:
        run(mount, "-o", "remount,bind,ro", target)
run(mount, "--bind", os.path.join(session, "input"), "/kaggle/input")
for folder, slug in zip(datasets[::2], datasets[1::2]):
    bind(folder, os.path.join("/kaggle/input", slug), read_only=True)
run(mount, "-o", "remount,bind,ro", "/kaggle/input")
bind(os.path.join(session, "working"), "/kaggle/working")
bind(os.path.join(session, "src"), "/kaggle/src", read_only=True)
bind(os.path.join(session, "tmp"), "/tmp")
os.chdir("/kaggle/working")
os.execv(python, [python, "/kaggle/src/script.py"])
"""


@dataclass
class Faults:
    queued_forever: bool = False
    kill_next_run_after_s: float | None = None   # the next session that runs is killed this long after it starts
    kill_message: str = "Your notebook tried to allocate more memory than is available. It has restarted."
    gpu_quota_exhausted: bool = False
    http_errors: int = 0                          # answer the next N calls with 500


@dataclass
class Dataset:
    owner: str
    slug: str
    title: str
    folder: Path
    is_private: bool
    files: list[str] = field(default_factory=list)
    ready_at: float = 0.0

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def ready(self) -> bool:
        return time.time() >= self.ready_at


@dataclass
class Session:
    version: int
    request: dict
    folder: Path
    status: str = "QUEUED"
    failure_message: str = ""
    runs: bool = True
    created: float = field(default_factory=time.time)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float | None = None
    ended_at: float | None = None
    killed: str = ""

    @property
    def ended(self) -> bool:
        return self.status in ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")


@dataclass
class Kernel:
    owner: str
    slug: str
    title: str
    is_private: bool
    sessions: list[Session] = field(default_factory=list)
    deleted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def latest(self) -> Session:
        return self.sessions[-1]


class KaggleError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class KaggleEmulator:
    def __init__(self, workdir: Path, accounts: dict[str, str], *, stock: StockImages, queue_s: float = 2.0,
                 dataset_processing_s: float = 1.0):
        #: A new dataset is processed for this long (as Kaggle does, asynchronously) before it is READY; a kernel
        #: pushed before then cannot attach it.
        self.dataset_processing_s = dataset_processing_s
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.accounts = accounts  # username → key; the same key is also the account's API token
        self.stock = stock
        self.queue_s = queue_s
        self.faults = Faults()
        self.url = ""
        self.kernels: dict[tuple[str, str], Kernel] = {}
        self.deleted_kernels: list[Kernel] = []
        self.datasets: dict[tuple[str, str], Dataset] = {}
        self.uploads: dict[str, dict] = {}
        #: (username, service/method, body) of every authenticated call, for tests to inspect.
        self.requests: list[tuple[str, str, dict]] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.image = MachineImage("kaggle-python", stock.runpod / "bin")
        self.isolation = _isolation()
        self.app = Starlette(routes=[
            Route("/api/v1/{service}/{method}", self.rpc, methods=["POST"]),
            Route("/api/v1/kernels/logs/stream/{owner}/{slug}", self.log_stream, methods=["GET"]),
            Route("/upload/{token}", self.upload, methods=["PUT"]),
            Route("/output/{token}/{path:path}", self.output_file, methods=["GET"]),
        ])

    # Inspection -----------------------------------------------------------------------------------------

    def kernel(self, owner: str, slug: str) -> Kernel | None:
        return self.kernels.get((owner, slug))

    def pushed(self) -> list[dict]:
        """Every SaveKernel request body received (kernel text and metadata), oldest first."""
        return [body for _, method, body in self.requests if method == "kernels.KernelsApiService/SaveKernel"]

    # Auth -----------------------------------------------------------------------------------------------

    def _account(self, request: Request) -> str:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme == "Basic":
            try:
                user, _, key = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, key = "", ""
            if user and self.accounts.get(user) == key:
                return user
        elif scheme == "Bearer":
            user = self._token_user(value)
            if user:
                return user
        raise KaggleError(401, "Unauthenticated: a valid API key or token is required")

    def _token_user(self, token: str) -> str | None:
        return next((u for u, k in dict(self.accounts).items() if token and secrets.compare_digest(k, token)), None)

    # Routes ---------------------------------------------------------------------------------------------

    async def rpc(self, request: Request) -> Response:
        service, method = request.path_params["service"], request.path_params["method"]
        if self.faults.http_errors > 0:
            self.faults.http_errors -= 1
            return JSONResponse({"code": 500, "message": "Internal error encountered."}, status_code=500)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"code": 400, "message": "Invalid JSON payload received."}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"code": 400, "message": "Invalid JSON payload received."}, status_code=400)
        try:
            if (service, method) == ("security.OAuthService", "IntrospectToken"):
                user = self._token_user(str(body.get("token") or ""))
                return JSONResponse({"active": True, "username": user} if user else {})
            account = self._account(request)
            self.requests.append((account, f"{service}/{method}", body))
            handler = self.HANDLERS.get((service, method))
            if handler is None:
                raise KaggleError(404, f"Method {service}/{method} not found.")
            with self._lock:
                return JSONResponse(handler(self, account, body))
        except KaggleError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.code)

    async def upload(self, request: Request) -> Response:
        token = request.path_params["token"]
        pending = self.uploads.get(token)
        if pending is None or pending["done"]:
            return JSONResponse({"code": 404, "message": "Upload not found"}, status_code=404)
        data = await request.body()
        if len(data) != pending["length"]:
            return JSONResponse({"code": 400, "message": "Content length does not match the started upload"},
                                status_code=400)
        path = self.workdir / "blobs" / token
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        pending.update(done=True, path=path)
        return JSONResponse({})

    async def output_file(self, request: Request) -> Response:
        token, relative = request.path_params["token"], unquote(request.path_params["path"])
        session = next((s for k in [*self.kernels.values(), *self.deleted_kernels] for s in k.sessions
                        if s.token == token), None)
        if session is None or not session.ended:
            return Response("Not Found", status_code=404)
        root = (session.folder / "working").resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return Response("Not Found", status_code=404)
        return FileResponse(target)

    async def log_stream(self, request: Request) -> Response:
        try:
            account = self._account(request)
            kernel = self._own_kernel(account, request.path_params["owner"], request.path_params["slug"])
        except KaggleError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.code)
        return JSONResponse(_log_entries(kernel.latest) if kernel.latest.ended else [])

    # Kernels --------------------------------------------------------------------------------------------

    def _own_kernel(self, account: str, owner: str, slug: str) -> Kernel:
        kernel = self.kernels.get((owner or account, slug))
        if kernel is None:
            raise KaggleError(404, f"Kernel {owner}/{slug} not found")
        if kernel.owner != account and kernel.is_private:
            raise KaggleError(403, "Permission 'kernels.get' was denied")
        return kernel

    def save_kernel(self, account: str, body: dict) -> dict:
        ref = str(body.get("slug") or "")
        owner, _, slug = ref.rpartition("/")
        owner = owner or account
        if owner != account:
            raise KaggleError(403, "Permission 'kernels.create' was denied")
        if not body.get("text"):
            return {"error": "Kernel text must not be empty"}
        if body.get("language") not in ("python", "r", "rmarkdown"):
            return {"error": "Invalid language"}
        if body.get("kernelType") not in ("script", "notebook"):
            return {"error": "Invalid kernel type"}
        title = body.get("newTitle")
        if title is not None and len(title) < 5:
            return {"error": "Title must be at least five characters"}
        shape = body.get("machineShape")
        if shape and shape not in MACHINE_SHAPES:
            return {"error": f"Invalid machine shape: {shape}"}
        if body.get("enableGpu") and self.faults.gpu_quota_exhausted and body.get("kernelExecutionType") != \
                "QUICK_SAVE":
            return {"error": GPU_QUOTA_ERROR}
        existing = self.kernels.get((owner, slug))
        if existing is None:
            slug = slugify(title) if title else slug  # a new kernel is named by its title, as on Kaggle
            existing = self.kernels.get((owner, slug))
        if len(slug) < 5 or slug != slugify(slug):
            return {"error": f"Invalid kernel slug: {slug!r}"}
        sources, invalid = [], []
        for source in body.get("datasetDataSources") or []:
            d_owner, _, d_slug = str(source).partition("/")
            dataset = self.datasets.get((d_owner, d_slug.split("/")[0]))
            visible = dataset and dataset.ready and (not dataset.is_private or dataset.owner == account)
            (sources if visible else invalid).append(source)
        invalid_models = list(body.get("modelDataSources") or [])  # no models are hosted here
        kernel = existing or Kernel(owner=owner, slug=slug, title=title or slug,
                                    is_private=bool(body.get("isPrivate", False)))
        self.kernels[(owner, slug)] = kernel
        if title:
            kernel.title = title
        version = len(kernel.sessions) + 1
        folder = self.workdir / "kernels" / owner / slug / f"v{version}"
        (folder / "working").mkdir(parents=True)
        (folder / "input").mkdir()
        for source in sources:
            d_owner, _, d_slug = source.partition("/")
            (folder / "input" / d_slug.split("/")[0]).mkdir(exist_ok=True)
        (folder / "src").mkdir()
        (folder / "tmp").mkdir()
        (folder / "src" / "script.py").write_text(body["text"], encoding="utf-8")
        runs = body.get("kernelExecutionType") != "QUICK_SAVE"
        session = Session(version=version, request={**body, "datasetDataSources": sources}, folder=folder, runs=runs,
                          status="QUEUED" if runs else "COMPLETE")
        if not runs:
            session.ended_at = time.time()
        kernel.sessions.append(session)
        if runs:
            threading.Thread(target=self._run, args=(kernel, session), daemon=True).start()
        return {"ref": f"/code/{kernel.ref}", "url": f"{self.url}/code/{kernel.ref}", "versionNumber": version,
                "kernelId": next(self._ids), "invalidDatasetSources": invalid, "invalidModelSources": invalid_models}

    def get_status(self, account: str, body: dict) -> dict:
        kernel = self._own_kernel(account, body.get("userName", ""), body.get("kernelSlug", ""))
        session = self._session(kernel, body.get("versionLabel"))
        answer = {"status": session.status}
        if session.failure_message:
            answer["failureMessage"] = session.failure_message
        return answer

    def list_output(self, account: str, body: dict) -> dict:
        kernel = self._own_kernel(account, body.get("userName", ""), body.get("kernelSlug", ""))
        session = self._session(kernel, body.get("versionLabel"))
        if not session.ended:
            return {}
        root = session.folder / "working"
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        size = min(int(body.get("pageSize") or PAGE_SIZE), PAGE_SIZE)
        start = _page_start(body)
        page = names[start:start + size]
        answer: dict[str, Any] = {"files": [{"fileName": n, "url": f"{self.url}/output/{session.token}/{quote(n)}"}
                                            for n in page]}
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        log = json.dumps(_log_entries(session))
        if log != "[]" and start == 0:
            answer["log"] = log
        return answer

    def delete_kernel(self, account: str, body: dict) -> dict:
        kernel = self._own_kernel(account, body.get("userName", ""), body.get("kernelSlug", ""))
        if kernel.owner != account:
            raise KaggleError(403, "Permission 'kernels.delete' was denied")
        del self.kernels[(kernel.owner, kernel.slug)]
        kernel.deleted = True
        self.deleted_kernels.append(kernel)
        for session in kernel.sessions:
            if not session.ended:
                session.killed = "The kernel was deleted"
                self._stop(session)
        return {}

    def list_kernels(self, account: str, body: dict) -> dict:
        mine = body.get("group") == "PROFILE"
        user = body.get("user") or (account if mine else "")
        search = (body.get("search") or "").lower()
        found = sorted((k for k in self.kernels.values()
                        if (not user or k.owner == user) and (not k.is_private or k.owner == account)
                        and (search in k.slug or search in k.title.lower())), key=lambda k: k.slug)
        size = min(int(body.get("pageSize") or PAGE_SIZE), 100)
        start = _page_start(body)
        answer: dict[str, Any] = {"kernels": [
            {"ref": k.ref, "title": k.title, "author": k.owner, "slug": k.slug, "isPrivate": k.is_private,
             "currentVersionNumber": len(k.sessions)} for k in found[start:start + size]]}
        if start + size < len(found):
            answer["nextPageToken"] = str(start + size)
        return answer

    @staticmethod
    def _session(kernel: Kernel, label: str | None) -> Session:
        if not label:
            return kernel.latest
        number = label[1:] if label.startswith("v") else ""
        if not number.isdigit() or not 1 <= int(number) <= len(kernel.sessions):
            raise KaggleError(404, f"Kernel version {label} not found")
        return kernel.sessions[int(number) - 1]

    # Running a session ----------------------------------------------------------------------------------

    def _run(self, kernel: Kernel, session: Session) -> None:
        while self.faults.queued_forever or time.time() < session.created + self.queue_s:
            if kernel.deleted:
                return
            time.sleep(0.1)
        with self._lock:
            if kernel.deleted:
                return
            if self.isolation:
                session.status, session.failure_message = "ERROR", self.isolation
                session.ended_at = time.time()
                return
            session.status, session.started_at = "RUNNING", time.time()
            try:
                session.process = self._spawn(kernel, session)
            except OSError as exc:
                session.status, session.ended_at = "ERROR", time.time()
                session.failure_message = f"The kernel could not be started: {exc}"
                return
            kill_after = self.faults.kill_next_run_after_s
            self.faults.kill_next_run_after_s = None
        timeout = float(session.request.get("sessionTimeoutSeconds") or DEFAULT_SESSION_TIMEOUT_S)
        deadline = session.started_at + timeout
        while session.process.poll() is None:
            now = time.time()
            if kill_after is not None and now >= session.started_at + kill_after:
                session.killed = self.faults.kill_message
                self._stop(session)
            elif now >= deadline:
                session.killed = f"Your notebook exceeded the session time limit of {timeout:.0f} seconds."
                self._stop(session)
            time.sleep(0.1)
        code = session.process.wait()
        with self._lock:
            if session.killed:
                session.status, session.failure_message = "ERROR", session.killed
            elif code == 0:
                session.status = "COMPLETE"
            else:
                session.status = "ERROR"
                session.failure_message = f"Your notebook hit an unhandled error while executing (exit code {code})."
            session.ended_at = time.time()

    def _spawn(self, kernel: Kernel, session: Session) -> subprocess.Popen:
        body = session.request
        internet = bool(body.get("enableInternet", False))
        machine_id = f"kaggle-{kernel.owner}-{kernel.slug}-v{session.version}"
        env = machine_env(machine_id, self.image, self.stock, Path("/tmp"),  # the kernel's own /tmp
                          {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_URL_BASE": "https://www.kaggle.com"})
        if not internet:  # no index, no wheels on this disk: the kernel has only its inputs
            env = {k: v for k, v in env.items() if not k.startswith("PIP_") or k == "PIP_CACHE_DIR"}
            env["PIP_CONFIG_FILE"] = os.devnull
        datasets = []
        for source in body.get("datasetDataSources") or []:
            owner, _, slug = source.partition("/")
            dataset = self.datasets.get((owner, slug.split("/")[0]))
            if dataset is not None:  # deleted since the push: its mountpoint stays empty
                datasets += [str(dataset.folder), dataset.slug]
        python = str(self.image.bin_dir / "python3")
        namespaces = ["--mount", "--propagation", "private", *([] if internet else ["--net"])]
        argv = [shutil.which("unshare") or "unshare", *namespaces, "--", sys.executable, "-I", "-c", MOUNT_HELPER,
                shutil.which("mount") or "mount", str(session.folder), python, *datasets]
        with open(session.folder / "stdout.log", "ab") as out, open(session.folder / "stderr.log", "ab") as err:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    cwd=session.folder, start_new_session=True)

    def _stop(self, session: Session) -> None:
        if session.process is not None:
            kill_group(session.process)
        elif not session.ended:
            session.status, session.failure_message = "CANCEL_ACKNOWLEDGED", session.killed
            session.ended_at = time.time()

    def running_processes(self) -> list:
        return [s.process for k in [*self.kernels.values(), *self.deleted_kernels] for s in k.sessions
                if s.process is not None and s.process.poll() is None]

    def close(self) -> None:
        for kernel in [*self.kernels.values(), *self.deleted_kernels]:
            for session in kernel.sessions:
                if session.process is not None:
                    kill_group(session.process)
                    kill_machine(f"kaggle-{kernel.owner}-{kernel.slug}-v{session.version}")

    # Datasets and blobs ---------------------------------------------------------------------------------

    def start_blob_upload(self, account: str, body: dict) -> dict:
        if body.get("type") not in ("DATASET", None):
            raise KaggleError(400, "Unsupported blob type")
        name = str(body.get("name") or "")
        if not name or "/" in name or name in (".", ".."):
            raise KaggleError(400, "Invalid file name")
        token = secrets.token_urlsafe(18)
        self.uploads[token] = {"account": account, "name": name, "length": int(body.get("contentLength") or 0),
                               "done": False}
        return {"token": token, "createUrl": f"{self.url}/upload/{token}"}

    def create_dataset(self, account: str, body: dict) -> dict:
        owner, slug, title = body.get("ownerSlug") or account, str(body.get("slug") or ""), body.get("title") or ""
        if owner != account:
            raise KaggleError(403, "Permission 'datasets.create' was denied")
        if not 6 <= len(slug) <= 50 or slug != slugify(slug):
            return {"status": "error", "error": f"Invalid dataset slug: {slug!r}"}
        if not 6 <= len(title) <= 50:
            return {"status": "error", "error": "The dataset title must be between 6 and 50 characters"}
        if (owner, slug) in self.datasets:
            return {"status": "error", "error": f'The requested slug "{slug}" is already in use by a dataset.'}
        uploads = []
        for item in body.get("files") or []:
            pending = self.uploads.get(str(item.get("token") or ""))
            if pending is None or pending["account"] != account or not pending["done"]:
                return {"status": "error", "error": "A file upload was not completed"}
            uploads.append(pending)
        if not uploads:
            return {"status": "error", "error": "A dataset needs at least one file"}
        folder = self.workdir / "datasets" / owner / slug
        folder.mkdir(parents=True)
        for pending in uploads:
            target = folder / pending["name"]
            if target.suffix == ".zip":  # Kaggle unpacks archives into a folder of that name
                _unzip(pending["path"], folder / target.stem)
            else:
                shutil.copyfile(pending["path"], target)
        dataset = Dataset(owner=owner, slug=slug, title=title, folder=folder,
                          is_private=bool(body.get("isPrivate", False)),
                          files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                          ready_at=time.time() + self.dataset_processing_s)
        self.datasets[(owner, slug)] = dataset
        return {"ref": dataset.ref, "url": f"{self.url}/datasets/{dataset.ref}", "status": "ok"}

    def _dataset(self, account: str, body: dict) -> Dataset:
        dataset = self.datasets.get((body.get("ownerSlug") or account, body.get("datasetSlug") or ""))
        if dataset is None:
            raise KaggleError(404, "Dataset not found")
        if dataset.is_private and dataset.owner != account:
            raise KaggleError(403, "Permission 'datasets.get' was denied")
        return dataset

    def dataset_status(self, account: str, body: dict) -> dict:
        return {"status": "READY" if self._dataset(account, body).ready else "BLOBS_RECEIVED"}

    def delete_dataset(self, account: str, body: dict) -> dict:
        dataset = self._dataset(account, body)
        if dataset.owner != account:
            raise KaggleError(403, "Permission 'datasets.delete' was denied")
        del self.datasets[(dataset.owner, dataset.slug)]
        return {}

    def list_datasets(self, account: str, body: dict) -> dict:
        mine = body.get("group") in ("DATASET_SELECTION_GROUP_MY", "DATASET_SELECTION_GROUP_MY_PRIVATE")
        search = (body.get("search") or "").lower()
        found = sorted((d for d in self.datasets.values() if (d.owner == account if mine else not d.is_private)
                        and (search in d.slug or search in d.title.lower())), key=lambda d: d.slug)
        size = min(int(body.get("pageSize") or PAGE_SIZE), 100)
        start = _page_start(body)
        answer: dict[str, Any] = {"datasets": [{"ref": d.ref, "title": d.title, "isPrivate": d.is_private,
                                                "ownerRef": d.owner} for d in found[start:start + size]]}
        if start + size < len(found):
            answer["nextPageToken"] = str(start + size)
        return answer

    HANDLERS = {
        ("kernels.KernelsApiService", "SaveKernel"): save_kernel,
        ("kernels.KernelsApiService", "GetKernelSessionStatus"): get_status,
        ("kernels.KernelsApiService", "ListKernelSessionOutput"): list_output,
        ("kernels.KernelsApiService", "DeleteKernel"): delete_kernel,
        ("kernels.KernelsApiService", "ListKernels"): list_kernels,
        ("blobs.BlobApiService", "StartBlobUpload"): start_blob_upload,
        ("datasets.DatasetApiService", "CreateDataset"): create_dataset,
        ("datasets.DatasetApiService", "GetDatasetStatus"): dataset_status,
        ("datasets.DatasetApiService", "DeleteDataset"): delete_dataset,
        ("datasets.DatasetApiService", "ListDatasets"): list_datasets,
    }


def _log_entries(session: Session) -> list[dict]:
    """The session's log as Kaggle lists it: one entry per line, stdout then stderr."""
    entries = []
    for stream in ("stdout", "stderr"):
        path = session.folder / f"{stream}.log"
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
                entries.append({"stream_name": stream, "time": round((session.ended_at or 0) - (session.started_at
                                                                                                or 0), 3),
                                "data": line})
    return entries


def _page_start(body: dict) -> int:
    token = str(body.get("pageToken") or "0")
    if not token.isdigit():
        raise KaggleError(400, "Invalid page token")
    return int(token)


def _unzip(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (into / member.filename).resolve()
            if not target.is_relative_to(root):
                raise KaggleError(400, f"Unsafe path in archive: {member.filename}")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def _isolation() -> str:
    """Why kernels cannot be isolated here ("" when they can): unshare and root are needed, and the empty
    mountpoints /kaggle/input, /kaggle/working and /kaggle/src (made once)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "The emulator cannot isolate the kernel: unshare(1) and mount(8) are needed"
    with contextlib.suppress(OSError):
        for mount in MOUNTS:
            mount.mkdir(parents=True, exist_ok=True)
    if not all(m.is_dir() for m in MOUNTS):
        return "The emulator cannot isolate the kernel: it cannot create its mountpoints under /kaggle"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--net", "true"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        return ("The emulator cannot isolate the kernel: unshare --mount --net failed "
                f"({probe.stderr.decode(errors='replace').strip()[:200]})")
    return ""

