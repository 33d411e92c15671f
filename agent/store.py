"""The artifact store: verified bundles on disk, atomic activation and instant rollback.

Layout under the state dir:

    bundles/{bundle_id}-{nonce}/   a verified bundle: manifest.json, ladder.json, {sha256}.{ext}
    current -> bundles/…           the bundle being served (symlink, swapped atomically)
    previous -> bundles/…          the one before, kept for instant rollback
    staging/                       bundles being assembled (wiped at start)
    downloads/{sha256}.part        partial downloads, resumed with HTTP Range

A directory appears under `bundles/` only by renaming a complete, fsynced, verified staging
directory, so whatever a crash interrupts, `current` names a bundle that was verified whole.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import TypeAdapter, ValidationError

from lepton_edge.agent.config import StoreSettings
from lepton_edge.shared.bundle import verify_bundle
from lepton_edge.shared.errors import BundleInvalid, SignatureError
from lepton_edge.shared.manifest import MANIFEST_FILE, Manifest, ProbeSet, Variant, sha256_file
from lepton_edge.shared.messages import PowerLevel
from lepton_edge.shared.signing import load_public_key, verify_manifest

log = logging.getLogger(__name__)

LADDER_FILE = "ladder.json"
CHUNK = 64 * 1024
MB = 1024 * 1024
_LADDER = TypeAdapter(dict[PowerLevel, str])

#: Crash tests set this to a step name; the process SIGKILLs itself there (see FAILPOINTS).
FAILPOINT_ENV = "LEPTON_AGENT_FAILPOINT"
FAILPOINTS = (
    "download:after-first-chunk",
    "activate:staged",
    "activate:renamed",
    "activate:previous-swapped",
    "activate:current-swapped",
)


class StoreError(Exception):
    """A bundle that cannot be fetched or trusted; the message says why in one line."""


def _failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == name:
        log.warning("failpoint %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory."""

    dir: Path
    manifest: Manifest
    ladder: dict[PowerLevel, str]

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def variant_path(self, variant_id: str) -> Path:
        return self.dir / self.manifest.variant(variant_id).filename

    def variant_ids(self) -> list[str]:
        """Variants whose files this directory holds."""
        return [v.id for v in self.manifest.variants if (self.dir / v.filename).is_file()]


class ArtifactStore:
    def __init__(
        self,
        state_dir: Path,
        public_key: Ed25519PublicKey | None,
        settings: StoreSettings | None = None,
        *,
        key_hint: str = "",
    ) -> None:
        self.root = state_dir
        self.public_key = public_key
        self.key_hint = key_hint
        self.settings = settings or StoreSettings()
        self.bundles = state_dir / "bundles"
        self.staging = state_dir / "staging"
        self.downloads = state_dir / "downloads"
        for d in (self.bundles, self.staging, self.downloads):
            d.mkdir(parents=True, exist_ok=True)

    # -- reading ------------------------------------------------------------------------

    def _key(self) -> Ed25519PublicKey:
        if self.public_key is None:
            raise StoreError(
                f"no pinned controller key{self.key_hint}: enroll the device or set "
                "controller_key_file"
            )
        return self.public_key

    def load(self, bundle_dir: Path, *, rehash: bool = True) -> Bundle:
        """Read and re-verify a bundle directory with `shared.bundle.verify_bundle`: signature,
        the ladder's files present, every file's size (and with `rehash` its sha256)."""
        try:
            ladder = _LADDER.validate_json((bundle_dir / LADDER_FILE).read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            raise StoreError(f"{bundle_dir.name}: unreadable ladder: {exc}") from None
        try:
            manifest = verify_bundle(
                bundle_dir, self._key(), required=set(ladder.values()), rehash=rehash
            )
        except BundleInvalid as exc:
            raise StoreError(f"{bundle_dir.name}: {exc}") from None
        return Bundle(bundle_dir, manifest, ladder)

    def _link_target(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        return self.root / os.readlink(link)

    def current(self) -> Bundle | None:
        target = self._link_target("current")
        return self.load(target, rehash=False) if target and target.is_dir() else None

    def previous(self) -> Bundle | None:
        target = self._link_target("previous")
        return self.load(target, rehash=False) if target and target.is_dir() else None

    def recover(self) -> Bundle | None:
        """At start: wipe half-built bundles and point `current` at the last verified one."""
        for leftover in self.staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        for tmp in self.root.glob(".link-*"):
            tmp.unlink(missing_ok=True)
        candidates: list[Path] = []
        for name in ("current", "previous"):
            target = self._link_target(name)
            if target is not None and target not in candidates:
                candidates.append(target)
        others = sorted(
            (d for d in self.bundles.iterdir() if d.is_dir() and d not in candidates),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        for candidate in candidates + others:
            if not candidate.is_dir():
                continue
            try:
                bundle = self.load(candidate)
            except StoreError as exc:
                log.error("not serving %s: %s", candidate.name, exc)
                continue
            if candidate != self._link_target("current"):
                log.warning("current bundle unusable; falling back to %s", candidate.name)
                self._point("current", candidate)
            return bundle
        return None

    # -- fetching -----------------------------------------------------------------------

    def fetch(
        self,
        bundle_id: str,
        manifest_url: str,
        artifact_base_url: str,
        variant_ids: list[str],
        ladder: dict[PowerLevel, str] | None = None,
        token: str | None = None,
    ) -> Bundle:
        """Download, verify and stage a bundle; it is complete under bundles/ but not active.
        `token` is the command's download grant, sent as `Authorization: Bearer`."""
        key = self._key()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        raw = self._get_small(manifest_url, self.settings.max_manifest_bytes, headers)
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise StoreError(
                f"manifest at {manifest_url} is invalid: {where}: {err['msg']}"
            ) from None
        try:
            verify_manifest(manifest, key)
        except SignatureError as exc:
            raise StoreError(f"bad signature: {exc}") from None
        if manifest.bundle_id != bundle_id:
            raise StoreError(f"manifest is for bundle {manifest.bundle_id}, not {bundle_id}")
        ladder = dict(ladder or {})
        wanted = list(dict.fromkeys([*variant_ids, *ladder.values()]))
        try:
            variants = [manifest.variant(v) for v in wanted]
        except KeyError as exc:
            raise StoreError(str(exc.args[0])) from None

        have = self._verified_files()
        missing = [v for v in variants if v.sha256 not in have]
        self._check_space(missing)

        stage = self.staging / f"{bundle_id}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        try:
            for v in variants:
                dest = stage / v.filename
                if v.sha256 in have:
                    self._copy_verified(have[v.sha256], dest)
                else:
                    part = self._download(
                        v, artifact_base_url.rstrip("/") + "/" + v.sha256, headers
                    )
                    os.replace(part, dest)
            if manifest.probe is not None:  # small: the on-device correctness check's inputs
                self._fetch_probe(manifest.probe, artifact_base_url, stage, have, headers)
            (stage / MANIFEST_FILE).write_bytes(raw)
            (stage / LADDER_FILE).write_bytes(_LADDER.dump_json(ladder))
            for f in stage.iterdir():
                _fsync_file(f)
            _fsync_dir(stage)
            _failpoint("activate:staged")
            final = self.bundles / stage.name
            os.rename(stage, final)
            _fsync_dir(self.bundles)
            _failpoint("activate:renamed")
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return Bundle(final, manifest, ladder)

    def _fetch_probe(
        self,
        probe: ProbeSet,
        artifact_base_url: str,
        stage: Path,
        have: dict[str, Path],
        headers: dict[str, str],
    ) -> None:
        """The probe set next to the variants; without it (a controller that does not serve
        it) the bundle still deploys, and `benchmark` times without checking answers."""
        dest = stage / probe.filename
        if probe.sha256 in have:
            self._copy_verified(have[probe.sha256], dest)
            return
        try:
            part = self._download(
                probe, artifact_base_url.rstrip("/") + "/" + probe.sha256, headers, "probe set"
            )
        except StoreError as exc:
            log.warning("no probe set for the on-device check: %s", exc)
            return
        os.replace(part, dest)

    def _verified_files(self) -> dict[str, Path]:
        """sha256 -> a file already inside a verified bundle (reused instead of downloaded)."""
        found: dict[str, Path] = {}
        for d in self.bundles.iterdir():
            for f in d.glob("*.*"):
                sha = f.name.split(".", 1)[0]
                if len(sha) == 64 and f.name not in (MANIFEST_FILE, LADDER_FILE):
                    found.setdefault(sha, f)
        return found

    @staticmethod
    def _copy_verified(src: Path, dest: Path) -> None:
        try:
            os.link(src, dest)  # content-addressed and never modified in place: share it
        except OSError:
            shutil.copy2(src, dest)

    def _check_space(self, missing: list[Variant]) -> None:
        need = 0
        for v in missing:
            part = self.downloads / f"{v.sha256}.part"
            done = part.stat().st_size if part.exists() else 0
            need += max(0, v.size_bytes - done)
        free = shutil.disk_usage(self.root).free
        reserve = self.settings.min_free_mb * MB
        if free - need < reserve:
            raise StoreError(
                f"not enough disk space in {self.root}: need {need / MB:.1f} MB plus "
                f"{self.settings.min_free_mb} MB reserve, {free / MB:.1f} MB free"
            )

    def _get_small(self, url: str, limit: int, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(url, headers=headers)
        attempts = self.settings.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.settings.http_timeout_s) as resp:
                    data: bytes = resp.read(limit + 1)
                    size = resp.headers.get("Content-Length")
                if size is not None and len(data) < int(size):  # the server went away mid-body
                    raise http.client.IncompleteRead(data, int(size) - len(data))
                break
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == attempts:  # a refusal is an answer: no retry
                    raise StoreError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if attempt == attempts:
                    raise StoreError(f"GET {url} failed: {_why(exc)}") from None
            time.sleep(_backoff(attempt))
        if len(data) > limit:
            raise StoreError(f"GET {url}: larger than {limit} bytes")
        return data

    def _download(
        self, variant: Variant | ProbeSet, url: str, headers: dict[str, str], what: str = ""
    ) -> Path:
        """Download to downloads/{sha}.part, resuming what is there; return the verified part."""
        label = what or getattr(variant, "id", "file")
        part = self.downloads / f"{variant.sha256}.part"
        last_error = ""
        for attempt in range(1, self.settings.download_attempts + 1):
            try:
                self._download_once(url, part, variant.size_bytes, headers)
                break
            except StoreError:
                raise
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                last_error = _why(exc)
                log.warning("download of %s, attempt %d: %s", label, attempt, last_error)
                if attempt < self.settings.download_attempts:
                    time.sleep(_backoff(attempt))
        else:
            raise StoreError(
                f"download of variant {label} from {url} failed after "
                f"{self.settings.download_attempts} attempts: {last_error}"
            )
        digest = sha256_file(part)
        if digest != variant.sha256:
            part.unlink(missing_ok=True)
            raise StoreError(
                f"variant {label}: sha256 of the download is {digest[:16]}…, the signed "
                f"manifest says {variant.sha256[:16]}…; artifact rejected"
            )
        _fsync_file(part)
        return part

    def _download_once(self, url: str, part: Path, size: int, headers: dict[str, str]) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return
        request = urllib.request.Request(url, headers=headers)
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(request, timeout=self.settings.http_timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                part.unlink()  # our part is not a prefix the server knows; start over
                raise OSError("server refused the range; restarting") from None
            raise StoreError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
        with resp:
            mode = "ab"
            if have and resp.status != 206:
                mode, have = "wb", 0  # server ignored Range: take the whole file
            elif have and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise OSError(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            first = True
            with part.open(mode) as out:
                while chunk := resp.read1(CHUNK):
                    have += len(chunk)
                    if have > size:
                        part.unlink(missing_ok=True)
                        raise StoreError(f"GET {url}: longer than the {size} bytes signed for")
                    out.write(chunk)
                    if first:
                        out.flush()
                        _failpoint("download:after-first-chunk")
                        first = False
        if have < size:
            raise OSError(f"connection closed after {have} of {size} bytes")

    # -- activation -----------------------------------------------------------------------

    def _point(self, name: str, target: Path) -> None:
        """Atomically make symlink `name` point at `target` (relative, survives moving root)."""
        tmp = self.root / f".link-{name}-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)

    def activate(self, bundle: Bundle) -> Bundle | None:
        """Make `bundle` current, the old current previous; GC the rest. Returns the old one."""
        old = self._link_target("current")
        if old is not None and old.resolve() == bundle.dir.resolve():
            return self.previous()
        if old is not None and old.is_dir():
            self._point("previous", old)
            _failpoint("activate:previous-swapped")
        self._point("current", bundle.dir)
        _failpoint("activate:current-swapped")
        self.gc()
        return self.load(old, rehash=False) if old is not None and old.is_dir() else None

    def rollback(self) -> Bundle:
        """Swap current and previous; raise `StoreError` if there is no previous bundle."""
        prev = self._link_target("previous")
        cur = self._link_target("current")
        if prev is None or not prev.is_dir():
            raise StoreError("no previous bundle to roll back to")
        bundle = self.load(prev)
        self._point("current", prev)
        if cur is not None and cur.is_dir():
            self._point("previous", cur)
        return bundle

    def gc(self, keep: set[Path] | None = None) -> list[str]:
        """Delete bundles other than current, previous and `keep`; old partial downloads."""
        protected = {p.resolve() for p in (keep or set())}
        for name in ("current", "previous"):
            target = self._link_target(name)
            if target is not None:
                protected.add(target.resolve())
        removed = []
        for d in self.bundles.iterdir():
            if d.resolve() not in protected:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        day_ago = time.time() - 86400
        for part in self.downloads.glob("*.part"):
            with contextlib.suppress(OSError):
                if part.stat().st_mtime < day_ago:
                    part.unlink()
        if removed:
            log.info("removed old bundles %s", removed)
        return removed


def _backoff(attempt: int) -> float:
    """Seconds before try `attempt` + 1: 0.5, 1, 2, 4, 8, 8, …"""
    return float(min(8.0, 0.5 * 2 ** (attempt - 1)))


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, socket.timeout | TimeoutError):
        return "stalled: no data within the timeout"
    return str(exc) or exc.__class__.__name__


def read_public_key(path: Path) -> Ed25519PublicKey | None:
    """The pinned controller key at `path`, or None when the device is not enrolled yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return load_public_key(data)
