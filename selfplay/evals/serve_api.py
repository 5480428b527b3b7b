"""The request schema of ``selfplay serve``: OpenAI's chat-completions parameters, checked before any work.

A client's mistake must come back as a 400 with OpenAI's error body, never as a 500: OpenAI-compatible
clients (ours included, :mod:`selfplay.judges.http`) retry 5xx with backoff, so a bad parameter answered
as a server error costs every retry before it fails. The schema is strict (no string-to-number coercion,
unknown parameters refused) because a parameter the server silently ignores (``n``, ``stream``,
``logit_bias``) gives the client something other than what it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# More completions per request than this are refused: each one is a row of the decoding batch.
MAX_N = 16
# OpenAI's own limit on stop sequences.
MAX_STOP = 4


class ApiError(Exception):
    """An error answered with OpenAI's body ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


_STRICT = ConfigDict(extra="forbid", strict=True)


class TextPart(BaseModel):
    """A content part; only text parts exist for a text-only model."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted as OpenAI does; chat templates have no place for it

    def as_turn(self) -> dict[str, str]:
        """The ``{role, content}`` turn a chat template renders (text parts joined)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``; ``None`` means "not given" (the server's default applies)."""

    model_config = _STRICT
    messages: Annotated[list[Message], Field(min_length=1)]
    model: str | None = None  # one model is served; any name is accepted (judges send e.g. "gpt-4")
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # OpenAI's newer name for max_tokens
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = None
    user: str | None = None
    # Sent at their neutral values by some clients; any other value asks for something not implemented.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if self.stream:
            raise _Unsupported("stream", "stream: true is not supported by selfplay serve; send stream: false "
                                         "(the whole completion comes back in one response)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise _Unsupported(name, f"{name} is not supported by selfplay serve; omit it or send 0")
        if self.logprobs:
            raise _Unsupported("logprobs", "logprobs is not supported by selfplay serve; omit it or send false")
        if isinstance(self.stop, str) and not self.stop:
            raise _Unsupported("stop", "stop must be a non-empty string or a list of them")
        return self

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class _Unsupported(ValueError):
    """Raised inside validation for a parameter value the server does not implement."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


_FIELDS = set(ChatRequest.model_fields) | set(Message.model_fields) | set(TextPart.model_fields)


def parse_request(body: bytes) -> ChatRequest:
    """Validate a request body; raises :class:`ApiError` (400) naming the first bad parameter."""
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as e:
        raise _as_api_error(e) from None


def _as_api_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    unsupported = (err.get("ctx") or {}).get("error")
    if isinstance(unsupported, _Unsupported):
        return ApiError(400, unsupported.message, param=unsupported.param, code="unsupported_value")
    if err["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({err['ctx'].get('error', err['msg'])})",
                        code="invalid_json")
    # Drop pydantic's union-member tags ('str', 'list[TextPart]') from the location: keep field names and indices.
    # (An unknown parameter's own name is not a field: keep the whole location then.)
    extra = err["type"] == "extra_forbidden"
    loc = [p for p in err["loc"] if isinstance(p, int) or p in _FIELDS or extra]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    if err["type"] == "extra_forbidden":
        return ApiError(400, f"unsupported parameter '{param}': selfplay serve does not implement it",
                        param=param, code="unsupported_parameter")
    if err["type"] == "missing":
        return ApiError(400, f"missing required parameter '{param}'", param=param, code="missing_required_parameter")
    if param is None:
        return ApiError(400, f"the request body must be a JSON object: {err['msg']}", code="invalid_type")
    got = err.get("input")
    shown = repr(got) if isinstance(got, (int, float, str, bool)) or got is None else type(got).__name__
    return ApiError(400, f"invalid value for '{param}': {err['msg']} (got {shown[:80]})", param=param,
                    code=err["type"])
