"""Reward sources for online RL (``training.method='rlhf'``).

* ``training.rlhf.reward_model``: a sequence-classification model with one score, loaded from a path or hub id;
  TRL scores ``prompt + completion`` with it.
* ``training.rlhf.judge_url`` + ``judge_model``: an OpenAI-compatible chat-completions endpoint grades each
  completion from 0 to 10 (the reward is the grade / 10). Its API key is read from the environment: from
  ``JUDGE_API_KEY``, where the provider puts the user's stored judge secret (``judge_api_key_secret``), or, for
  the trainer run by hand, from the variable ``judge_api_key_env`` names. It is sent as ``Authorization: Bearer``
  and never logged or written anywhere.

A judge answer without a number counts as no reward for that completion (NaN, which TRL ignores). A judge that
refuses the key or the request fails the job with the HTTP status; one that is unreachable or overloaded (5xx, 429)
is retried a few times first.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from shared.config import TrainingConfig
from shared.netpolicy import BlockedAddress, public_address

log = logging.getLogger(__name__)

JUDGE_SYSTEM = "You grade answers to prompts. Reply with one number from 0 (useless) to 10 (perfect) and nothing else."
JUDGE_USER = "Prompt:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{completion}\n\nGrade (0-10):"
JUDGE_USER_NO_REFERENCE = "Prompt:\n{prompt}\n\nAnswer to grade:\n{completion}\n\nGrade (0-10):"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeError(RuntimeError):
    """The judge endpoint cannot be used; the message names the config field to check."""


def parse_grade(text: str) -> float | None:
    """The first number of the judge's answer as a reward in [0, 1]; None when there is none."""
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    return min(max(float(match.group()), 0.0), 10.0) / 10.0


def chat_completions_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class JudgeReward:
    """A TRL reward function: ``reward(prompts, completions, reference=None, **_) -> list[float | None]``."""

    __name__ = "judge"

    def __init__(self, url: str, model: str, api_key: str | None = None, *, key_env: str | None = None,
                 timeout: float = 60.0, retries: int = 3, workers: int = 4, public_only: bool = False):
        self.url = chat_completions_url(url)
        self.public_only = public_only
        self.model = model
        self.key_env = key_env
        self.retries = retries
        self.workers = workers
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # A pinned address means nothing through a proxy (the proxy resolves the name), so public_only goes direct.
        self._client = httpx.Client(headers=headers, timeout=timeout, trust_env=not public_only)

    def __call__(self, prompts, completions, reference=None, **_kwargs) -> list[float | None]:
        references = reference if reference is not None else [None] * len(prompts)
        items = list(zip(prompts, completions, references, strict=True))
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(items)))) as pool:
            return list(pool.map(lambda item: self.grade(*item), items))

    def grade(self, prompt: str, completion: str, reference: str | None = None) -> float | None:
        template = JUDGE_USER if reference else JUDGE_USER_NO_REFERENCE
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": template.format(prompt=prompt, completion=completion,
                                                            reference=reference)},
            ],
            "temperature": 0,
            "max_tokens": 8,
        }
        answer = self._post(body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {self.url} answered without choices[0].message.content: check "
                             "training.rlhf.judge_url is an OpenAI-compatible chat-completions API") from None
        grade = parse_grade(content)
        if grade is None:
            log.warning("the judge's answer holds no grade: %.80r", content)
        return grade

    def _post(self, body: dict) -> dict:
        detail = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            try:
                response = self._send(body)
            except httpx.HTTPError as exc:
                detail = type(exc).__name__
                continue
            status = response.status_code
            if 200 <= status < 300:
                return response.json()
            if status in (401, 403):
                where = f"the key in {self.key_env}" if self.key_env else "training.rlhf.judge_api_key_secret"
                raise JudgeError(f"the judge at {self.url} refused the API key (HTTP {status}): check {where}")
            if status == 429 or status >= 500:
                detail = f"HTTP {status}"
                continue
            raise JudgeError(f"the judge at {self.url} answered HTTP {status}: check training.rlhf.judge_url (the "
                             "API's base URL, e.g. https://host/v1) and judge_model")
        raise JudgeError(f"the judge at {self.url} did not answer ({detail}) after {self.retries + 1} tries: check "
                         "training.rlhf.judge_url and that the endpoint is up")

    def _send(self, body: dict) -> httpx.Response:
        """POST to the judge; with ``public_only``, to the public address its host resolves to now (pinned for
        this request, the name kept for Host and TLS), never to a private one."""
        if not self.public_only:
            return self._client.post(self.url, json=body)
        url = httpx.URL(self.url)
        try:
            address = public_address(url.host, url.port or (443 if url.scheme == "https" else 80))
        except BlockedAddress as exc:
            raise JudgeError(f"training.rlhf.judge_url: {exc}") from None
        pinned = url.copy_with(host=address)
        return self._client.post(pinned, json=body, headers={"Host": url.netloc.decode("ascii")},
                                 extensions={"sni_hostname": url.host})

    def close(self) -> None:
        self._client.close()


def load_reward_model(config: TrainingConfig):
    """``(model, tokenizer)`` of ``training.rlhf.reward_model``, in eval mode, with a pad token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name, remote = config.training.rlhf.reward_model, config.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=remote)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, trust_remote_code=remote)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def reward_sources(config: TrainingConfig, *, public_only: bool = False) -> tuple[list, list | None]:
    """``(reward_funcs, reward_processing_classes)`` for TRL's GRPO/RLOO trainers; ``public_only`` as in
    ``JobSpec.public_addresses_only``."""
    r = config.training.rlhf
    if r.reward_model:
        model, tokenizer = load_reward_model(config)
        return [model], [tokenizer]
    key_env = r.judge_key_env()
    key = os.environ.get(key_env) if key_env else None
    return [JudgeReward(r.judge_url, r.judge_model, key, key_env=key_env, public_only=public_only)], None
