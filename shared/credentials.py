"""What each provider needs from a user to act on their account. Values are secrets: never logged."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunPodCredentials(_Credentials):
    api_key: SecretStr = Field(min_length=8, description="RunPod API key (Settings → API Keys).")


class LambdaCredentials(_Credentials):
    api_key: SecretStr = Field(min_length=8, description="Lambda Cloud API key.")


class KaggleCredentials(_Credentials):
    username: str = Field(min_length=1)
    key: SecretStr = Field(min_length=8, description="The key from kaggle.json.")


class HFSpacesCredentials(_Credentials):
    token: SecretStr = Field(min_length=8, description="A Hugging Face write token.")


class JudgeCredentials(_Credentials):
    api_key: SecretStr = Field(min_length=1, description="Key of an OpenAI-compatible judge endpoint.")


CREDENTIALS: dict[str, type[_Credentials]] = {
    "runpod": RunPodCredentials,
    "lambda": LambdaCredentials,
    "kaggle": KaggleCredentials,
    "hf-spaces": HFSpacesCredentials,
    "judge": JudgeCredentials,
}


def plain(credentials: _Credentials) -> dict[str, str]:
    """The values as plain strings, for sealing."""
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v
            for k, v in credentials.model_dump().items()}
