"""kombu's filesystem transport with atomic publishing: the broker of the embedded default.

kombu's own `Channel._put` creates the message file under its final `*.msg` name and only then
writes the body, and `_get` takes the first matching file without a lock. Under load a consumer
can claim the file between the two steps, read zero bytes, and the worker dies with
"Unrecoverable error: JSONDecodeError" (seen in bench/queue.py on a busy 2-core machine). Here the
body is written to a hidden temporary file in the same folder and renamed into place: a rename is
atomic on one file system, so a consumer sees either no message or the whole message.

Consuming was already safe: `_get` renames the file into the processed folder, so exactly one
consumer wins each message (celery_app.py keeps that folder on the same file system).

Message priorities: kombu's `_get` takes the first matching file in sorted name order, so the name
starts with the message's priority step and then a zero-padded time: step 0 first (as kombu's
Redis transport serves it; core/workload.py `broker_priority` maps job priorities onto steps),
first in, first out within a step. A message without a priority is on step 0.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic_ns

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

# Used as `broker_transport` with broker_url "filesystem://" (celery_app.py).
TRANSPORT_PATH = "kronos_jobs.broker.filesystem_broker:Transport"


class Channel(filesystem.Channel):
    """Filesystem channel whose messages appear in the data folder complete or not at all."""

    def _put(self, queue, payload, **kwargs):
        step = self._get_message_priority(payload, reverse=False)  # 0..9, clamped by kombu
        # Nanoseconds, zero-padded: names sort in sending order within a step.
        name = f"{step}-{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
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


def message_step(filename: str) -> int | None:
    """The priority step of a message file in the data folder, None for anything else."""
    head, _, rest = filename.partition(".")
    if not rest.endswith(".msg") or not head[:1].isdigit() or head[1:2] != "-":
        return None
    return int(head[0])


class Transport(filesystem.Transport):
    Channel = Channel
