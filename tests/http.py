"""A GET that returns (status, body) for error statuses too (/healthz answers 503)."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
