"""Download the images a release lists by URL (Fitzpatrick17k), politely and resumably.

Some releases distribute no images, only a table with one URL per image (Fitzpatrick17k's
``fitzpatrick17k.csv``: ``md5hash`` + ``url``). :func:`fetch_url_images` downloads every listed
image into ``<folder>/images/<key>.<ext>`` (the extension from the decoded format, not from the
URL: Atlas Dermatologico's URLs end in ``img?imageId=N``):

* an image already in ``images/`` is skipped, so a re-run resumes where the last one stopped;
* each download is streamed into ``images/.partial/<key>.<url-hash>.part`` (resumed with an HTTP
  Range request when a transfer was cut), fully decoded with Pillow and only then renamed into
  place: no half or undecodable file is ever where ``data import`` reads;
* a dead link (HTTP 4xx/5xx, DNS or connection failure after ``retries`` retries, a response
  that is not a decodable image, an empty URL) is skipped and recorded in ``<folder>/missing.csv``
  (``<key>,url,reason``). Permanent failures (HTTP 404/410, not an image, no URL) are not asked
  for again on a re-run unless ``retry_dead``; the others (5xx, 403, 429, time-outs, cut
  transfers) are;
* at most 4 downloads run at a time (``threads``), with a progress bar.

The HTTP code is :mod:`dermkit.data.fetch`'s (``_open`` with Range resumption, ``_check_url``,
its retryable errors and user agent).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from dermkit.data.http import RETRYABLE, check_url, open_url
from dermkit.data.images import ImageProblem, decode_image_bytes
from dermkit.data.metadata_csv import line_list, read_metadata
from dermkit.errors import DataError
from dermkit.io import write_csv

__all__ = ["MAX_THREADS", "UrlImagesResult", "read_url_table", "existing_images", "read_missing",
           "fetch_url_images", "fetch_listed_images"]

MAX_THREADS = 4  # be polite to the image hosts: never more concurrent downloads than this
CHUNK = 1 << 16
# Pillow format -> file extension; the importers read these extensions (common.IMAGE_EXTENSIONS).
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tiff", "WEBP": ".webp", "MPO": ".jpg"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Reasons that will not change by asking again (skipped on a re-run unless retry_dead).
PERMANENT = ("HTTP 404", "HTTP 410", "not a decodable image", "unsupported image format", "no URL",
             "not an http(s) URL")


@dataclass
class UrlImagesResult:
    """What a run did: images ``downloaded`` now, ``already`` there, ``dead`` (in missing.csv,
    ``skipped_dead`` of them recorded by an earlier run and not asked for again)."""

    folder: Path
    images: Path
    missing_csv: Path
    listed: int
    downloaded: int = 0
    already: int = 0
    dead: int = 0
    skipped_dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"{self.listed} images listed: {self.downloaded} downloaded, {self.already} already there, "
                f"{self.dead} dead")
        if self.skipped_dead:
            text += f" ({self.skipped_dead} recorded dead by an earlier fetch, not asked for again)"
        if self.dead:
            text += f"; see {self.missing_csv}"
        return text


# ------------------------------------------------------------------------------ the table
def read_url_table(path: Path, key_column: str, url_column: str, what: str) -> pd.DataFrame:
    """The table's ``key_column`` and ``url_column`` as strings (empty URL -> ""); DataError naming
    the file and line for a missing column, an empty or unsafe key (it becomes a file name) or a
    key listed twice."""
    frame = read_metadata(path)
    missing = [c for c in (key_column, url_column) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} line 1 (header): no column {', '.join(map(repr, missing))}; {what} lists each image's "
                        f"{key_column} and {url_column}. Is this the official file?")
    keys = frame[key_column].fillna("").astype(str).str.strip()
    bad = ~keys.map(lambda k: bool(_KEY.fullmatch(k)))
    if bad.any():
        raise DataError(f"{path} {line_list(frame.index[bad] + 2)}, column '{key_column}': {keys[bad].iloc[0]!r} is "
                        "not a plain identifier (letters, digits, '_' or '-'); the file is corrupt")
    twice = keys.duplicated(keep=False)
    if twice.any():
        raise DataError(f"{path} {line_list(frame.index[twice] + 2)}: {key_column} {keys[twice].iloc[0]} is listed "
                        "more than once; the file is corrupt or not the official one")
    urls = frame[url_column].fillna("").astype(str).str.strip()
    return pd.DataFrame({"key": keys, "url": urls})


def existing_images(images: Path) -> dict[str, Path]:
    """Image files directly in ``images`` by file stem (hidden files left out)."""
    out: dict[str, Path] = {}
    if images.is_dir():
        for f in sorted(images.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                out.setdefault(f.stem, f)
    return out


def read_missing(path: Path, key_column: str) -> dict[str, tuple[str, str]]:
    """``missing.csv`` as key -> (url, reason); {} when there is none or it is unreadable."""
    if not path.is_file():
        return {}
    try:
        frame = read_metadata(path)
    except DataError:
        return {}
    if not {key_column, "url", "reason"} <= set(frame.columns):
        return {}
    frame = frame.fillna("")
    return {str(k): (str(u), str(r)) for k, u, r in zip(frame[key_column], frame["url"], frame["reason"])}


# ------------------------------------------------------------------------------ one image
def _permanent(reason: str) -> bool:
    return reason.startswith(PERMANENT)


def _decoded_extension(path: Path) -> str:
    """The extension for the image in ``path``; ValueError (the reason) when it is not one."""
    data = path.read_bytes()
    try:
        image = decode_image_bytes(data, path, convert=False)
    except ImageProblem as exc:
        raise ValueError(f"not a decodable image ({exc.detail})") from None
    fmt = str(image.format or "")
    if fmt not in FORMATS:
        raise ValueError(f"unsupported image format {fmt or 'unknown'} (dermkit reads JPEG, PNG, BMP, TIFF, WebP)")
    return FORMATS[fmt]


def _download_one(key: str, url: str, images: Path, retries: int, timeout: float,
                  backoff: float) -> tuple[str, str, str]:
    """(key, "downloaded" | "dead", reason) for one listed image."""
    if not url:
        return key, "dead", "no URL listed"
    try:
        check_url(url)
    except DataError:
        return key, "dead", f"not an http(s) URL ({url[:60]})"
    partial = images / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    part = partial / f"{key}.{hashlib.sha1(url.encode()).hexdigest()[:10]}.part"
    attempt = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        try:
            response, start = open_url(url, offset, timeout)
            if response is not None:
                with response, open(part, "ab" if start else "wb") as fh:
                    got = 0
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        fh.write(chunk)
                        got += len(chunk)
                    length = response.headers.get("Content-Length")
                if length and length.isdigit() and got < int(length):
                    raise http.client.IncompleteRead(b"", int(length) - got)
            break
        except DataError as exc:  # an HTTP error status, or a resume answered with the wrong range
            reason = str(exc).removeprefix(f"{url}: ")
            if "wrong range" in reason and attempt < retries:
                part.unlink(missing_ok=True)
                attempt += 1
                continue
            part.unlink(missing_ok=True)
            return key, "dead", reason
        except (*RETRYABLE, http.client.HTTPException, OSError) as exc:
            # DNS, refused or reset connections, time-outs, cut transfers, TLS errors: asked again
            attempt += 1
            if attempt > retries:
                what = getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
                kept = part.stat().st_size if part.is_file() else 0
                tail = f"; {kept} bytes kept, the next fetch resumes" if kept else ""
                return key, "dead", f"connection failed after {retries} retries ({what}){tail}"
            time.sleep(backoff * attempt)
        except ValueError as exc:  # http.client.InvalidURL and friends: a malformed URL
            part.unlink(missing_ok=True)
            return key, "dead", f"not an http(s) URL ({exc})"
    try:
        ext = _decoded_extension(part)
    except ValueError as exc:
        part.unlink(missing_ok=True)
        return key, "dead", str(exc)
    os.replace(part, images / f"{key}{ext}")
    return key, "downloaded", ""


# ------------------------------------------------------------------------------ the run
def fetch_url_images(items: Iterable[tuple[str, str]], folder: str | os.PathLike, *, key_column: str = "key",
                     images_folder: str = "images", threads: int = MAX_THREADS, retries: int = 3,
                     timeout: float = 30, backoff: float = 1.0, retry_dead: bool = False, progress: bool = True,
                     desc: str = "images") -> UrlImagesResult:
    """Download ``items`` ((key, url) pairs) into ``folder/images`` (see the module doc)."""
    from tqdm import tqdm

    folder = Path(folder)
    images = folder / images_folder
    images.mkdir(parents=True, exist_ok=True)
    items = [(str(k), str(u or "").strip()) for k, u in items]
    for key, _ in items:
        if not _KEY.fullmatch(key):
            raise DataError(f"image key {key!r} is not a plain identifier (letters, digits, '_' or '-')")
    missing_csv = folder / "missing.csv"
    result = UrlImagesResult(folder=folder, images=images, missing_csv=missing_csv, listed=len(items))
    there = existing_images(images)
    earlier = read_missing(missing_csv, key_column)
    dead: dict[str, tuple[str, str]] = {}
    todo = []
    for key, url in items:
        if key in there:
            result.already += 1
        elif not retry_dead and key in earlier and earlier[key][0] == url and _permanent(earlier[key][1]):
            dead[key] = earlier[key]
            result.skipped_dead += 1
        else:
            todo.append((key, url))
    threads = max(1, min(int(threads), MAX_THREADS))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dermkit-url-images")
    urls = dict(todo)
    attempted: set[str] = set()
    try:
        with tqdm(total=len(todo), unit="img", desc=desc, disable=not progress, leave=False) as bar:
            futures = {pool.submit(_download_one, key, url, images, retries, timeout, backoff): key
                       for key, url in todo}
            for future in as_completed(futures):
                key = futures[future]
                attempted.add(key)
                try:
                    _, status, reason = future.result()
                except Exception as exc:  # never let one odd answer end the whole run
                    status, reason = "dead", f"download failed ({type(exc).__name__}: {exc})"
                if status == "downloaded":
                    result.downloaded += 1
                else:
                    dead[key] = (urls[key], reason)
                bar.update(1)
                bar.set_postfix(dead=len(dead), refresh=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for key, url in todo:  # interrupted before asking again: keep what the last run found
            if key not in attempted and key in earlier and earlier[key][0] == url:
                dead.setdefault(key, earlier[key])
        order = {key: i for i, (key, _) in enumerate(items)}
        rows = sorted(dead.items(), key=lambda kv: order.get(kv[0], len(order)))
        write_csv(missing_csv, pd.DataFrame([(k, u, r) for k, (u, r) in rows], columns=[key_column, "url", "reason"]))
        partial = images / ".partial"
        if partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()
    result.dead = len(dead)
    for _, reason in dead.values():
        head = re.sub(r"\s*\(.*$", "", reason)
        result.reasons[head] = result.reasons.get(head, 0) + 1
    return result


def fetch_listed_images(folder: str | os.PathLike, spec: dict, *, release: str, **options) -> UrlImagesResult:
    """The ``image_urls:`` step of a manifest entry: read ``spec["table"]`` (downloaded into
    ``folder``) and fetch its images; ``spec`` names ``key_column`` and ``url_column``."""
    folder = Path(folder)
    try:
        table_name, key_column, url_column = spec["table"], spec["key_column"], spec["url_column"]
    except (KeyError, TypeError):
        raise DataError(f"release {release}: 'image_urls' in the manifest needs table, key_column and url_column") \
            from None
    path = folder / str(table_name)
    if not path.is_file():
        raise DataError(f"release {release}: {path} is not there; the manifest's files must include {table_name}")
    table = read_url_table(path, key_column, url_column, f"{release}'s {table_name}")
    return fetch_url_images(zip(table["key"], table["url"]), folder, key_column=key_column,
                            images_folder=str(spec.get("folder", "images")), desc=f"{release} images", **options)
