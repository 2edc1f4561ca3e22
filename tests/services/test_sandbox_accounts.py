"""The sandbox's emulated clouds keep accounts apart, as RunPod and Lambda do: a user's key sees, stops and
terminates only the pods, instances and SSH keys of that user's own account."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys

import httpx

from services.sandbox.__main__ import _follow_keys
from services.sandbox.accounts import account_key, key_file, read_accounts, read_keys
from services.sandbox.lambda_cloud import LambdaEmulator
from services.sandbox.machines import StockImages
from services.sandbox.runpod import RunPodEmulator

ALICE, BOB = "sandbox-alice-key", "sandbox-bob-key"


def stock(tmp_path) -> StockImages:
    """Machine images the accounts test never boots."""
    return StockImages(runpod=tmp_path, lambda_stack=tmp_path, python_archive=tmp_path / "python.tar.gz",
                       python_sha256="", tools=tmp_path, pip_cache=tmp_path)


def client(app, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cloud",
                             headers={"Authorization": f"Bearer {key}"})


async def graphql(http: httpx.AsyncClient, query: str) -> dict:
    r = await http.post("/graphql", json={"query": query})
    assert r.status_code == 200, r.text
    return r.json()


async def test_runpod_accounts_see_only_their_own_pods(tmp_path):
    emulator = RunPodEmulator(tmp_path / "runpod", {ALICE, BOB}, stock=stock(tmp_path), images={})
    async with client(emulator.app, ALICE) as alice, client(emulator.app, BOB) as bob:
        made = await graphql(alice, 'mutation { podFindAndDeployOnDemand(input: {name: "a", imageName: "x", '
                                    'gpuTypeId: "NVIDIA RTX A4000", env: [{key: "HF_TOKEN", value: "hf_alice"}]}) '
                                    "{ id } }")
        pod_id = made["data"]["podFindAndDeployOnDemand"]["id"]
        mine = await graphql(alice, "query { myself { pods { id env } } }")
        assert [p["id"] for p in mine["data"]["myself"]["pods"]] == [pod_id]
        theirs = await graphql(bob, "query { myself { pods { id env } } }")
        assert theirs["data"]["myself"]["pods"] == []
        peek = await graphql(bob, f'query {{ pod(input: {{podId: "{pod_id}"}}) {{ id env }} }}')
        assert peek["data"]["pod"] is None  # nor its environment
        kill = await graphql(bob, f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}')
        assert kill["errors"][0]["message"] == "pod not found to terminate" and pod_id in emulator.pods
        await graphql(alice, f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}')
        assert pod_id not in emulator.pods


async def test_lambda_accounts_see_only_their_own_instances_and_keys(tmp_path):
    emulator = LambdaEmulator(tmp_path / "lambda", {ALICE, BOB}, stock=stock(tmp_path))
    emulator.over_limit = lambda key, path: False  # the rates are tested elsewhere; here only the accounts count
    async with client(emulator.app, ALICE) as alice, client(emulator.app, BOB) as bob:
        key = await alice.post("/api/v1/ssh-keys", json={"name": "k", "public_key": "ssh-ed25519 AAAA alice"})
        assert key.status_code == 200
        launched = await alice.post("/api/v1/instance-operations/launch", json={
            "region_name": "us-east-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["k"], "name": "a"})
        assert launched.status_code == 200, launched.text
        instance_id = launched.json()["data"]["instance_ids"][0]
        assert (await bob.get("/api/v1/instances")).json()["data"] == []
        assert (await bob.get(f"/api/v1/instances/{instance_id}")).status_code == 404
        assert (await bob.get("/api/v1/ssh-keys")).json()["data"] == []
        stolen = await bob.post("/api/v1/instance-operations/launch", json={
            "region_name": "us-east-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["k"]})
        assert stolen.status_code == 400  # another account's SSH key is no key of bob's
        gone = await bob.post("/api/v1/instance-operations/terminate", json={"instance_ids": [instance_id]})
        assert gone.status_code == 404 and emulator.instances[instance_id].status == "booting"
        assert (await bob.delete(f"/api/v1/ssh-keys/{key.json()['data']['id']}")).status_code == 404
        assert [i["id"] for i in (await alice.get("/api/v1/instances")).json()["data"]] == [instance_id]
        assert instance_id not in str((await bob.get("/api/v1/instances")).json())


async def test_each_user_gets_an_account_key_that_the_running_emulators_take(tmp_path):
    path = key_file(tmp_path)
    first = account_key(path, "alice")
    assert account_key(path, "alice") == first != account_key(path, "bob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys, accounts = {first}, {"alice": first, "gone": "a-key-removed-from-the-file"}
    follower = asyncio.create_task(_follow_keys(keys, accounts, path))
    try:
        carol = subprocess.run([sys.executable, "-m", "services.cli.main", "sandbox-key", "--user", "carol"],
                               env={"TUNEFLEET_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True,
                               capture_output=True, text=True).stdout.strip()
        for _ in range(50):
            if carol in keys:
                break
            await asyncio.sleep(0.1)
        assert keys == read_keys(path) and carol in keys and len(keys) == 3
        # Kaggle's and the Hub's emulators take user → key: the same accounts, by name.
        for _ in range(50):
            if accounts.get("carol") == carol:
                break
            await asyncio.sleep(0.1)
        assert accounts == read_accounts(path) and "gone" not in accounts
    finally:
        follower.cancel()
