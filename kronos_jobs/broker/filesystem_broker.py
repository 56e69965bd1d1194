"""kombu's filesystem transport with atomic publishing: the broker of the embedded default.

kombu's own `Channel._put` creates the message file under its final `*.msg` name and only then
writes the body, and `_get` takes the first matching file without a lock. Under load a consumer
can claim the file between the two steps, read zero bytes, and the worker dies with
"Unrecoverable error: JSONDecodeError" (seen in bench/queue.py on a busy 2-core machine). Here the
body is written to a hidden temporary file in the same folder and renamed into place: a rename is
atomic on one file system, so a consumer sees either no message or the whole message.

Consuming was already safe: `_get` renames the file into the processed folder, so exactly one
consumer wins each message (celery_app.py keeps that folder on the same file system).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

# Used as `broker_transport` with broker_url "filesystem://" (celery_app.py).
TRANSPORT_PATH = "kronos_jobs.broker.filesystem_broker:Transport"


class Channel(filesystem.Channel):
    """Filesystem channel whose messages appear in the data folder complete or not at all."""

    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot and no ".msg" suffix: `_get` never matches a file still being written.
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb", buffering=0) as handle:
                handle.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
