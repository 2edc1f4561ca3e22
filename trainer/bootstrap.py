"""The bootstrap of a remote workload: takes a stock machine (Python, pip, maybe CUDA torch) to a running trainer.

It travels in the job bundle and runs as ``python bootstrap.py`` on whatever Python the image has (3.8 or newer,
standard library only): on RunPod the pod's fixed start command (``START_ARGV``) fetches the bundle and runs it;
on Lambda the provider uploads the bundle over SFTP and starts it over SSH. Its inputs are data, read from the
environment and from ``env.json`` beside it, never spliced into shell text:

* ``TUNEFLEET_HEARTBEAT_URL``: signed PUT of ``{stage, progress, log}`` every few seconds (optional), ``log``
  being the log's next bytes: the server keeps the whole log (``Heartbeat``).
* ``TUNEFLEET_ARTIFACTS_URL``: signed PUT of the output folder as tar.gz once it ends (optional: without it the
  output stays on the machine for the provider to fetch).
* ``TUNEFLEET_ARTIFACTS_PARTS_URL`` and ``TUNEFLEET_ARTIFACTS_PART_BYTES``: on a server whose store is a bucket, an
  output larger than the part size is sent as a multipart upload instead (``send_in_parts``), each part retried.
* ``TUNEFLEET_RESUME_URL``: signed GET of a checkpoint tar.gz to resume from (optional).
* ``TUNEFLEET_VENV_DIR``: where the trainer's venv goes (default ``./venv``); a venv that already holds this build
  is reused, so a restarted container does not install twice.
* ``TUNEFLEET_PYTHON_URL`` and ``TUNEFLEET_PYTHON_SHA256``: a CPython 3.11+ archive (python-build-standalone
  layout) for images whose Python is older; the default is the pinned build in ``PYTHON_BUILDS``.
* ``TUNEFLEET_WHEELHOUSE``: a folder of wheels (relative to the job folder, or absolute) holding the trainer's
  requirements, for a machine without internet (a Kaggle kernel with internet off): pip installs from it alone.
* ``TUNEFLEET_HOLD_AFTER_EXIT=1``: keep running after the end, for platforms that restart exited containers; the
  provider terminates the machine once it has the end report.

Steps: find a Python 3.11+ (the image's, another on PATH, or the pinned download); use the image's trainer when
it is this very build (detected by ``tree_hash``), else make a venv that sees the image's packages (its CUDA
torch) and install the trainer wheel with its pinned requirements; fetch the resume checkpoint; run
``python -m trainer --spec spec.json``; make sure ``output/result.json`` exists (a failure of any step becomes a
failed result with the reason and the log tail); send the output; report the end. It never ends in a way a
platform would restart: every failure is reported, then it holds or exits as asked.

Files: ``output/train.log`` (everything: these steps, pip, the trainer), ``output/result.json``,
``output/progress.json`` (the trainer's), and ``ended`` (the trainer's exit code) once all is done.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.error
import urllib.request

#: The fixed start command of a pod: fetch the bundle named by TUNEFLEET_BUNDLE_URL and run its bootstrap.py
#: with the image's Python. Fixed text: the job's data reaches it only through the environment.
START_SNIPPET = r"""
import io, os, sys, tarfile, time, urllib.request
work = os.environ.get("TUNEFLEET_WORKDIR") or os.path.abspath("tunefleet-job")
for n in range(8):
    try:
        data = urllib.request.urlopen(os.environ["TUNEFLEET_BUNDLE_URL"], timeout=120).read()
        break
    except Exception as exc:
        print("[bootstrap] fetching the bundle failed: %s: %s" % (type(exc).__name__, exc), flush=True)
        time.sleep(min(2 ** n, 30))
else:
    sys.exit("[bootstrap] could not fetch the bundle")
os.makedirs(work, exist_ok=True)
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
os.chdir(work)
os.execv(sys.executable, [sys.executable, "bootstrap.py"])
"""
#: ``bash -c START_SCRIPT START_SNIPPET``: the image's ``python3`` (or ``python``) runs the snippet.
START_SCRIPT = 'exec "$(command -v python3 || command -v python)" -c "$0"'
START_ARGV = ["bash", "-c", START_SCRIPT, START_SNIPPET]

#: python-build-standalone CPython 3.11.10 (release 20240909), install_only_stripped, with its published SHA-256.
PYTHON_BUILDS = {
    "x86_64": ("https://github.com/indygreg/python-build-standalone/releases/download/20240909/"
               "cpython-3.11.10%2B20240909-x86_64-unknown-linux-gnu-install_only_stripped.tar.gz",
               "2f8fdc87e8aab1f9f166575e3379d36abd0f7a87ea6c66c5e97e3aaadedd291d"),
    "aarch64": ("https://github.com/indygreg/python-build-standalone/releases/download/20240909/"
                "cpython-3.11.10%2B20240909-aarch64-unknown-linux-gnu-install_only_stripped.tar.gz",
                "7ac6ef4209153a1de211ab112ed318b4d702d6ca2655829ad6695d9523eaf47d"),
}
MIN_PYTHON = (3, 11)
PACKAGES = ("shared", "trainer")
HEARTBEAT_S = 5.0
LOG_TAIL_BYTES = 16000
#: The log's bytes one heartbeat carries at most (base64 in JSON: within the server's 128 KiB per heartbeat).
LOG_CHUNK_BYTES = 64 * 1024
#: Heartbeats sent back to back while the log is behind (a burst of output); the last one sends all of it.
LOG_CHUNKS_PER_BEAT = 8
LOG_CHUNKS_AT_END = 256
HTTP_ATTEMPTS = 8
#: Part URLs asked for per request of a multipart upload (the gateway signs at most 100 at once).
SIGN_BATCH = 100


class BootstrapFailed(Exception):
    """A step failed; the message says which and why, for the job's reason."""


def tree_hash(package_dirs):
    """SHA-256 over the ``.py`` files of ``{package name: folder}``: what the trainer wheel holds. The server
    computes it over the files it packs, and a machine over the files its Python imports."""
    digest = hashlib.sha256()
    for name in sorted(package_dirs):
        root = package_dirs[name]
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for filename in sorted(files):
                if filename.endswith(".py"):
                    path = os.path.join(folder, filename)
                    rel = name + "/" + os.path.relpath(path, root).replace(os.sep, "/")
                    with open(path, "rb") as f:
                        digest.update(rel.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def installed_hash():
    """The tree hash of the trainer this Python imports, or "" when it has none."""
    import importlib.util

    dirs = {}
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            return ""
        dirs[name] = next(iter(spec.submodule_search_locations))
    return tree_hash(dirs)


class Log:
    """Appends to ``output/train.log`` and echoes bootstrap lines to stdout (the container's log)."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process

    def say(self, text):
        line = f"[bootstrap] {time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        self.file.write((line + "\n").encode("utf-8", "replace"))

    def size(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def read_from(self, offset, size, final=False):
        """At most ``size`` bytes from ``offset``, up to the last complete line (all of them with ``final``, or
        when a line is longer than ``size``)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError:
            return b""
        if final and len(data) < size:
            return data
        cut = data.rfind(b"\n") + 1
        return data if cut == 0 and len(data) == size else data[:cut]

    def tail(self, size=LOG_TAIL_BYTES):
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _request(method, url, body=None, headers=None, timeout=120.0):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def with_retries(log, what, call):
    """Retry network trouble, 429 and 5xx with back-off; give up with BootstrapFailed."""
    last = ""
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            return call()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                body = exc.read()[:300].decode("utf-8", "replace")
                raise BootstrapFailed(f"{what}: HTTP {exc.code} {body}") from exc
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        log.say(f"{what} failed ({last}); retrying")
        time.sleep(min(2 ** attempt, 30))
    raise BootstrapFailed(f"{what} failed after {HTTP_ATTEMPTS} attempts ({last})")


def _post_json(url, body):
    answer = _request("POST", url, json.dumps(body).encode(), {"content-type": "application/json"}, timeout=60)
    return json.loads(answer or b"{}")


def _put_part(url, data):
    """One part's PUT to the bucket; the ETag it answers (the upload's completion names each part by it)."""
    request = urllib.request.Request(url, data=data, method="PUT", headers={"content-length": str(len(data))})
    with urllib.request.urlopen(request, timeout=900) as response:
        response.read()
        etag = response.headers.get("ETag")
    if not etag:
        raise BootstrapFailed("the bucket answered a part's PUT without an ETag")
    return etag


def send_in_parts(log, parts_url, path, size):
    """Send the file at ``path`` to the bucket as a multipart upload: the server (``parts_url``, a signed URL of
    the gateway) starts it, presigns each part's PUT and joins the parts; each part is read from disk and retried
    on its own, and a failed upload is aborted so the bucket keeps no orphan parts."""
    started = with_retries(log, "starting the output's upload", lambda: _post_json(
        parts_url, {"action": "start", "size": size}))
    upload_id, part_bytes = started["upload_id"], int(started["part_bytes"])
    count = max(1, -(-size // part_bytes))
    parts = []
    try:
        with open(path, "rb") as f:
            for first in range(1, count + 1, SIGN_BATCH):
                numbers = list(range(first, min(first + SIGN_BATCH, count + 1)))
                urls = with_retries(log, "signing the output's parts", functools.partial(
                    _post_json, parts_url, {"action": "sign", "upload_id": upload_id, "part_numbers": numbers}))["urls"]
                for number in numbers:
                    f.seek((number - 1) * part_bytes)
                    data = f.read(part_bytes)
                    etag = with_retries(log, f"sending part {number} of {count} of the output",
                                        functools.partial(_put_part, urls[str(number)], data))
                    parts.append({"part_number": number, "etag": etag})
        with_retries(log, "completing the output's upload", lambda: _post_json(
            parts_url, {"action": "complete", "upload_id": upload_id, "parts": parts}))
    except Exception:  # anything: the bucket keeps no orphan parts
        try:
            _post_json(parts_url, {"action": "abort", "upload_id": upload_id})
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.say(f"aborting the output's upload failed too ({exc})")
        raise
    log.say(f"the output was sent in {count} parts ({size / 2**20:.1f} MiB)")


def safe_extract(data_or_path, into):
    os.makedirs(into, exist_ok=True)
    source = {"fileobj": io.BytesIO(data_or_path)} if isinstance(data_or_path, bytes) else {"name": data_or_path}
    with tarfile.open(mode="r:*", **source) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
            return
        for member in tar.getmembers():  # Pythons without extraction filters
            target = os.path.realpath(os.path.join(into, member.name))
            if not target.startswith(os.path.realpath(into) + os.sep) or member.issym() or member.islnk():
                raise BootstrapFailed(f"unsafe path in archive: {member.name!r}")
        tar.extractall(into)


class Heartbeat(threading.Thread):
    """Sends the stage, the trainer's progress and the log now and then, for clouds without a logs API.

    The server keeps the whole log. Each beat carries the log's bytes from where the server's last answer said its
    copy ends (``log_offset``), so a lost beat or answer sends them again and the server keeps them once. The first
    answer also tells whether this file continues the server's copy (a container restarted on its volume: the file
    is at least as long) or is a new one (restarted without its disk): its bytes then go after the server's.
    """

    def __init__(self, url, log, progress_path):
        threading.Thread.__init__(self, daemon=True)
        self.url, self.log, self.progress_path = url, log, progress_path
        self.stage = "starting"
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.base = None  # the server's offset of this file's first byte, once its first answer came
        self.sent = 0  # bytes of this file the server has

    def _beat(self, final):
        """One PUT with the log's next bytes; True when more of the log is waiting."""
        try:
            with open(self.progress_path, encoding="utf-8") as f:
                progress = json.load(f)
        except (OSError, ValueError):
            progress = None
        chunk = b"" if self.base is None else self.log.read_from(self.sent, LOG_CHUNK_BYTES, final)
        log = {"offset": (self.base or 0) + self.sent, "data": base64.b64encode(chunk).decode("ascii")}
        body = json.dumps({"stage": self.stage, "progress": progress, "log": log}).encode()
        answer = json.loads(_request("PUT", self.url, body, {"content-type": "application/json"}, timeout=30))
        offset, size, first = int(answer["log_offset"]), self.log.size(), self.base is None
        if first:
            self.base = 0 if size >= offset else offset
        self.sent = min(max(offset - self.base, 0), size)
        return self.sent < size and (first or bool(chunk))

    def send(self, final=False):
        """Beat, and again at once while the log is behind; with ``final``, until the server has all of it."""
        if not self.url:
            return
        with self.lock:
            for _ in range(LOG_CHUNKS_AT_END if final else LOG_CHUNKS_PER_BEAT):
                try:
                    if not self._beat(final):
                        return
                except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
                    return  # the next beat sends it again

    def run(self):
        self.send()
        while not self.stopped.wait(HEARTBEAT_S):
            self.send()


class Bootstrap:
    def __init__(self, workdir, env):
        self.workdir, self.env = workdir, env
        self.output = os.path.join(workdir, "output")
        self.log = Log(os.path.join(self.output, "train.log"))
        self.heartbeat = Heartbeat(env.get("TUNEFLEET_HEARTBEAT_URL"), self.log,
                                   os.path.join(self.output, "progress.json"))
        with open(os.path.join(workdir, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.trainer = None

    def stage(self, name, text):
        self.heartbeat.stage = name
        self.log.say(text)

    # Python ------------------------------------------------------------------------------------------

    def python(self):
        """A Python 3.11+: this one, another on PATH with venv support, or the pinned download."""
        if sys.version_info >= MIN_PYTHON:
            return sys.executable
        for name in ("python3.13", "python3.12", "python3.11"):
            found = shutil.which(name)
            if found and subprocess.call([found, "-c", "import ensurepip, venv"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL) == 0:
                self.log.say(f"this image's python is {platform.python_version()}; using {found}")
                return found
        return self.fetch_python()

    def fetch_python(self):
        machine = platform.machine()
        url = self.env.get("TUNEFLEET_PYTHON_URL") or PYTHON_BUILDS.get(machine, ("", ""))[0]
        sha256 = self.env.get("TUNEFLEET_PYTHON_SHA256") or PYTHON_BUILDS.get(machine, ("", ""))[1]
        if not url or not sha256:
            raise BootstrapFailed(f"this image's python is {platform.python_version()} and no CPython 3.11 build is "
                                  f"known for {machine}; use an image with Python 3.11 or newer")
        home = os.path.join(os.path.expanduser("~"), ".cache", "tunefleet", "python-" + sha256[:16])
        python = os.path.join(home, "python", "bin", "python3")
        if os.path.exists(python):
            return python
        where = url.split("?")[0]
        self.stage("python", f"this image's python is {platform.python_version()} (TuneFleet's trainer needs "
                             f"3.11+): fetching CPython from {where}")
        data = with_retries(self.log, "downloading Python", lambda: _request("GET", url, timeout=600))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BootstrapFailed(f"the Python archive from {where} does not have the expected SHA-256")
        partial = home + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        safe_extract(data, partial)
        shutil.rmtree(home, ignore_errors=True)
        os.rename(partial, home)
        return python

    # Trainer -----------------------------------------------------------------------------------------

    def trainer_python(self, python):
        """The Python that runs the trainer: the image's own when it holds this build, else a venv with it."""
        wanted = self.manifest["trainer_hash"]
        if self._hash_of(python) == wanted:
            self.log.say(f"the image already has this trainer ({wanted[:12]}): nothing to install")
            return python
        venv = os.path.abspath(self.env.get("TUNEFLEET_VENV_DIR") or os.path.join(self.workdir, "venv"))
        venv_python = os.path.join(venv, "bin", "python")
        if os.path.exists(venv_python) and self._hash_of(venv_python) == wanted:
            self.log.say(f"reusing the trainer venv at {venv}")
            return venv_python
        self.stage("installing", f"installing the trainer {wanted[:12]} and its requirements into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        self._run([python, "-m", "venv", "--system-site-packages", venv], "creating the venv")
        wheel = os.path.join(self.workdir, self.manifest["wheel"])
        offline = []
        house = self.env.get("TUNEFLEET_WHEELHOUSE")
        if house and os.path.isdir(os.path.join(self.workdir, house)):  # no index reachable: the bundle's wheels
            offline = ["--no-index", "--find-links", os.path.join(self.workdir, house)]
        self._run([venv_python, "-m", "pip", "install", "--no-compile", "--disable-pip-version-check", "--no-input",
                   "--progress-bar", "off", *offline, wheel], "installing the trainer")
        if self._hash_of(venv_python) != wanted:
            raise BootstrapFailed(f"the trainer installed into {venv} is not the build in the bundle")
        return venv_python

    def _hash_of(self, python):
        try:
            out = subprocess.run([python, os.path.join(self.workdir, "bootstrap.py"), "--installed-hash"],
                                 capture_output=True, timeout=120, cwd="/")
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.decode().strip() if out.returncode == 0 else ""

    def _run(self, argv, what):
        self.log.say("$ " + " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv)))
        code = subprocess.call(argv, stdout=self.log.file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               cwd=self.workdir)
        if code != 0:
            raise BootstrapFailed(f"{what} failed with exit code {code}; the log ends:\n{self.log.tail(1500)}")

    def resume(self):
        url = self.env.get("TUNEFLEET_RESUME_URL")
        if not url:
            return
        self.stage("resuming", "fetching the checkpoint to resume from")
        try:
            data = with_retries(self.log, "fetching the checkpoint", lambda: _request("GET", url, timeout=1800))
            safe_extract(data, os.path.join(self.output, "checkpoints"))
        except (BootstrapFailed, tarfile.TarError, OSError) as exc:
            self.log.say(f"no checkpoint to resume from ({exc}): training starts at step 0")

    def train(self, python):
        self.stage("training", "starting the trainer")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # the Hugging Face libraries' usage reports, off
        self.trainer = subprocess.Popen([python, "-m", "trainer", "--spec", "spec.json"], cwd=self.workdir,
                                        env=env, stdout=self.log.file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        return self.trainer.wait()

    # End ---------------------------------------------------------------------------------------------

    def ensure_result(self, error_type, message):
        path = os.path.join(self.output, "result.json")
        if os.path.exists(path) and error_type is None:
            return
        body = {"status": "failed", "error_type": error_type or "TrainerExited",
                "error_message": message, "output_dir": "output"}
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.replace(path + ".tmp", path)

    def upload(self):
        url = self.env.get("TUNEFLEET_ARTIFACTS_URL")
        if not url:
            return
        self.stage("uploading", "sending the output")
        archive = os.path.join(self.workdir, "output.tar.gz")  # on disk: an output can be larger than memory
        try:
            with tarfile.open(archive, mode="w:gz") as tar:
                for name in sorted(os.listdir(self.output)):
                    if name != "checkpoints":
                        tar.add(os.path.join(self.output, name), arcname=name)
            size = os.path.getsize(archive)
            parts_url = self.env.get("TUNEFLEET_ARTIFACTS_PARTS_URL")
            if parts_url and size > int(self.env.get("TUNEFLEET_ARTIFACTS_PART_BYTES") or 0):
                send_in_parts(self.log, parts_url, archive, size)
            else:
                def put():
                    with open(archive, "rb") as f:
                        _request("PUT", url, f, {"content-type": "application/gzip", "content-length": str(size)},
                                 timeout=1800)
                with_retries(self.log, "sending the output", put)
        except (OSError, tarfile.TarError, ValueError, KeyError) as exc:  # a full disk, an answer not understood
            raise BootstrapFailed(f"sending the output failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if os.path.exists(archive):
                os.remove(archive)

    def run(self):
        self.heartbeat.start()
        signal.signal(signal.SIGTERM, self._forward)
        code, error_type, message = None, None, None
        try:
            python = self.trainer_python(self.python())
            self.resume()
            code = self.train(python)
            message = f"the trainer exited with code {code} without a result; the log ends:\n{self.log.tail(1500)}"
        except BootstrapFailed as exc:
            error_type, message = "BootstrapFailed", str(exc)
        except Exception as exc:  # a bug or an unexpected machine: still report it, never crash-loop
            error_type, message = "BootstrapFailed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if error_type:
            self.log.say(message)
        self.ensure_result(error_type, message)
        self.heartbeat.send(final=True)  # the whole log is with the server before the output that ends the job
        try:
            self.upload()
        except BootstrapFailed as exc:
            self.log.say(str(exc))
        self.stage("ended", f"done (trainer exit code {code})")
        self.heartbeat.stopped.set()
        self.heartbeat.send(final=True)
        with open(os.path.join(self.workdir, "ended.tmp"), "w") as f:
            f.write(str(code if code is not None else 1))
        os.replace(os.path.join(self.workdir, "ended.tmp"), os.path.join(self.workdir, "ended"))
        if self.env.get("TUNEFLEET_HOLD_AFTER_EXIT") == "1":
            while True:
                time.sleep(3600)
        return 1 if error_type is not None else (code or 0)

    def _forward(self, signum, frame):
        if self.trainer is not None and self.trainer.poll() is None:
            self.trainer.send_signal(signum)
        else:
            sys.exit(143)


def read_env(workdir):
    env = dict(os.environ)
    try:
        with open(os.path.join(workdir, "env.json"), encoding="utf-8") as f:
            env.update(json.load(f))
    except FileNotFoundError:
        pass
    return env


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--installed-hash"]:
        print(installed_hash())
        return 0
    workdir = os.path.dirname(os.path.abspath(__file__))
    return Bootstrap(workdir, read_env(workdir)).run()


if __name__ == "__main__":
    sys.exit(main())
