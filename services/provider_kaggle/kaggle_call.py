"""One call of the ``kaggle`` client, in a process of its own: ``python -I kaggle_call.py`` reads a JSON request
on stdin and writes one JSON answer on stdout.

``import kaggle`` authenticates at import from the process's environment and files, reads its endpoint at import,
and ``exit(1)``s without credentials; its clients fall back to ``~/.kaggle`` and ``KAGGLE_API_TOKEN``. So each call
runs here, with an empty home and temp folder of its own, and only this user's credentials, set in this process's
environment before the import: one user's credentials never serve another's call, and concurrent calls share
nothing. The credentials arrive on stdin, never in argv. This file imports nothing of TuneFleet.

Request: ``{"base_url": str | null, "credentials": {...}, "op": str, "args": {...}}``. Answer: ``{"ok": value}``
or ``{"error": {"kind": "http" | "auth" | "invalid" | "transport", "status": int | null, "message": str}}``.
"""

import contextlib
import json
import os
import sys


def _setup(base_url, credentials):
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        del os.environ[key]
    if base_url:
        os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
    if credentials.get("api_token"):
        os.environ["KAGGLE_API_TOKEN"] = credentials["api_token"]
    else:
        os.environ["KAGGLE_USERNAME"] = credentials.get("username") or ""
        os.environ["KAGGLE_KEY"] = credentials.get("key") or ""
    from kagglesdk import kaggle_env

    if base_url:
        kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = base_url.rstrip("/")
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:
        raise _Refused("Kaggle accepted none of the credentials (an unknown or expired API token)") from None
    return api


class _Refused(Exception):
    pass


def _pages(call, request, most=10000):
    """Every page of a paged call, following its page token."""
    token = ""
    for _ in range(most):
        request.page_token = token
        response = call(request)
        yield response
        token = response.next_page_token
        if not token:
            return


def _paged(call, request, field):
    return [item for response in _pages(call, request) for item in getattr(response, field) or []]


def _op(api, op, args):
    from kagglesdk.datasets.types.dataset_api_service import (
        ApiDeleteDatasetRequest,
        ApiGetDatasetStatusRequest,
        ApiListDatasetsRequest,
    )
    from kagglesdk.datasets.types.dataset_enums import DatasetSelectionGroup
    from kagglesdk.kernels.types.kernels_api_service import (
        ApiDeleteKernelRequest,
        ApiGetKernelSessionStatusRequest,
        ApiListKernelSessionOutputRequest,
        ApiListKernelsRequest,
    )
    from kagglesdk.kernels.types.kernels_enums import KernelsListViewType

    user = api.get_config_value(api.CONFIG_NAME_USER) or ""
    if op == "whoami":
        with api.build_kaggle_client() as kaggle:  # Basic auth is checked by the first call, not at import
            request = ApiListKernelsRequest()
            request.group, request.user, request.page_size = KernelsListViewType.PROFILE, user, 1
            kaggle.kernels.kernels_api_client.list_kernels(request)
        return user
    if op == "create_dataset":
        response = api.dataset_create_new(args["folder"], public=False, quiet=True, dir_mode="zip")
        return {"ref": response.ref, "status": response.status, "error": response.error or ""}
    if op == "dataset_status":
        with api.build_kaggle_client() as kaggle:
            request = ApiGetDatasetStatusRequest()
            request.owner_slug, request.dataset_slug = user, args["slug"]
            return kaggle.datasets.dataset_api_client.get_dataset_status(request).status.name
    if op == "push_kernel":
        response = api.kernels_push(args["folder"], timeout=args.get("timeout"))
        invalid = [*(response.invalid_dataset_sources or []), *(response.invalid_model_sources or []),
                   *(response.invalid_kernel_sources or [])]
        return {"ref": response.ref or "", "version": response.version_number, "error": response.error or "",
                "invalid_sources": invalid}
    if op == "kernel_status":
        with api.build_kaggle_client() as kaggle:
            request = ApiGetKernelSessionStatusRequest()
            request.user_name, request.kernel_slug = user, args["slug"]
            response = kaggle.kernels.kernels_api_client.get_kernel_session_status(request)
            status = response.status
            return {"status": status.name if status is not None else None,
                    "failure_message": response.failure_message or ""}
    if op == "kernel_output":
        with api.build_kaggle_client() as kaggle:
            request = ApiListKernelSessionOutputRequest()
            request.user_name, request.kernel_slug, request.page_size = user, args["slug"], 20
            files, log = [], ""
            for response in _pages(kaggle.kernels.kernels_api_client.list_kernel_session_output, request):
                files.extend({"name": f.file_name, "url": f.url} for f in response.files or [])
                log = log or response.log or ""
            return {"files": files, "log": log}
    if op == "delete_kernel":
        with api.build_kaggle_client() as kaggle:
            request = ApiDeleteKernelRequest()
            request.user_name, request.kernel_slug = user, args["slug"]
            kaggle.kernels.kernels_api_client.delete_kernel(request)
        return None
    if op == "delete_dataset":
        with api.build_kaggle_client() as kaggle:
            request = ApiDeleteDatasetRequest()
            request.owner_slug, request.dataset_slug = user, args["slug"]
            kaggle.datasets.dataset_api_client.delete_dataset(request)
        return None
    if op == "list_kernels":
        with api.build_kaggle_client() as kaggle:
            request = ApiListKernelsRequest()
            request.group, request.user, request.page_size = KernelsListViewType.PROFILE, user, 100
            request.search = args.get("search") or ""
            found = _paged(kaggle.kernels.kernels_api_client.list_kernels, request, "kernels")
            return [{"ref": k.ref, "slug": (k.ref or "").rpartition("/")[2], "title": k.title} for k in found]
    if op == "list_datasets":
        with api.build_kaggle_client() as kaggle:
            request = ApiListDatasetsRequest()
            request.group, request.page_size = DatasetSelectionGroup.DATASET_SELECTION_GROUP_MY, 100
            request.search = args.get("search") or ""
            found = _paged(kaggle.datasets.dataset_api_client.list_datasets, request, "datasets")
            return [{"ref": d.ref, "slug": (d.ref or "").rpartition("/")[2]} for d in found]
    raise ValueError(f"unknown operation {op!r}")


def main():
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # the client prints progress and help on stdout: keep the answer channel clean
    request = json.loads(sys.stdin.read())
    try:
        api = _setup(request.get("base_url"), request.get("credentials") or {})
        answer = {"ok": _op(api, request["op"], request.get("args") or {})}
    except _Refused as exc:
        answer = {"error": {"kind": "auth", "status": None, "message": str(exc)}}
    except Exception as exc:  # every failure is answered, classified for the provider's error mapping
        answer = {"error": _classify(exc)}
    with os.fdopen(answer_fd, "w") as out:
        out.write(json.dumps(answer))


def _classify(exc):
    import requests

    if isinstance(exc, requests.HTTPError):
        response = exc.response
        status = response.status_code if response is not None else None
        message = str(exc)
        if response is not None:
            try:
                body = response.json()
                message = body.get("message") or message
            except ValueError:
                pass
        if status is not None and status < 400:  # an error body under HTTP 200: its code is the status
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                status = int(response.json().get("code"))
        return {"kind": "http", "status": status, "message": message[:500],
                "retry_after": response.headers.get("retry-after") if response is not None else None}
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return {"kind": "transport", "status": None, "message": type(exc).__name__}
    return {"kind": "invalid", "status": None, "message": f"{type(exc).__name__}: {exc}"[:500]}


if __name__ == "__main__":
    main()
