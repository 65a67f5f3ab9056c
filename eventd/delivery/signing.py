"""Job MACs: a job read back from a store runs only if this eventd (or its cluster) wrote it.

The dispatcher signs every durable job before it is spooled: HMAC-SHA256 over a canonical
JSON of the fields that say what runs (`id`, `rule`, `kind`, `options`, `target`, `event`).
The gate checks the MAC before every attempt, so a job written into the spool by hand (a
Redis anyone on its network can write to, a state directory) is a dead letter, never a call.
`context` (a followed action's URI, an alert's times) is not signed: it changes while the
job waits, and what it holds cannot choose a call.

Where the key comes from, in order (`load_signer`; the choice is logged once at start):
1. `EVENTD_JOB_KEY` or `EVENTD_JOB_KEY_FILE`: give the same one to every replica.
2. The memory store: a random key for this run (nothing outlives it anyway).
3. A shared store (Redis) with Docker Cloud credentials: a key derived from the credentials
   and the cluster's name. Never a key kept in Redis: whoever can write the spool could read
   it too. Every replica holds the same credentials, Redis does not; changing them leaves the
   spooled jobs unverifiable (dead letters that say so, which `deadletter retry` re-signs).
4. Otherwise (SQLite, or Redis without credentials: the docker source): `job.key` in the state
   directory, 0600, made on first start. With Redis that key is this replica's own, so a
   replica cannot deliver what another spooled: set EVENTD_JOB_KEY for a cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import orjson

from eventd.errors import ConfigError
from eventd.files import private_dir
from eventd.records import ActionJob

logger = logging.getLogger(__name__)

VERSION = "v1"
KEY_FILE = "job.key"
_KEY_FILE_MAX = 1024


#: datetimes and dataclasses as `str()`, as the stores' `json.dumps(default=str)` writes them
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def canonical(job: ActionJob) -> bytes:
    """The signed bytes: the fields as a store gives them back, keys sorted.

    The same bytes for a job and for that job read back from any store (a JSON round trip:
    tuples become lists, `str()` of what JSON cannot hold). orjson when it can (a few times
    cheaper than the json module); a non-string key, an integer past 64 bits or a lone
    surrogate make it take the round trip first, as the store would, then the json module.
    """
    fields: list[Any] = [VERSION, job.id, job.rule, job.kind, job.options, job.target, job.event]
    try:
        return orjson.dumps(fields, default=str, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        stored = json.loads(json.dumps(fields, separators=(",", ":"), default=str))
    try:
        return orjson.dumps(stored, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(stored, separators=(",", ":"), sort_keys=True).encode()


class JobSigner:
    """Signs and verifies jobs with one key; `source` says where the key came from."""

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) < 16:
            raise ConfigError("the job key must be at least 16 bytes")
        self._key = key
        self.source = source

    def __repr__(self) -> str:
        return f"JobSigner(source={self.source!r}, key='***')"

    def sign(self, job: ActionJob) -> str:
        """The MAC to store with `job`."""
        digest = hmac.new(self._key, canonical(job), hashlib.sha256).hexdigest()
        return f"{VERSION}:{digest}"

    def mac(self, purpose: str, data: bytes) -> str:
        """The MAC of other records replicas write for each other (a heartbeat): the same
        key, a different purpose, so no record's MAC is ever a job's."""
        digest = hmac.new(self._key, purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()
        return f"{VERSION}:{digest}"

    def verify(self, job: ActionJob) -> bool:
        """Whether `job.mac` is this key's MAC of the job as it is now."""
        mac = job.mac
        return isinstance(mac, str) and hmac.compare_digest(mac.encode(), self.sign(job).encode())


def load_signer(*, job_key: str | None, store: str, cluster: str, state_dir: Path,
                credentials_header: str | None, shared: bool) -> JobSigner:
    """The signer this process uses (see the module docstring for the order); logs the choice
    once, as a warning when it is not EVENTD_JOB_KEY. ConfigError if a key file is unusable."""
    if job_key:
        return JobSigner(job_key.encode(), "EVENTD_JOB_KEY")
    if store == "memory":
        return JobSigner(secrets.token_bytes(32), "a key for this run (memory store)")
    if shared and credentials_header:
        derived = hmac.new(credentials_header.encode(), f"eventd job key\0{cluster}".encode(),
                           hashlib.sha256).digest()
        logger.warning("no EVENTD_JOB_KEY: jobs in the shared store are signed with a key derived "
                       "from the Docker Cloud credentials; set EVENTD_JOB_KEY (the same on every "
                       "replica) so that changing the credentials leaves the spool deliverable")
        return JobSigner(derived, "derived from the Docker Cloud credentials")
    path = Path(state_dir) / KEY_FILE
    key = _key_file(path)
    if shared:
        logger.warning("no EVENTD_JOB_KEY: jobs in the shared store are signed with this "
                       "replica's own key (%s); another replica cannot deliver them after a "
                       "takeover: set EVENTD_JOB_KEY, the same on every replica", path)
    else:
        logger.warning("no EVENTD_JOB_KEY: spooled jobs are signed with the key in %s", path)
    return JobSigner(key, str(path))


def _key_file(path: Path) -> bytes:
    """The key in `path`, made (random, 0600) if there is none; never through a symlink."""
    private_dir(path.parent)
    flags = os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"job key {path}: {exc.strerror or exc}") from None
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    try:
        fd = os.open(path, os.O_RDONLY | flags)
    except OSError as exc:
        raise ConfigError(f"job key {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        data = handle.read(_KEY_FILE_MAX + 1)
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
        raise ConfigError(f"job key {path} must be a regular file only its owner can read (0600)")
    text = data.decode("ascii", "replace").strip()
    if len(data) > _KEY_FILE_MAX or len(text) < 32:
        raise ConfigError(f"job key {path} is not a key (remove it: a new one is made, and jobs "
                          "spooled under the old one become dead letters)")
    return text.encode()
