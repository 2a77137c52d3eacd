"""The HTTP of dermkit's downloads, below both users of it: ``data fetch`` (release files,
:mod:`dermkit.data.fetch`) and the images a release lists by URL (:mod:`dermkit.data.url_images`).
Only http(s); a resume is an HTTP Range request whose answer is checked."""

from __future__ import annotations

import http.client
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

from dermkit.errors import DataError

__all__ = ["CHUNK", "USER_AGENT", "RETRYABLE", "check_url", "open_url"]

CHUNK = 1 << 20
USER_AGENT = "dermkit-fetch/0.1"


def check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"refusing to download {url!r}: only http(s) URLs are fetched")


def open_url(url: str, offset: int, timeout: float):
    """(response, offset it starts at) or (None, offset) when the server says the range is done."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None, offset
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    if offset and response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return response, offset
        response.close()
        raise DataError(f"{url}: the server answered the resume request with the wrong range "
                        f"({response.headers.get('Content-Range')!r}); delete the .partial folder and retry")
    return response, 0  # 200: the whole file (the server ignored or refused the range)

# Connection errors a download retries (resuming where it stopped).
RETRYABLE = (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, http.client.IncompleteRead,
             http.client.RemoteDisconnected)
