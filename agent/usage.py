"""Usage metering per SFC (paper §VI "Billing"; docs/observability.md "Usage").

What an SFC is billed for on a node: the packets its instances processed and their bytes (the
router's counters: out + NF drops, bytes as the chain returned them), its instances' CPU time
(TSC cycles inside batches, pool_ctl.h busy_cycles) and its state: its tables' bytes
integrated over time (byte-seconds), sampled every period. Packets the router dropped before
an instance saw them (no instance, a failed SFC, a dead instance's queue) are not billed.

Node.usage_counters() gives this node's lifetime counters; the UsageMeter here turns them into
totals that survive agent restarts: every period it adds what changed since the last sample
(a counter that went back counts from zero, as load reports do) and writes the totals with a
per-minute history (24 h, for `--since`) to a small JSON file in the node's state directory,
atomically (a file beside it, renamed over it). A restarted agent loads the file and adds to
it; a killed agent loses at most the last period. Totals are per SFC name: an SFC deleted and
applied again carries on from its old totals, and those of an SFC the node has not run for the
history's length (and that has no usage in it) are forgotten.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time

from serpens.runtime_cy import _dataplane as dp

log = logging.getLogger(__name__)

BUCKET_S = 60                   # history granularity: `--since` counts from whole minutes
RETENTION_S = 24 * 3600         # history kept (and the furthest back --since may reach)
MAX_SFCS = 1024                 # SFC names with totals kept (the least recently used go)
FORMAT = 1


class BusyCycles:
    """CPU time of one SFC's instances in TSC cycles, never decreasing: what ended instances
    used plus what running ones reported so far. The figure is written by the instance's
    process, where NFs could scribble on it, so each instance's is kept monotonic and never
    above the wall time since its start."""

    def __init__(self):
        self._lock = threading.Lock()
        self._done = 0
        self._live: dict[int, list] = {}   # key -> [PoolCtl, TSC at start, cycles seen]

    def begin(self, key: int, ctl):
        """Instance `key` started (its control block's busy_cycles counts from 0)."""
        with self._lock:
            self._live[key] = [ctl, dp.rdtsc(), 0]

    def end(self, key: int, final: int | None = None):
        """Instance `key` ended: its last figure (`final`, or its control block's now) is
        kept. Call before its pool process may run another instance."""
        with self._lock:
            entry = self._live.pop(key, None)
            if entry is not None:
                self._done += self._seen(entry, final)

    def cycles(self) -> int:
        with self._lock:
            return self._done + sum(self._seen(e) for e in self._live.values())

    @staticmethod
    def _seen(entry: list, value: int | None = None) -> int:
        ctl, started, seen = entry
        value = ctl.busy_cycles if value is None else value
        entry[2] = max(seen, min(value, dp.rdtsc() - started))
        return entry[2]


def table_bytes(state_dir: str, namespaces) -> int:
    """Bytes of the state table files (replicas included) of NF namespaces `namespaces`."""
    total = 0
    for ns in namespaces:
        try:
            with os.scandir(os.path.join(state_dir, ns)) as it:
                for f in it:
                    if f.name.endswith(".tbl") and not f.name.startswith("."):
                        try:
                            total += f.stat().st_size
                        except FileNotFoundError:
                            pass  # dropped meanwhile
        except (FileNotFoundError, NotADirectoryError):
            pass  # no table yet
    return total


def _zero() -> list:
    return [0, 0, 0.0, 0.0]


def _as_dict(v: list) -> dict:
    return {"packets": int(v[0]), "bytes": int(v[1]), "cpu_seconds": float(v[2]),
            "state_byte_seconds": float(v[3])}


def _add(into: list, v) -> None:
    for k in range(4):
        into[k] += v[k]


class UsageMeter:
    """Per-SFC usage totals of one node, persisted in `path`. `counters()` returns, per SFC
    name, {packets, bytes, cpu_seconds, state_bytes}: the first three since the node started
    (never decreasing while it runs), state_bytes its tables' bytes now."""

    def __init__(self, counters, path: str, *, period_s: float = 1.0, clock=time.time,
                 retention_s: float = RETENTION_S):
        self.counters, self.path, self.period_s = counters, path, period_s
        self.clock, self.retention_s = clock, retention_s
        self._lock = threading.Lock()          # the figures (sample() vs usage())
        self._sampling = threading.Lock()      # one sample at a time, each written in turn
        self._totals: dict[str, list] = {}
        self._last_seen: dict[str, float] = {}      # wall time an SFC last ran here
        self._buckets: dict[int, dict[str, list]] = {}  # minute start -> SFC -> usage
        self._prev: dict[str, dict] = {}            # counters() at the last sample
        self._prev_t = None                          # monotonic time of the last sample
        self._running: set[str] = set()             # SFCs the last sample found
        self._stop = threading.Event()
        self._thread = None
        self.samples = 0
        self._write_error = ""   # the last write's failure (logged once until one succeeds)
        self._written_at = None  # wall time of the last write (None: none yet)
        self._load()

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self):
        if self.period_s and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usage-meter", daemon=True)
            self._thread.start()
        return self

    def close(self):
        """A last sample, written, and the sampling thread stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.sample(write=True)

    def _run(self):
        while not self._stop.wait(self.period_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - metering must outlive any one mistake
                log.exception("usage sample")

    # ---- sampling -------------------------------------------------------------------------

    def sample(self, write: bool = False):
        """Add what every SFC used since the last sample; write the totals if they changed
        (or `write`, or a minute passed: the last-seen times move on)."""
        with self._sampling:  # (an older reading applied after a newer one would look reset)
            self._sample(write)

    def _sample(self, write: bool):
        raw = self.counters()
        now, mono = self.clock(), time.monotonic()
        with self._lock:
            dt = 0.0 if self._prev_t is None else mono - self._prev_t
            self._prev_t = mono
            bucket = self._buckets.setdefault(int(now // BUCKET_S * BUCKET_S), {})
            changed = write or self._written_at is None or now - self._written_at >= BUCKET_S
            for name, c in raw.items():
                prev = self._prev.get(name)
                delta = [self._grew(c, prev, "packets"), self._grew(c, prev, "bytes"),
                         self._grew(c, prev, "cpu_seconds"),
                         # trapezoid: the tables' bytes at both ends of the period
                         (c["state_bytes"] + (prev["state_bytes"] if prev else 0)) / 2 * dt]
                self._prev[name] = c
                self._last_seen[name] = now
                if any(delta):
                    _add(self._totals.setdefault(name, _zero()), delta)
                    _add(bucket.setdefault(name, _zero()), delta)
                    changed = True
            self._running = set(raw)
            for name in set(self._prev) - set(raw):  # gone from the node: no state billed
                self._prev[name] = dict(self._prev[name], state_bytes=0)
            self._prune(now)
            doc = self._document(now) if changed else None
            if changed:
                self._written_at = now
            self.samples += 1
        if doc is not None:
            self._write(doc)

    @staticmethod
    def _grew(now: dict, prev: dict | None, key: str):
        before = prev[key] if prev else 0
        # a counter that went back was reset: it counts from zero
        return now[key] - before if now[key] >= before else now[key]

    def _prune(self, now: float):
        for t in [t for t in self._buckets if t < now - self.retention_s - BUCKET_S]:
            del self._buckets[t]
        recent = {n for b in self._buckets.values() for n in b}
        for name in [n for n, t in self._last_seen.items()
                     if t < now - self.retention_s and n not in recent]:
            self._totals.pop(name, None)
            del self._last_seen[name]
        if len(self._totals) > MAX_SFCS:
            for name in sorted(self._totals, key=lambda n: self._last_seen.get(n, 0))[
                    :len(self._totals) - MAX_SFCS]:
                self._totals.pop(name)
                self._last_seen.pop(name, None)

    # ---- reading --------------------------------------------------------------------------

    def usage(self, sfc: str | None = None, since: float | None = None
              ) -> tuple[dict[str, dict], float | None]:
        """({sfc: {packets, bytes, cpu_seconds, state_byte_seconds}}, start): the totals, or
        with `since` (Unix time) what was used from the start of its minute on (`start`).
        ValueError naming `since` when it is in the future or beyond the history."""
        now = self.clock()
        with self._lock:
            if since is None:
                rows = {n: _as_dict(v) for n, v in self._totals.items()}
                start = None
            else:
                # (a minute of leeway both ways: the caller's clock is another machine's)
                if since > now + 60:
                    raise ValueError("since: in the future")
                if since < now - self.retention_s - 60:
                    raise ValueError(f"since: at most {self.retention_s / 3600:g} h back "
                                     "(the per-minute history kept)")
                start = since // BUCKET_S * BUCKET_S
                acc: dict[str, list] = {n: _zero() for n in self._running}  # (idle: 0s)
                for t, b in self._buckets.items():
                    if t >= start:
                        for n, v in b.items():
                            _add(acc.setdefault(n, _zero()), v)
                rows = {n: _as_dict(v) for n, v in acc.items()}
        if sfc:
            rows = {n: v for n, v in rows.items() if n == sfc}
        return rows, start

    # ---- the file -------------------------------------------------------------------------

    def _document(self, now: float) -> dict:
        return {"format": FORMAT, "saved_at": now,
                "totals": {n: v for n, v in self._totals.items()},
                "last_seen": self._last_seen,
                "minutes": [[t, b] for t, b in sorted(self._buckets.items()) if b]}

    def _write(self, doc: dict):
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
            except OSError as e:
                if e.errno not in (22, 95):  # EINVAL/EOPNOTSUPP: hugetlbfs has no write()
                    raise
                from .state_manager import _write_file  # through a mapping, NUL-padded
                _write_file(tmp, data)
            os.replace(tmp, self.path)
        except OSError as e:
            if str(e) != self._write_error:  # (a full filesystem: once, not every period)
                log.warning("usage: writing %s: %s (totals kept in memory)", self.path, e)
                self._write_error = str(e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        if self._write_error:
            log.info("usage: %s written again", self.path)
            self._write_error = ""

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                data = f.read().rstrip(b"\0")
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("usage: reading %s: %s; counting from zero", self.path, e)
            return
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
            totals = {str(n): _checked(v) for n, v in doc["totals"].items()}
            minutes = {int(t): {str(n): _checked(v) for n, v in b.items()}
                       for t, b in doc["minutes"]}
            last_seen = {str(n): float(t) for n, t in doc.get("last_seen", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            aside = f"{self.path}.bad"
            log.error("usage: %s is not a usage file (%s); kept as %s, counting from zero",
                      self.path, e, aside)
            os.replace(self.path, aside)
            return
        self._totals, self._buckets = totals, minutes
        self._last_seen = {n: last_seen.get(n, doc.get("saved_at", 0)) for n in totals}
        log.info("usage: totals of %d SFCs loaded from %s", len(totals), self.path)


def _checked(v) -> list:
    if not (isinstance(v, list) and len(v) == 4 and
            all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v)):
        raise ValueError(f"bad usage entry {v!r}")
    return [int(v[0]), int(v[1]), float(v[2]), float(v[3])]
