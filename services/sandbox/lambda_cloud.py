"""An emulator of Lambda Cloud's REST API (v1) and of its instances, each reached over real SSH.

Instances are folders on this machine behind one asyncssh server on loopback: a client is let in when it
authenticates with the key the instance was launched with, gets that instance's home as its working folder
and its SFTP root, and its commands run there as local processes. Faults: stuck booting, HTTP errors, a 429
storm, and a workload killed mid-run (the instance is gone, as when the host fails).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import psutil
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

INSTANCE_TYPES = {
    "gpu_1x_a10": {"description": "1x A10 (24 GB PCIe)", "price_cents_per_hour": 75, "gpus": 1},
    "gpu_1x_a100_sxm4": {"description": "1x A100 (40 GB SXM4)", "price_cents_per_hour": 129, "gpus": 1},
    "gpu_8x_h100_sxm5": {"description": "8x H100 (80 GB SXM5)", "price_cents_per_hour": 2392, "gpus": 8},
}
REGIONS = ["us-east-1", "us-west-1"]


@dataclass
class Faults:
    stuck_booting: bool = False
    http_errors: int = 0
    rate_limited: int = 0
    retry_after_s: float = 1.0
    no_capacity: bool = False


@dataclass
class Instance:
    id: str
    name: str
    type_name: str
    region: str
    ssh_key_names: list[str]
    home: Path
    created: float
    status: str = "booting"

    def as_json(self, ssh_port: int) -> dict:
        kind = INSTANCE_TYPES[self.type_name]
        active = self.status == "active"
        return {
            "id": self.id, "name": self.name, "status": self.status, "ssh_key_names": self.ssh_key_names,
            "file_system_names": [], "ip": "127.0.0.1" if active else None, "hostname": f"{self.id}.emulated",
            "region": {"name": self.region, "description": self.region},
            "instance_type": {"name": self.type_name, "description": kind["description"],
                              "price_cents_per_hour": kind["price_cents_per_hour"],
                              "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": kind["gpus"]}},
            "ssh_port": ssh_port,  # not in Lambda's API (always 22 there); the provider's settings say which
        }


def _key_blob(openssh: str) -> str:
    """The key type and base64 body of an OpenSSH public key, without its comment."""
    return " ".join(openssh.split()[:2])


class LambdaEmulator:
    def __init__(self, workdir: Path, api_keys: set[str], *, boot_delay_s: float = 0.5, ssh_port: int = 0):
        self.workdir, self.api_keys, self.boot_delay_s = workdir, api_keys, boot_delay_s
        self._wanted_ssh_port = ssh_port
        self.faults = Faults()
        self.instances: dict[str, Instance] = {}
        self.ssh_keys: dict[str, dict] = {}
        self.requests: list[str] = []
        self.ssh_port: int | None = None
        self._ssh_server = None
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        routes = [
            Route("/api/v1/instance-types", self.instance_types),
            Route("/api/v1/instances", self.list_instances),
            Route("/api/v1/instances/{id}", self.get_instance),
            Route("/api/v1/instance-operations/launch", self.launch, methods=["POST"]),
            Route("/api/v1/instance-operations/terminate", self.terminate, methods=["POST"]),
            Route("/api/v1/ssh-keys", self.list_keys),
            Route("/api/v1/ssh-keys", self.add_key, methods=["POST"]),
            Route("/api/v1/ssh-keys/{id}", self.delete_key, methods=["DELETE"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)
        self.app.add_middleware(_Gate, emulator=self)

    # Lifecycle ------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self._ssh_server = await asyncssh.listen(
            "127.0.0.1", self._wanted_ssh_port, server_host_keys=[self._host_key],
            server_factory=lambda: _SSHServer(self), process_factory=self._run_command, sftp_factory=self._sftp,
            allow_scp=False)
        self.ssh_port = self._ssh_server.sockets[0].getsockname()[1]
        ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            self._ssh_server.close()
            for instance in self.instances.values():
                self._kill_processes(instance)

    async def _tick(self) -> None:
        while True:
            for instance in list(self.instances.values()):
                booted = time.time() - instance.created >= self.boot_delay_s and not self.faults.stuck_booting
                if instance.status == "booting" and booted:
                    instance.status = "active"
            await asyncio.sleep(0.1)

    def _kill_processes(self, instance: Instance) -> None:
        for proc in self.running_processes(instance):
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def kill_workload(self, instance_id: str) -> None:
        """The host failed: the instance and everything on it are gone."""
        instance = self.instances.pop(instance_id)
        self._kill_processes(instance)

    def running_processes(self, instance: Instance) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cwd"]):
            with contextlib.suppress(psutil.Error):
                if (proc.info["cwd"] or "").startswith(str(instance.home)):
                    found.append(proc)
        return found

    def instance_for_key(self, public_key: str) -> Instance | None:
        blob = _key_blob(public_key)
        names = {k["name"] for k in self.ssh_keys.values() if _key_blob(k["public_key"]) == blob}
        active = (i for i in self.instances.values() if i.status == "active" and names & set(i.ssh_key_names))
        return next(active, None)

    # SSH ------------------------------------------------------------------------------------------------

    def _instance_of(self, chan) -> Instance:
        return self.instances[chan.get_connection().get_extra_info("instance_id")]

    def _sftp(self, chan) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=str(self._instance_of(chan).home).encode())

    async def _run_command(self, process: asyncssh.SSHServerProcess) -> None:
        instance = self._instance_of(process.channel)
        env = {"HOME": str(instance.home), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", process.command or "true", cwd=instance.home, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        process.stdout.write(out.decode(errors="replace"))
        process.stderr.write(err.decode(errors="replace"))
        process.exit(proc.returncode or 0)

    # REST -----------------------------------------------------------------------------------------------

    async def instance_types(self, request: Request) -> JSONResponse:
        regions = [] if self.faults.no_capacity else [{"name": r, "description": r} for r in REGIONS]
        return JSONResponse({"data": {
            name: {"instance_type": {"name": name, "description": t["description"],
                                     "price_cents_per_hour": t["price_cents_per_hour"],
                                     "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512,
                                               "gpus": t["gpus"]}},
                   "regions_with_capacity_available": regions} for name, t in INSTANCE_TYPES.items()}})

    async def list_instances(self, request: Request) -> JSONResponse:
        return JSONResponse({"data": [i.as_json(self.ssh_port) for i in self.instances.values()]})

    async def get_instance(self, request: Request) -> JSONResponse:
        instance = self.instances.get(request.path_params["id"])
        if instance is None:
            return _error(404, "global/object-does-not-exist", "Specified instance does not exist.")
        return JSONResponse({"data": instance.as_json(self.ssh_port)})

    async def launch(self, request: Request) -> JSONResponse:
        body = await request.json()
        type_name, region, keys = body.get("instance_type_name"), body.get("region_name"), body.get("ssh_key_names")
        if type_name not in INSTANCE_TYPES:
            return _error(400, "global/invalid-parameters", "Invalid instance type.", field="instance_type_name")
        if region not in REGIONS:
            return _error(400, "global/invalid-parameters", "Invalid region.", field="region_name")
        known = {k["name"] for k in self.ssh_keys.values()}
        if not isinstance(keys, list) or len(keys) != 1 or keys[0] not in known:
            return _error(400, "global/invalid-parameters", "Exactly one existing SSH key name is required.",
                          field="ssh_key_names")
        if self.faults.no_capacity:
            return _error(400, "instance-operations/launch/insufficient-capacity",
                          "Not enough capacity to fulfill launch request.")
        instance_id = secrets.token_hex(16)
        home = self.workdir / "instances" / instance_id / "home" / "ubuntu"
        home.mkdir(parents=True)
        self.instances[instance_id] = Instance(instance_id, body.get("name") or "", type_name, region, keys, home,
                                               time.time())
        return JSONResponse({"data": {"instance_ids": [instance_id]}})

    async def terminate(self, request: Request) -> JSONResponse:
        ids = (await request.json()).get("instance_ids") or []
        gone = []
        for instance_id in ids:
            instance = self.instances.pop(instance_id, None)
            if instance is not None:
                self._kill_processes(instance)
                instance.status = "terminated"
                gone.append(instance.as_json(self.ssh_port))
        return JSONResponse({"data": {"terminated_instances": gone}})

    async def list_keys(self, request: Request) -> JSONResponse:
        return JSONResponse({"data": list(self.ssh_keys.values())})

    async def add_key(self, request: Request) -> JSONResponse:
        body = await request.json()
        name, public_key = body.get("name"), body.get("public_key")
        if not name or len(name) > 64 or not public_key:
            return _error(400, "global/invalid-parameters", "name and public_key are required.", field="name")
        key = {"id": secrets.token_hex(16), "name": name, "public_key": public_key}
        self.ssh_keys[key["id"]] = key
        return JSONResponse({"data": key})

    async def delete_key(self, request: Request) -> JSONResponse:
        key = self.ssh_keys.get(request.path_params["id"])
        if key is None:
            return _error(404, "global/object-does-not-exist", "Specified SSH key does not exist.")
        if any(key["name"] in i.ssh_key_names for i in self.instances.values()):
            return _error(400, "ssh-keys/key-in-use", "SSH key is in use by an instance.")
        del self.ssh_keys[key["id"]]
        return JSONResponse({"data": {}})


def _error(status: int, code: str, message: str, *, field: str | None = None) -> JSONResponse:
    body: dict = {"error": {"code": code, "message": message, "suggestion": None}}
    if field:
        body["field_errors"] = {field: {"code": code, "message": message}}
    return JSONResponse(body, status_code=status)


class _Gate:
    """Faults and authentication in front of every REST call: Bearer or Basic ``key:``."""

    def __init__(self, app, emulator: LambdaEmulator):
        self.app, self.emulator = app, emulator

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        faults = self.emulator.faults
        if faults.rate_limited > 0:
            faults.rate_limited -= 1
            response = _error(429, "global/rate-limited", "Too many requests.")
            response.headers["Retry-After"] = str(faults.retry_after_s)
            return await response(scope, receive, send)
        if faults.http_errors > 0:
            faults.http_errors -= 1
            return await _error(500, "global/unknown", "Unknown error.")(scope, receive, send)
        headers = dict(scope["headers"])
        scheme, _, value = headers.get(b"authorization", b"").decode().partition(" ")
        key = value if scheme == "Bearer" else ""
        if scheme == "Basic":
            with contextlib.suppress(ValueError):
                key = base64.b64decode(value).decode().partition(":")[0]
        if key not in self.emulator.api_keys:
            return await _error(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.")(
                scope, receive, send)
        self.emulator.requests.append(f"{scope['method']} {scope['path']}")
        return await self.app(scope, receive, send)


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, emulator: LambdaEmulator):
        self.emulator = emulator
        self.conn = None

    def connection_made(self, conn) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key) -> bool:
        instance = self.emulator.instance_for_key(key.export_public_key("openssh").decode())
        if instance is None or username != "ubuntu":
            return False
        self.conn.set_extra_info(instance_id=instance.id)
        return True
