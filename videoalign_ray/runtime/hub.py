"""Model folders given as a local path or a Hugging Face Hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``,
``KwaiVGI/VideoReward``), resolved from the local Hub cache.

Jobs never download weights unless the user allows it: an id resolves with
``huggingface_hub.snapshot_download(id, local_files_only=True)`` (the cache that ``huggingface-cli download`` or
``snapshot_download`` filled, ``HF_HUB_CACHE`` / ``HF_HOME`` honoured); ``VIDEOALIGN_HUB_DOWNLOAD=1`` lets it
download what is missing. A string is taken as an id only when it is not an existing path and has the Hub's
``owner/name`` shape.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from videoalign_ray.errors import ModelPathError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
DOWNLOAD_ENV = "VIDEOALIGN_HUB_DOWNLOAD"


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` with the Hub's characters, not starting like a path (``/``, ``.``, ``~``)."""
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~")) and ".." not in text


def resolve_model_location(location: str, what: str = "model") -> Path:
    """The local folder of ``location``: an existing path as is, else the cached snapshot of that Hub id.

    Raises:
        ModelPathError: neither an existing path nor a Hub id in the local cache (the message says how to
            fill the cache, or that ``VIDEOALIGN_HUB_DOWNLOAD=1`` allows the download).
    """
    path = Path(location).expanduser()
    if path.exists() or not looks_like_hub_id(location):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    download = os.environ.get(DOWNLOAD_ENV, "") == "1"
    try:
        return Path(snapshot_download(location, local_files_only=not download))
    except LocalEntryNotFoundError:
        raise ModelPathError(
            f"{what} {location!r}: no such folder, and the Hub id is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}); fill it with "
            f"`huggingface-cli download {location}` or set {DOWNLOAD_ENV}=1 to let the job download it") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelPathError(f"{what} {location!r}: download from the Hub failed: {exc}") from None
