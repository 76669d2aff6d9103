"""File transport: IPFIX files (RFC 5655), a plain stream of IPFIX messages.

Every file opens with the template message, so each file decodes alone.
Rotation: when rotate_bytes or rotate_s (wall clock) is set, output goes to
PATH.000001, PATH.000002, ... (a new file before a message would cross
rotate_bytes, or once rotate_s has passed); without rotation, to PATH.
Files are written to NAME.part and renamed when complete (rotation or
close), so a reader never sees a half-written file under its final name.

Whole messages only: each message is one write() at a known offset; when a
write fails part-way (ENOSPC, EDQUOT, EIO), the file is cut back to the end
of the last whole message (ftruncate), so it always decodes to its last
message, and the message's records are not sent (`disk_full`, or
`file_error`). The next message tries again. A file that could not be
created (unwritable directory) counts its records as `file_error`; the
next rotation (or the next message without rotation) tries to create it
again. At close the file is renamed to its final name even after such
errors: it is whole.
"""
from __future__ import annotations

import errno
import os
import time

from flowprobe.exporters.transports import Transport


class FileTransport(Transport):
    name = "file"

    def __init__(self, path: str, rotate_bytes: int = 0, rotate_s: float = 0.0):
        self.path = path
        super().__init__()
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.fh = None
        self.cur = None
        self.index = 0
        self.file_bytes = 0
        self.opened_at = 0.0
        self.files = []           # completed files, in order

    def describe(self):
        return f"file://{self.path}"

    @property
    def rotating(self) -> bool:
        return bool(self.rotate_bytes or self.rotate_s)

    def open(self):
        d = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            self.log.warning("export_file_dir_failed", path=d, error=str(e))
        self._new_file()

    def _new_file(self):
        self._finish_file()
        if self.rotating:
            self.index += 1
            self.cur = f"{self.path}.{self.index:06d}"
        else:
            self.cur = self.path
        try:
            self.fh = open(self.cur + ".part", "wb", buffering=0)
        except OSError as e:
            self.fh = None
            self.send_errors += 1
            self.log.warning("export_file_open_failed", path=self.cur, error=str(e))
            return
        self.file_bytes = 0
        self.opened_at = time.monotonic()
        self.streams_started += 1
        start = self._stream_start_message(None)
        if start:
            self._write(start, 0)
            if self.file_bytes == 0:    # no templates: the file could not decode
                self.fh.close()
                self.fh = None
                try:
                    os.unlink(self.cur + ".part")
                except OSError:
                    pass

    def _finish_file(self):
        if self.fh is None:
            return
        try:
            self.fh.close()
            os.replace(self.cur + ".part", self.cur)
            self.files.append(self.cur)
        except OSError as e:
            self.send_errors += 1
            self.log.warning("export_file_close_failed", path=self.cur, error=str(e))
        self.fh = None

    def _write(self, message, nrecords):
        if self.fh is None and self.cur is not None and nrecords:
            self._new_file()            # retry creating it
        if self.fh is None:
            self.not_sent(nrecords, "file_error")
            return
        view = memoryview(message)
        try:
            while view:
                view = view[self.fh.write(view):]
        except OSError as e:
            self.send_errors += 1
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            self.not_sent(nrecords, "disk_full" if full else "file_error")
            self._cut_back()
            self.log.warning("export_file_write_failed", path=self.cur, error=str(e))
            return
        self.file_bytes += len(message)
        self.messages_sent += 1
        self.bytes_sent += len(message)
        self.records_sent += nrecords

    def _cut_back(self) -> None:
        """Remove a partial message: the file ends at its last whole one."""
        try:
            os.ftruncate(self.fh.fileno(), self.file_bytes)
            self.fh.seek(self.file_bytes)
        except OSError as e:
            self.log.warning("export_file_truncate_failed", path=self.cur, error=str(e))

    def send(self, message, nrecords):
        if self.rotating and self.file_bytes > 0 and (
                (self.rotate_bytes and self.file_bytes + len(message) > self.rotate_bytes)
                or (self.rotate_s and time.monotonic() - self.opened_at >= self.rotate_s)):
            self._new_file()
        self._write(message, nrecords)

    def close(self):
        self._finish_file()
