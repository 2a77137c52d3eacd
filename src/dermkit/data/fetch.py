"""Download an official release exactly and repeatably, then import it (``dermkit data fetch``).

Every file listed for a release in ``data/releases/manifest.yaml`` is streamed into
``<cache>/<name>/.partial/<file>.part`` (resumed with an HTTP Range request after an
interruption), verified (size, SHA-256 and/or the digest the source publishes, e.g. Dataverse's
MD5) and only then renamed to ``<cache>/<name>/<file>``. A file that fails verification is
deleted; nothing unverified ever sits where ``data import`` reads. Releases that publish no
digest are downloaded only with ``record_checksums=True``: the SHA-256 of that first download is
recorded in ``<cache>/<name>/SHA256SUMS`` and later downloads must match it. The licence must be
acknowledged (``accept_licence``); registration-only releases (Derm7pt) raise a DataError that
says where to get them and how to import them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dermkit.data.http import CHUNK, RETRYABLE, USER_AGENT, check_url, open_url
from dermkit.data.releases import import_release
from dermkit.errors import DataError
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text
from dermkit.io import write_text

__all__ = ["RemoteFile", "load_manifest", "release_entry", "cache_root", "resolve_files", "download", "fetch",
           "licence_text", "FetchResult"]

_ALGOS = {"md5": "md5", "sha-1": "sha1", "sha1": "sha1", "sha-256": "sha256", "sha256": "sha256",
          "sha-512": "sha512", "sha512": "sha512"}


@dataclass
class RemoteFile:
    """One file to download: its name in the cache, URL, size in bytes and expected digests
    (``{"sha256": hex, "md5": hex}``; empty when no source publishes one)."""

    name: str
    url: str
    size: int | None = None
    digests: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class FetchResult:
    name: str
    folder: Path
    files: list[Path]
    sha256: dict[str, str]
    imported: object | None = None  # ImportResult when the release was imported
    images: object | None = None  # UrlImagesResult for a release that lists image URLs (image_urls:)


# ---------------------------------------------------------------------------- the manifest
def load_manifest(path: str | os.PathLike | None = None) -> dict:
    """The packaged manifest (or ``path``), checked for its top-level shape."""
    if path is None:
        text = resources.files("dermkit.data.releases").joinpath("manifest.yaml").read_text(encoding="utf-8")
        where = "packaged manifest.yaml"
    else:
        text = read_text(path, "--manifest", DataError, MAX_YAML_CHARS)
        where = str(path)
    spec = load_yaml(text, where, DataError)
    if not isinstance(spec, dict) or not isinstance(spec.get("releases"), dict):
        raise DataError(f"{where}: expected 'releases:' mapping release names to their files")
    spec["_where"] = where
    return spec


def release_entry(name: str, manifest: dict) -> dict:
    releases = manifest["releases"]
    if name not in releases:
        raise DataError(f"unknown release {name!r} for `data fetch`; the manifest lists {', '.join(releases)}")
    entry = releases[name]
    if not isinstance(entry, dict):
        raise DataError(f"{manifest['_where']}: releases.{name} must be a mapping")
    return entry


def licence_text(name: str, entry: dict) -> str:
    """What the user acknowledges: title, licence, terms, where the full terms are."""
    lines = [f"{entry.get('title', name)}", f"licence: {entry.get('licence', 'see the homepage')}"]
    if entry.get("terms"):
        lines.append(f"terms: {' '.join(str(entry['terms']).split())}")
    for key in ("licence_url", "homepage"):
        if entry.get(key):
            lines.append(f"{key.replace('_', ' ')}: {entry[key]}")
    return "\n".join(lines)


def cache_root() -> Path:
    """``$DERMKIT_CACHE/downloads`` (default ``~/.cache/dermkit/downloads``)."""
    base = os.environ.get("DERMKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "dermkit") / "downloads"


# ------------------------------------------------------------------------------------ HTTP


def _get_json(url: str, timeout: float) -> dict:
    check_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); check the network") from None
    except ValueError:
        raise DataError(f"{url}: the answer is not JSON") from None


def _dataverse_files(entry: dict, timeout: float) -> dict[str, RemoteFile]:
    """Files of a Dataverse dataset by every name they go by (file name, original name, label)."""
    spec = entry["dataverse"]
    server = str(spec["server"]).rstrip("/")
    version = urllib.parse.quote(str(spec.get("version", ":latest-published")), safe=":.")
    doi = urllib.parse.quote(str(spec["doi"]), safe=":/.")
    url = f"{server}/api/datasets/:persistentId/versions/{version}/files?persistentId={doi}"
    answer = _get_json(url, timeout)
    if not isinstance(answer.get("data"), list):
        raise DataError(f"{url}: unexpected answer (no 'data' list of files)")
    out: dict[str, RemoteFile] = {}
    for item in answer["data"]:
        data = item.get("dataFile") or {}
        if "id" not in data:
            continue
        original = data.get("originalFileName")
        name = original or data.get("filename") or item.get("label")
        size = data.get("originalFileSize") if original else data.get("filesize")
        digests = {}
        checksum = data.get("checksum") or {}
        algo = _ALGOS.get(str(checksum.get("type", "")).lower())
        if algo and checksum.get("value"):
            digests[algo] = str(checksum["value"]).lower()
        elif data.get("md5"):
            digests["md5"] = str(data["md5"]).lower()
        remote = RemoteFile(name=name, url=f"{server}/api/access/datafile/{data['id']}"
                            + ("?format=original" if original else ""), size=int(size) if size else None,
                            digests=digests, note=f"Dataverse {spec['doi']}")
        for key in {name, data.get("filename"), item.get("label"), original}:
            if key:
                out.setdefault(str(key), remote)
    return out


def resolve_files(name: str, entry: dict, timeout: float = 60) -> list[RemoteFile]:
    """The files to download for a release, with URL, size and expected digests."""
    files = entry.get("files")
    if not isinstance(files, list) or not files:
        raise DataError(f"release {name}: the manifest lists no files to download")
    listing = _dataverse_files(entry, timeout) if entry.get("dataverse") else None
    out = []
    for item in files:
        if not isinstance(item, dict) or "name" not in item:
            raise DataError(f"release {name}: every file needs a 'name' in the manifest, got {item!r}")
        save_as = str(item.get("save_as") or item["name"])
        if listing is not None:
            keys = item.get("match") or [item["name"]]
            remote = next((listing[k] for k in keys if k in listing), None)
            if remote is None:
                raise DataError(f"release {name}: {item['name']} is not in the Dataverse dataset "
                                f"{entry['dataverse']['doi']} (it has {', '.join(sorted(listing))})")
            digests = dict(remote.digests)
            out.append(RemoteFile(save_as, remote.url, remote.size, digests, remote.note))
            continue
        if not item.get("url"):
            raise DataError(f"release {name}: file {item['name']} has no url in the manifest")
        digests = {algo: str(item[algo]).lower() for algo in ("sha256", "md5") if item.get(algo)}
        out.append(RemoteFile(save_as, str(item["url"]), int(item["size"]) if item.get("size") else None, digests))
    return out





def _hashers(algos) -> dict:
    return {a: hashlib.new(a) for a in {"sha256", *algos}}


def _hash_file(path: Path, hashers: dict) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            for h in hashers.values():
                h.update(chunk)


def _verify(remote: RemoteFile, path: Path, hashers: dict, pinned: str | None) -> str:
    """SHA-256 of ``path`` when it matches everything expected; DataError otherwise."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise DataError(f"{remote.name}: {size} bytes downloaded, the source publishes {remote.size}")
    expected = dict(remote.digests)
    if pinned and "sha256" not in expected:
        expected["sha256"] = pinned
    for algo, want in expected.items():
        got = hashers[algo].hexdigest()
        if got != want:
            origin = "recorded in SHA256SUMS at the first download" if algo == "sha256" and want == pinned \
                and "sha256" not in remote.digests else "published by the source"
            raise DataError(f"{remote.name}: {algo} checksum mismatch (expected {want}, {origin}; got {got}); the "
                            "download was deleted. Fetch again; if it keeps failing the file on the server changed")
    return hashers["sha256"].hexdigest()


def download(remote: RemoteFile, folder: str | os.PathLike, *, pinned: str | None = None, record: bool = False,
             progress: bool = True, retries: int = 3, timeout: float = 60,
             backoff: float = 1.0) -> tuple[Path, str]:
    """Download ``remote`` into ``folder`` (see the module doc); returns (path, sha256).

    A complete, verified file already in ``folder`` is reused. A ``.part`` file left by an
    interrupted download is resumed with a Range request. Connection errors are retried
    ``retries`` times, each resuming where the last stopped. ``pinned``: the SHA-256 recorded at
    an earlier download; ``record``: no digest exists yet, the SHA-256 of this download becomes it.
    """
    from tqdm import tqdm

    check_url(remote.url)
    folder = Path(folder)
    dest = folder / remote.name
    if Path(remote.name).name != remote.name or remote.name.startswith("."):
        raise DataError(f"manifest file name {remote.name!r} must be a plain file name")
    if not remote.digests and not pinned and not record:
        raise DataError(f"{remote.name}: no checksum to verify it against; pass --record-checksums to record the "
                        "SHA-256 of this first download")
    algos = set(remote.digests)
    if dest.is_file() and not (record and not pinned and not remote.digests):
        hashers = _hashers(algos)
        _hash_file(dest, hashers)
        try:
            return dest, _verify(remote, dest, hashers, pinned)
        except DataError:
            dest.unlink()  # not what the source publishes: never leave it where import reads
    elif dest.is_file():
        dest.unlink()  # nothing to verify an old file against: download it again
    partial = folder / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    part = partial / f"{remote.name}.part"
    attempt = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        try:
            response, start = open_url(remote.url, offset, timeout)
            hashers = _hashers(algos)
            if response is None:  # 416: nothing left to send
                _hash_file(part, hashers)
                break
            with response:
                mode = "ab" if start else "wb"
                if start:
                    _hash_file(part, hashers)
                total = remote.size
                length = response.headers.get("Content-Length")
                if total is None and length and length.isdigit():
                    total = start + int(length)
                with open(part, mode) as fh, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                  unit_divisor=1024, desc=remote.name, disable=not progress,
                                                  leave=False) as bar:
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        fh.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        bar.update(len(chunk))
                if length and length.isdigit() and part.stat().st_size < start + int(length):
                    raise http.client.IncompleteRead(b"", start + int(length) - part.stat().st_size)
            break
        except RETRYABLE as exc:
            attempt += 1
            if attempt > retries:
                done = part.stat().st_size if part.is_file() else 0
                raise DataError(f"{remote.url}: download interrupted ({exc}) after {retries} retries; run the same "
                                f"command again to resume from {done} bytes") from None
            time.sleep(backoff * attempt)
    try:
        sha = _verify(remote, part, hashers, pinned)
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest, sha


def _read_pins(path: Path) -> dict[str, str]:
    pins = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                pins[parts[1].lstrip("*")] = parts[0]
    return pins


def fetch(name: str, out: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None,
          accept_licence: bool = False, record_checksums: bool = False, manifest: str | os.PathLike | None = None,
          progress: bool = True, retries: int = 3, timeout: float = 60, backoff: float = 1.0,
          import_options: dict | None = None, image_options: dict | None = None) -> FetchResult:
    """Download release ``name`` into ``cache/name`` and (with ``out``) import it as a card there.

    A release whose manifest entry has ``image_urls:`` (Fitzpatrick17k: a table of image URLs)
    then gets every listed image (:mod:`dermkit.data.url_images`; ``image_options``: threads,
    retry_dead)."""
    spec = load_manifest(manifest)
    entry = release_entry(name, spec)
    if entry.get("access") == "registration":
        instructions = " ".join(str(entry.get("instructions", "")).split())
        raise DataError(f"{name} cannot be downloaded automatically: {instructions}"
                        f" Licence: {entry.get('licence', 'see ' + str(entry.get('homepage')))}.")
    if not accept_licence:
        raise DataError(f"{name} is distributed under its own terms; read them and pass --accept-licence to "
                        f"acknowledge them:\n{licence_text(name, entry)}")
    folder = (Path(cache).expanduser() if cache else cache_root()) / name
    folder.mkdir(parents=True, exist_ok=True)
    remotes = resolve_files(name, entry, timeout)
    pins_path = folder / "SHA256SUMS"
    pins = _read_pins(pins_path)
    unpinned = [r.name for r in remotes if not r.digests and r.name not in pins]
    if unpinned and not record_checksums:
        raise DataError(
            f"{name}: no published checksum for {', '.join(unpinned)} ({entry.get('digest', 'none in the manifest')}). "
            "Pass --record-checksums to download and record their SHA-256 in "
            f"{pins_path}; every later fetch must then match it"
        )
    paths, shas = [], {}
    for remote in remotes:
        pinned = pins.get(remote.name)
        path, sha = download(remote, folder, pinned=pinned, record=not remote.digests and pinned is None,
                             progress=progress, retries=retries, timeout=timeout, backoff=backoff)
        paths.append(path)
        shas[remote.name] = sha
        if pins.get(remote.name) != sha:
            pins[remote.name] = sha
            write_text(pins_path, "".join(f"{v}  {k}\n" for k, v in sorted(pins.items())))
    partial = folder / ".partial"
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()
    result = FetchResult(name=name, folder=folder, files=paths, sha256=shas)
    if entry.get("image_urls"):
        from dermkit.data.url_images import fetch_listed_images

        result.images = fetch_listed_images(folder, entry["image_urls"], release=name, progress=progress,
                                            retries=retries, timeout=min(timeout, 30), backoff=backoff,
                                            **(image_options or {}))
    if out is not None:
        if entry.get("archive_note") and any(p.suffix.lower() == ".rar" for p in paths):
            note = " ".join(str(entry["archive_note"]).split())
            raise DataError(f"{name}: downloaded and verified into {folder}. {note}")
        result.imported = import_release(name, folder, out, progress=progress, **(import_options or {}))
    return result
