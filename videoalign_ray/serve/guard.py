"""Request hygiene for the reward service (no Ray, no model): limits, path confinement, public error text.

:class:`ServiceLimits` says what one request may cost a replica; :func:`resolve_inside` confines request paths
to the data roots; :func:`public_message` strips server paths from anything a client reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from videoalign_ray.data.video import DecodeLimits

_ABS_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s'\"]+){2,}/?")


class RequestError(Exception):
    """A request the service refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)  # both in args, so the error pickles across processes
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may cost a replica.

    ``max_upload_bytes``: body bytes (413 above, enforced while the body streams, chunked or not);
    ``max_json_bytes``: a JSON body (it only carries a path and a prompt); ``body_timeout_s``: seconds to
    receive the whole body (408 after); ``max_prompt_tokens``: prompt tokens as text (422 above; prompts over
    ``32 x max_prompt_tokens`` characters are refused before tokenizing); ``max_requests_per_client``: HTTP
    requests in flight per client address and replica (429 above); ``max_concurrent_decodes``: videos a
    replica decodes at once (bounds decode memory at that many times ``decode.max_decoded_bytes``);
    ``decode``: video limits (413 above).
    """

    max_upload_bytes: int = 64 << 20
    max_json_bytes: int = 64 << 10
    body_timeout_s: float = 30.0
    max_prompt_tokens: int = 256
    max_requests_per_client: int = 32
    max_concurrent_decodes: int = 2
    decode: DecodeLimits = field(default_factory=lambda: DecodeLimits(
        max_frame_pixels=4096 * 2304, max_duration_s=300.0, max_source_frames=20_000, max_sampled_frames=256,
        max_decoded_bytes=1 << 30))

    @classmethod
    def from_settings(cls, settings: dict) -> ServiceLimits:
        """From the deployment's settings dict (keys as the field names; ``decode`` a dict of DecodeLimits)."""
        known = {f.name for f in fields(cls)} - {"decode"}
        kwargs = {k: type(getattr(cls(), k))(v) for k, v in settings.items() if k in known and v is not None}
        if settings.get("decode"):
            kwargs["decode"] = DecodeLimits(**{**cls().decode.__dict__, **settings["decode"]})
        return cls(**kwargs)


def public_message(message: str, names: dict[str, str] | None = None) -> str:
    """``message`` with server paths replaced: each key of ``names`` by its value, any other absolute path by
    ``<path>`` (errors go to clients; server paths must not)."""
    for real, shown in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(real, shown)
    return _ABS_PATH.sub("<path>", message)


def resolve_inside(path: str, roots: list[str]) -> Path:
    """``path`` resolved (symlinks followed) inside one of ``roots``; a relative path is looked up under each
    root in order (the first root where it exists wins).

    Raises:
        RequestError: 422 for a path that cannot be a file name (NUL byte, a name over the system's limit, a
            symlink loop), 403 outside every root, 404 when it does not exist. Messages name no server path.
    """
    if not path or "\x00" in path:
        raise RequestError(422, "path must be a non-empty file name without NUL bytes")
    base = [Path(r).expanduser().resolve() for r in roots]
    candidates = [Path(path)] if Path(path).is_absolute() else [r / path for r in base]
    try:
        resolved = [c.resolve() for c in candidates]
        inside = [r for r in resolved if any(r.is_relative_to(b) for b in base)]
        if not inside:
            raise RequestError(403, "path is outside the configured data roots")
        for r in inside:
            if r.is_file():
                return r
    except (OSError, RuntimeError, ValueError) as exc:  # ENAMETOOLONG, ELOOP ("Symlink loop"), ...
        reason = "a symlink loop" if "loop" in str(exc).lower() else type(exc).__name__
        raise RequestError(422, f"path cannot be resolved ({reason})") from None
    raise RequestError(404, "path does not exist inside the data roots")
