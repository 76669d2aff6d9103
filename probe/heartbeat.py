"""Shared-memory slots: one per reader, written by the reader, read by the supervisor.

The supervisor maps one anonymous shared region before it forks any reader;
every reader inherits it and writes only its own slot. A slot holds

    header (64 bytes, little endian)
      pid        int64    the reader's pid
      state      uint32   STARTING, RUNNING, STOPPING (see below)
      generation uint32   the config generation the reader runs with
      beat_ns    uint64   CLOCK_MONOTONIC of the last heartbeat (system-wide)
      seq        uint64   seqlock of the stats snapshot: odd while written
      length     uint32   bytes of the JSON snapshot
      held       3 x uint64  flows, packets, octets the reader holds and has
                          not exported yet (written with every beat)
    stats      (SLOT_BYTES - 64) a JSON snapshot of every counter

The heartbeat is a few 8-byte stores per loop turn, idle or not, and after
every batch of records handed to the exporters: its age is the time since
the reader last made progress, and the held counters are what a reader
killed now would lose (exact to one batch of records). The beat and the
held counters are aligned 64-bit words written and read whole through a
ctypes view (one store, one load). struct.pack_into zeroes the word before
writing it: a supervisor reading a reader that beats often saw beat 0 (in a
test, 40,959 of 300,000 reads), took it for a reader not yet started and
timed it from its start, killing healthy readers after the 30 s start-up
grace with heartbeat_age_s = their uptime. The snapshot is rewritten a
few times per second (bounded size; a snapshot that does not fit is
replaced by ``{"truncated": true}``). Readers of the snapshot retry while the
seqlock is odd or changed (one writer per slot, so no lock is needed).
"""
from __future__ import annotations

import ctypes
import json
import mmap
import struct
import time
from typing import Any

HEADER = struct.Struct("<qIIQQI")       # pid, state, generation, beat_ns, seq, length
HEADER_BYTES = 64
SLOT_BYTES = 32 * 1024
MAX_SLOTS = 256

EMPTY, STARTING, RUNNING, STOPPING = 0, 1, 2, 3
STATE_NAMES = {EMPTY: "empty", STARTING: "starting", RUNNING: "running",
               STOPPING: "stopping"}

_PID, _STATE, _GEN, _BEAT, _SEQ, _LEN, _HELD = 0, 8, 12, 16, 24, 32, 40
_HEADER_WORDS = ctypes.c_uint64 * (HEADER_BYTES // 8)   # little endian (x86-64, arm64)


class Slot:
    """One reader's view (or the supervisor's view) of one slot."""

    def __init__(self, buf: mmap.mmap, index: int) -> None:
        self._buf = buf
        self.index = index
        self._off = index * SLOT_BYTES
        # the header as aligned 64-bit words: whole stores and loads
        self._words = _HEADER_WORDS.from_buffer(buf, self._off)

    # -- reader side -----------------------------------------------------
    def reset(self, pid: int, generation: int) -> None:
        """A (re)started reader claims the slot; the old snapshot stays
        readable until the first publish (supervisor keeps it as 'last').
        The beat is written before the pid: the supervisor takes a slot
        whose pid matches as started, and must never see it with the zero
        beat of a cleared slot (it would read as decades-old)."""
        self.beat((0, 0, 0))
        struct.pack_into("<qII", self._buf, self._off + _PID, pid, STARTING, generation)

    def beat(self, held: tuple[int, int, int] | None = None) -> None:
        """Progress: the beat time, and what the reader now holds unexported."""
        w = self._words
        if held is not None:
            w[_HELD // 8], w[_HELD // 8 + 1], w[_HELD // 8 + 2] = held
        w[_BEAT // 8] = time.monotonic_ns()

    def set_state(self, state: int) -> None:
        struct.pack_into("<I", self._buf, self._off + _STATE, state)

    def set_generation(self, generation: int) -> None:
        struct.pack_into("<I", self._buf, self._off + _GEN, generation)

    def publish(self, stats: dict[str, Any]) -> None:
        body = json.dumps(stats, separators=(",", ":")).encode()
        if len(body) > SLOT_BYTES - HEADER_BYTES:
            body = b'{"truncated":true}'
        off = self._off
        (seq,) = struct.unpack_from("<Q", self._buf, off + _SEQ)
        struct.pack_into("<Q", self._buf, off + _SEQ, seq + 1)          # odd: writing
        self._buf[off + HEADER_BYTES:off + HEADER_BYTES + len(body)] = body
        struct.pack_into("<I", self._buf, off + _LEN, len(body))
        struct.pack_into("<Q", self._buf, off + _SEQ, seq + 2)          # even: done

    # -- supervisor side -------------------------------------------------
    def header(self) -> dict[str, int]:
        pid, state, gen, _, seq, length = HEADER.unpack_from(self._buf, self._off)
        beat = self._words[_BEAT // 8]
        return {"pid": pid, "state": state, "generation": gen, "beat_ns": beat,
                "seq": seq, "length": length}

    def held(self) -> dict[str, int]:
        """Flows, packets and octets the reader held at its last beat."""
        w = self._words
        flows, packets, octets = w[_HELD // 8], w[_HELD // 8 + 1], w[_HELD // 8 + 2]
        return {"flows": flows, "packets": packets, "octets": octets}

    def beat_age_s(self) -> float:
        beat = self._words[_BEAT // 8]     # before the clock: an age is never negative
        return (time.monotonic_ns() - beat) / 1e9

    def snapshot(self, tries: int = 100) -> dict[str, Any] | None:
        """The last complete stats snapshot, or None if there is none yet."""
        off = self._off
        for _ in range(tries):
            (s1,) = struct.unpack_from("<Q", self._buf, off + _SEQ)
            if s1 & 1:
                time.sleep(0)
                continue
            (length,) = struct.unpack_from("<I", self._buf, off + _LEN)
            body = bytes(self._buf[off + HEADER_BYTES:off + HEADER_BYTES + length])
            (s2,) = struct.unpack_from("<Q", self._buf, off + _SEQ)
            if s1 == s2:
                return json.loads(body) if s1 and length else None
        return None

    def clear(self) -> None:
        self._buf[self._off:self._off + HEADER_BYTES] = bytes(HEADER_BYTES)


class SlotTable:
    """The shared region: ``MAX_SLOTS`` slots, mapped before any fork."""

    def __init__(self, slots: int = MAX_SLOTS) -> None:
        self.size = slots
        # Anonymous MAP_SHARED: inherited by forked readers; pages are only
        # touched as slots are used.
        self._buf = mmap.mmap(-1, slots * SLOT_BYTES, flags=mmap.MAP_SHARED)

    def __getitem__(self, index: int) -> Slot:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return Slot(self._buf, index)

    def close(self) -> None:
        try:
            self._buf.close()
        except BufferError:    # a Slot's word view is still alive: freed with it
            pass
