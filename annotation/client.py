"""A small HTTP client for Label Studio's REST API, with the retry rules spelled out.

Plain `requests` rather than label-studio-sdk: the SDK pins opencv<4.13 and pulls pandas and nltk into
the project, and hides which calls it retries. Here reads are retried with exponential backoff on
connection errors and 5xx; writes are retried only where the caller says a repeat is harmless.
"""

from __future__ import annotations

import os
import time

import requests


class LabelStudioUnavailable(RuntimeError):
    """Label Studio did not answer (down, or 5xx) after every retry."""


class LabelStudioError(RuntimeError):
    """Label Studio answered with a 4xx: the request itself is wrong."""


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 120.0):
        self.url = (url or os.environ.get("LABEL_STUDIO_URL") or "http://127.0.0.1:8080").rstrip("/")
        key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
        if not key:
            raise ValueError("LABEL_STUDIO_API_KEY is not set (environment or .env)")
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {key}"

    def request(self, method: str, path: str, *, retry: bool = True, **kw) -> requests.Response:
        last = ""
        tries = self.retries + 1 if retry else 1
        for attempt in range(tries):
            try:
                r = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = type(e).__name__
            else:
                if r.status_code < 400:
                    return r
                if r.status_code < 500:
                    raise LabelStudioError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
                last = f"HTTP {r.status_code}"
            if attempt + 1 < tries:
                time.sleep(self.backoff * 2 ** attempt)
        raise LabelStudioUnavailable(
            f"Label Studio at {self.url} did not answer {method} {path} after {tries} tries ({last})")

    def get(self, path: str, **params):
        return self.request("GET", path, params=params).json()

    def post(self, path: str, payload, *, retry: bool = False, **params):
        return self.request("POST", path, json=payload, params=params, retry=retry).json()

    def patch(self, path: str, payload):
        return self.request("PATCH", path, json=payload).json()  # PATCH sets fields: repeating it is harmless

    def pages(self, path: str, key: str, page_size: int = 1000, **params):
        """Every item of a paginated list, whichever envelope the endpoint uses."""
        page = 1
        while True:
            try:
                data = self.get(path, page=page, page_size=page_size, **params)
            except LabelStudioError as e:  # past the last page LS answers 404
                if "HTTP 404" in str(e) and page > 1:
                    return
                raise
            items = data if isinstance(data, list) else data.get(key, [])
            yield from items
            if isinstance(data, list) or len(items) < page_size or not items:
                return
            page += 1
