"""What each provider needs from a user to act on their account. Values are secrets: never logged."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class _Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunPodCredentials(_Credentials):
    api_key: SecretStr = Field(min_length=8, description="RunPod API key (Settings → API Keys).")


class LambdaCredentials(_Credentials):
    api_key: SecretStr = Field(min_length=8, description="Lambda Cloud API key.")


class KaggleCredentials(_Credentials):
    """Kaggle's legacy pair from kaggle.json (``username`` and ``key``), or an API token (``api_token``, which
    Kaggle introspects to find the username)."""

    username: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="Your Kaggle username (with key).")
    key: SecretStr | None = Field(default=None, min_length=8, description="The key from kaggle.json.")
    api_token: SecretStr | None = Field(default=None, min_length=8,
                                        description="A Kaggle API token (Settings, API, Create New Token).")

    @model_validator(mode="after")
    def _one_way(self) -> KaggleCredentials:
        if self.api_token is None and (self.username is None or self.key is None):
            raise ValueError("give username and key (from kaggle.json), or api_token")
        if self.api_token is not None and self.key is not None:
            raise ValueError("give either username and key, or api_token, not both")
        return self


class HuggingFaceCredentials(_Credentials):
    token: SecretStr = Field(min_length=8, description="A Hugging Face access token: write access to deploy on "
                                                       "Spaces or push models, read access for gated base models.")


class JudgeCredentials(_Credentials):
    api_key: SecretStr = Field(min_length=1, description="Key of an OpenAI-compatible judge endpoint.")


CREDENTIALS: dict[str, type[_Credentials]] = {
    "runpod": RunPodCredentials,
    "lambda": LambdaCredentials,
    "kaggle": KaggleCredentials,
    "huggingface": HuggingFaceCredentials,
    "judge": JudgeCredentials,
}


def plain(credentials: _Credentials) -> dict[str, str]:
    """The values as plain strings, for sealing."""
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v
            for k, v in credentials.model_dump(exclude_none=True).items()}
