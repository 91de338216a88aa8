"""Label Studio through its official SDK (label-studio-sdk 2.x), with the retry rules spelled out.

`Client.ls` is the SDK's `LabelStudio`; every call goes through `Client.call`, which owns the retries.
The SDK's own retries are switched off (`max_retries=0`) because it repeats any request, an import
included, on a dropped connection, a 5xx or a 409, and a repeated import doubles tasks. Here reads
are retried with exponential backoff on connection errors and 5xx; writes are tried once unless the
caller says a repeat is harmless (push lists the keys again after a failed import instead).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

DEFAULT_URL = "http://127.0.0.1:8080"  # the one default: the server binds it, the client calls it
# Tasks per listing page. Label Studio's cost is per task (5,000 a page was no faster, bench/RESULTS.md), and
# a bigger page only takes longer to answer, nearer the client's timeout.
PAGE = 1000
T = TypeVar("T")


class LabelStudioUnavailable(RuntimeError):
    """Label Studio did not answer (down, or 5xx) after every retry."""


class LabelStudioError(RuntimeError):
    """Label Studio answered with a 4xx: the request itself is wrong."""


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 120.0):
        self.url = (url or os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
        if not key:
            raise ValueError("LABEL_STUDIO_API_KEY is not set (environment or .env)")
        self.retries, self.backoff = retries, backoff
        self.ls = LabelStudio(base_url=self.url, api_key=key, timeout=timeout, max_retries=0)

    def call(self, what: str, fn: Callable[..., T], *args, retry: bool = True, **kw) -> T:
        """`fn(*args, **kw)` (an SDK call; wrap a lazy pager in `list`), retried when `retry` says a
        repeat is harmless. `what` names the call in errors and is the hook the fault-injection tests use."""
        last = ""
        tries = self.retries + 1 if retry else 1
        for attempt in range(tries):
            try:
                return fn(*args, **kw)
            except httpx.TransportError as e:  # refused, reset, timed out
                last = type(e).__name__
            except ApiError as e:
                if e.status_code is not None and e.status_code < 500:
                    raise LabelStudioError(f"{what}: HTTP {e.status_code}: {str(e.body)[:300]}") from None
                last = f"HTTP {e.status_code}"
            if attempt + 1 < tries:
                time.sleep(self.backoff * 2 ** attempt)
        raise LabelStudioUnavailable(f"Label Studio at {self.url} did not answer {what} after {tries} tries ({last})")

    def users(self) -> dict[int, dict]:
        """id -> {email, first_name}: who wrote an annotation, and whether the panel simulated them."""
        return {u.id: {"email": u.email, "first_name": u.first_name}
                for u in self.call("users.list", self.ls.users.list)}

    def tasks(self, project_id: int, query: str | None = None, fields: str = "task_only") -> list[dict]:
        """The project's tasks (those the Data Manager `query` selects) as dicts; `task_only` leaves out
        annotations and predictions. URIs stay unresolved: resolving them costs Label Studio a storage
        lookup per task, and nothing here opens them."""
        return [t.model_dump() for t in self.call("tasks.list", lambda: list(self.ls.tasks.list(
            project=project_id, fields=fields, page_size=PAGE, resolve_uri=False, query=query)))]

    def totals(self, project_id: int):
        """The project's numbers of tasks, annotations and predictions (`.total`, `.total_annotations`,
        `.total_predictions`) and, in `.tasks`, its newest task (highest id): one page of one task."""
        return self.call("tasks.count", self.ls.tasks.list, project=project_id, fields="task_only", page_size=1,
                         resolve_uri=False, query=json.dumps({"ordering": ["-tasks:id"]})).response
