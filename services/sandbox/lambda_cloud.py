"""An emulator of Lambda Cloud's REST API (v1) and of its instances, each reached over real SSH.

At least as strict as Lambda where that hurts:

* an instance boots (``booting``), turns ``active`` with an address, and its sshd accepts connections only some
  seconds later (connection refused until then);
* each instance has its own loopback address, its own sshd and its own host key; a client gets in with the key
  the instance was launched with, as ``ubuntu``;
* about one request per second per account and one launch per 12 seconds (API spec 1.8.3): over that, 429 with
  Cloudflare's page ("error code: 1015"), no JSON and no Retry-After;
* an unknown instance answers 404 ``global/object-does-not-exist``, also to terminate;
* terminate goes through ``terminating``; a terminated instance lingers in the list for a moment, then is gone;
* the machine is Lambda Stack's: ``python3`` is 3.10 (see ``.machines``), nothing of TuneFleet installed.

Faults: stuck booting, sshd refusing for a while after ``active``, HTTP 500s, a 429 storm, no capacity, a lost
launch answer (the instance exists), and an instance lost mid-run (the host failed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from .machines import MachineImage, StockImages, discard_disk, kill_machine, machine_env, machine_processes

INSTANCE_TYPES = {
    "gpu_1x_a10": {"description": "1x A10 (24 GB PCIe)", "price_cents_per_hour": 75, "gpus": 1},
    "gpu_1x_a100_sxm4": {"description": "1x A100 (40 GB SXM4)", "price_cents_per_hour": 129, "gpus": 1},
    "gpu_1x_h100_pcie": {"description": "1x H100 (80 GB PCIe)", "price_cents_per_hour": 249, "gpus": 1},
    "gpu_8x_h100_sxm5": {"description": "8x H100 (80 GB SXM5)", "price_cents_per_hour": 2392, "gpus": 8},
}
REGIONS = ["us-east-1", "us-west-1"]
LAUNCH_FIELDS = {"region_name", "instance_type_name", "ssh_key_names", "file_system_names", "quantity", "name",
                 "hostname", "user_data", "tags", "image", "firewall_rulesets"}
REQUEST_INTERVAL_S = 1.0
LAUNCH_INTERVAL_S = 12.0


@dataclass
class Faults:
    stuck_booting: bool = False
    ssh_refused_s: float = 0.0    # sshd of instances launched from now on starts this much later
    http_errors: int = 0
    rate_limited: int = 0         # the next N requests get a 429, whatever the rate
    no_capacity: bool = False
    lost_launch_answers: int = 0  # launch, then answer the next N launches with a 502 page


@dataclass
class Instance:
    id: str
    name: str
    type_name: str
    region: str
    ssh_key_names: list[str]
    home: Path
    ip: str
    created: float
    sshd_delay_s: float
    host_key: asyncssh.SSHKey = field(repr=False)
    account: str = ""
    status: str = "booting"
    active_at: float | None = None
    ended_at: float | None = None
    sshd: asyncssh.SSHAcceptor | None = field(default=None, repr=False)

    def as_json(self) -> dict:
        kind = INSTANCE_TYPES[self.type_name]
        addressed = self.status in ("active", "unhealthy")
        return {
            "id": self.id, "name": self.name, "status": self.status, "ssh_key_names": self.ssh_key_names,
            "file_system_names": [], "ip": self.ip if addressed else None, "private_ip": None,
            "hostname": f"{self.id}.cloud.lambdalabs.com" if addressed else None,
            "region": {"name": self.region, "description": self.region}, "is_reserved": False,
            "instance_type": {"name": self.type_name, "description": kind["description"],
                              "gpu_description": kind["description"].split(" (")[0],
                              "price_cents_per_hour": kind["price_cents_per_hour"],
                              "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": kind["gpus"]}},
        }


def _key_blob(openssh: str) -> str:
    """The key type and base64 body of an OpenSSH public key, without its comment."""
    return " ".join(openssh.split()[:2])


class LambdaEmulator:
    def __init__(self, workdir: Path, api_keys: set[str], *, stock: StockImages, boot_delay_s: float = 0.5,
                 sshd_delay_s: float = 2.0, ssh_port: int = 2222):
        self.workdir, self.api_keys, self.stock = workdir, api_keys, stock
        self.image = MachineImage("lambda-stack-22-04", stock.lambda_stack / "bin")
        self.boot_delay_s, self.sshd_delay_s, self.ssh_port = boot_delay_s, sshd_delay_s, ssh_port
        self.faults = Faults()
        self.instances: dict[str, Instance] = {}
        self.launched: dict[str, Instance] = {}  # every instance ever launched, as Lambda's billing remembers it
        self.ssh_keys: dict[str, dict] = {}
        self.requests: list[str] = []
        self.rejected: list[str] = []  # requests refused by the rate limits
        self._addresses = (f"127.0.{a}.{b}" for a, b in itertools.product(range(1, 255), range(2, 255)))
        self._last: dict[tuple[str, str], float] = {}
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
        ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            for instance in list(self.instances.values()):
                await self._power_off(instance)

    async def _tick(self) -> None:
        while True:
            now = time.time()
            for instance in list(self.instances.values()):
                with contextlib.suppress(Exception):
                    await self._advance(instance, now)
            await asyncio.sleep(0.1)

    async def _advance(self, instance: Instance, now: float) -> None:
        if instance.status == "booting" and now - instance.created >= self.boot_delay_s \
                and not self.faults.stuck_booting:
            instance.status, instance.active_at = "active", now
        elif instance.status == "active" and instance.sshd is None \
                and now - instance.active_at >= instance.sshd_delay_s:
            instance.sshd = await asyncssh.listen(
                instance.ip, self.ssh_port, server_host_keys=[instance.host_key],
                server_factory=lambda: _SSHServer(self, instance),
                process_factory=lambda p: self._run_command(instance, p),
                sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(instance.home).encode()),
                allow_scp=False)
        elif instance.status == "terminating" and now - instance.ended_at >= 1.5:
            instance.status = "terminated"
        elif instance.status == "terminated" and now - instance.ended_at >= 6.0:
            del self.instances[instance.id]

    async def _power_off(self, instance: Instance) -> None:
        if instance.sshd is not None:
            instance.sshd.close()
            instance.sshd = None
        await asyncio.to_thread(kill_machine, instance.id)
        await asyncio.to_thread(discard_disk, instance.home.parent.parent, self.workdir / "logs" / instance.id)

    def log_path(self, instance_id: str, relative: str) -> Path:
        """A file in an instance's home, or the kept copy of its log once the instance is gone."""
        instance = self.instances.get(instance_id)
        live = instance.home / relative if instance else None
        if live is not None and live.exists():
            return live
        return self.workdir / "logs" / instance_id / "home" / "ubuntu" / relative

    def kill_workload(self, instance_id: str) -> None:
        """The host failed: the instance and everything on it are gone."""
        instance = self.instances.pop(instance_id)
        if instance.sshd is not None:
            instance.sshd.close()
        kill_machine(instance.id)
        discard_disk(instance.home.parent.parent, self.workdir / "logs" / instance.id)

    def running_processes(self, instance: Instance) -> list:
        return machine_processes(instance.id)

    def instance_for_key(self, instance: Instance, public_key: str) -> bool:
        blob = _key_blob(public_key)
        names = {k["name"] for k in self.ssh_keys.values()
                 if k["account"] == instance.account and _key_blob(k["public_key"]) == blob}
        return instance.status == "active" and bool(names & set(instance.ssh_key_names))

    # SSH ------------------------------------------------------------------------------------------------

    async def _run_command(self, instance: Instance, process: asyncssh.SSHServerProcess) -> None:
        """Run the command as sshd would: a shell of the instance, its other file descriptors closed (so a
        command that detaches does not hold the session open)."""
        env = machine_env(instance.id, self.image, self.stock, instance.home, {"USER": "ubuntu"})
        done = await asyncio.to_thread(
            subprocess.run, [str(self.stock.tools / "bash"), "-c", process.command or "true"], cwd=instance.home,
            env=env, stdin=subprocess.DEVNULL, capture_output=True, close_fds=True, timeout=600)
        process.stdout.write(done.stdout.decode(errors="replace"))
        process.stderr.write(done.stderr.decode(errors="replace"))
        process.exit(done.returncode or 0)

    # REST -----------------------------------------------------------------------------------------------

    async def instance_types(self, request: Request) -> JSONResponse:
        regions = [] if self.faults.no_capacity else [{"name": r, "description": r} for r in REGIONS]
        return JSONResponse({"data": {
            name: {"instance_type": {"name": name, "description": t["description"],
                                     "gpu_description": t["description"].split(" (")[0],
                                     "price_cents_per_hour": t["price_cents_per_hour"],
                                     "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512,
                                               "gpus": t["gpus"]}},
                   "regions_with_capacity_available": regions} for name, t in INSTANCE_TYPES.items()}})

    def _own(self, instance_id: str | None, request: Request) -> Instance | None:
        """An instance of the caller's account: another account's do not exist for it, as on Lambda."""
        instance = self.instances.get(instance_id)
        return instance if instance is not None and instance.account == request.state.account else None

    def _keys(self, request: Request) -> list[dict]:
        return [k for k in self.ssh_keys.values() if k["account"] == request.state.account]

    async def list_instances(self, request: Request) -> JSONResponse:
        return JSONResponse({"data": [i.as_json() for i in self.instances.values()
                                      if i.account == request.state.account]})

    async def get_instance(self, request: Request) -> JSONResponse:
        instance = self._own(request.path_params["id"], request)
        if instance is None:
            return _error(404, "global/object-does-not-exist", "Specified instance does not exist.")
        return JSONResponse({"data": instance.as_json()})

    async def launch(self, request: Request):
        body = await request.json()
        type_name, region, keys = body.get("instance_type_name"), body.get("region_name"), body.get("ssh_key_names")
        if set(body) - LAUNCH_FIELDS:
            return _error(400, "global/invalid-parameters", "Invalid request data.")
        if type_name not in INSTANCE_TYPES or region not in REGIONS:
            return _error(400, "global/invalid-parameters", "Invalid request data.")
        if int(body.get("quantity") or 1) != 1:
            return _error(400, "global/invalid-parameters", "Requested too many instances.")
        known = {k["name"] for k in self._keys(request)}
        if not isinstance(keys, list) or len(keys) != 1 or keys[0] not in known:
            return _error(400, "global/invalid-parameters", "Invalid request data.")
        name = body.get("name")
        if name is not None and not 1 <= len(name) <= 64:
            return _error(400, "global/invalid-parameters", "Invalid request data.")
        if self.faults.no_capacity:
            return _error(400, "instance-operations/launch/insufficient-capacity",
                          "Not enough capacity to fulfill launch request.")
        instance_id = self.create_instance(name or "", type_name, region, keys, account=request.state.account).id
        if self.faults.lost_launch_answers > 0:
            self.faults.lost_launch_answers -= 1
            return PlainTextResponse("<html><body><h1>502 Bad Gateway</h1></body></html>", 502,
                                     media_type="text/html")
        return JSONResponse({"data": {"instance_ids": [instance_id]}})

    def create_instance(self, name: str, type_name: str, region: str, ssh_key_names: list[str], *,
                        account: str | None = None) -> Instance:
        """A new booting instance of ``account``, as a launch makes it (tests use it to make one behind TuneFleet's
        back, by default in the only key's account)."""
        instance_id = secrets.token_hex(16)
        home = self.workdir / "instances" / instance_id / "home" / "ubuntu"
        home.mkdir(parents=True)
        instance = Instance(instance_id, name, type_name, region, ssh_key_names, home, next(self._addresses),
                            time.time(), self.sshd_delay_s + self.faults.ssh_refused_s,
                            asyncssh.generate_private_key("ssh-ed25519"), account=account or self.only_account())
        self.instances[instance_id] = self.launched[instance_id] = instance
        return instance

    async def terminate(self, request: Request) -> JSONResponse:
        ids = (await request.json()).get("instance_ids") or []
        found = [self._own(i, request) for i in ids]
        if not ids or any(i is None or i.status in ("terminating", "terminated") for i in found):
            return _error(404, "global/object-does-not-exist", "Specified instance does not exist.")
        for instance in found:
            instance.status, instance.ended_at = "terminating", time.time()
            await self._power_off(instance)
        return JSONResponse({"data": {"terminated_instances": [i.as_json() for i in found]}})

    async def list_keys(self, request: Request) -> JSONResponse:
        return JSONResponse({"data": [_public(k) for k in self._keys(request)]})

    async def add_key(self, request: Request) -> JSONResponse:
        body = await request.json()
        name, public_key = body.get("name"), body.get("public_key")
        if not name or len(name) > 64 or not public_key:
            return _error(400, "global/invalid-parameters", "Invalid request data.")
        if any(k["name"] == name for k in self._keys(request)):
            return _error(400, "global/duplicate", "An SSH key with this name already exists.")
        key = {"id": secrets.token_hex(16), "name": name, "public_key": public_key, "account": request.state.account}
        self.ssh_keys[key["id"]] = key
        return JSONResponse({"data": _public(key)})

    async def delete_key(self, request: Request) -> JSONResponse:
        key = self.ssh_keys.get(request.path_params["id"])
        if key is None or key["account"] != request.state.account:
            return _error(404, "global/object-does-not-exist", "Specified SSH key does not exist.")
        if any(key["name"] in i.ssh_key_names for i in self.instances.values()
               if i.status != "terminated" and i.account == key["account"]):
            return _error(400, "ssh-keys/key-in-use", "SSH key is in use by an instance.")
        del self.ssh_keys[key["id"]]
        return JSONResponse({"data": {}})

    def only_account(self) -> str:
        if len(self.api_keys) != 1:
            raise ValueError("name the account: this emulator has several API keys")
        return account_of(next(iter(self.api_keys)))

    def over_limit(self, key: str, path: str) -> bool:
        """Lambda's rates, per account: only requests that were let through count."""
        now = time.monotonic()
        kinds = [("request", REQUEST_INTERVAL_S)]
        if path.endswith("/instance-operations/launch"):
            kinds.append(("launch", LAUNCH_INTERVAL_S))
        if any(now - self._last.get((key, kind), -1e9) < interval for kind, interval in kinds):
            return True
        for kind, _ in kinds:
            self._last[(key, kind)] = now
        return False


def account_of(api_key: str) -> str:
    """The account an API key belongs to: each key is an account of its own here."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _public(key: dict) -> dict:
    return {k: v for k, v in key.items() if k != "account"}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "suggestion": None}}, status_code=status)


class _Gate:
    """Authentication, rate limits and faults in front of every REST call: Bearer, or Basic ``key:``."""

    def __init__(self, app, emulator: LambdaEmulator):
        self.app, self.emulator = app, emulator

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        emulator, faults = self.emulator, self.emulator.faults
        headers = dict(scope["headers"])
        scheme, _, value = headers.get(b"authorization", b"").decode().partition(" ")
        key = value if scheme == "Bearer" else ""
        if scheme == "Basic":
            with contextlib.suppress(ValueError):
                key = base64.b64decode(value).decode().partition(":")[0]
        where = f"{scope['method']} {scope['path']}"
        if faults.rate_limited > 0 or emulator.over_limit(key, scope["path"]):
            faults.rate_limited = max(0, faults.rate_limited - 1)
            emulator.rejected.append(where)
            return await PlainTextResponse("error code: 1015", 429)(scope, receive, send)
        if faults.http_errors > 0:
            faults.http_errors -= 1
            return await _error(500, "global/unknown", "Unknown error.")(scope, receive, send)
        if key not in emulator.api_keys:
            return await _error(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.")(
                scope, receive, send)
        emulator.requests.append(where)
        scope.setdefault("state", {})["account"] = account_of(key)
        return await self.app(scope, receive, send)


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, emulator: LambdaEmulator, instance: Instance):
        self.emulator, self.instance = emulator, instance

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key) -> bool:
        return username == "ubuntu" and self.emulator.instance_for_key(
            self.instance, key.export_public_key("openssh").decode())
