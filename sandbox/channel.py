"""The channel between the executor and a worker: length-prefixed JSON, so nothing on it is unpickled.

A worker runs generated code, so whatever it sends is data to check, never code to run:

    parent -> worker  {"op": "run", "tasks": [{"task_id", "spec_json", "workdir", "markets"}, ...]} | {"op": "stop"}
    worker -> parent  {"op": "ready", "info": {...}}, then {"op": "result", "task_id", "result"} per task, in order

`result` is `ExperimentResult.to_dict()` and is read back with the strict `ExperimentResult.from_dict`.
No result carries arrays (series such as a daily RankIC travel as lists of floats in `details`), so
there is no binary part. Frames are multiprocessing's (`Connection.send_bytes`: a 4-byte big-endian
length, or -1 and an 8-byte length, then the payload), so a worker uses a plain `Connection`. The
parent reads with `FrameReader`, which never blocks: a worker that sends half a message and stops
cannot stall the parent past the wall-clock limit, and a declared length over the limit is refused
before any of the message is read. Every violation is a `ProtocolError`; executors turn it into a
`worker_crash` failure of the experiment that was running and replace the worker."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

from sandbox.result import ExperimentResult, Failure, FailureCategory, ResultSchemaError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ProtocolError",
    "FrameReader",
    "send_frame",
    "encode",
    "decode",
    "result_message",
    "read_result",
    "ready_message",
    "read_ready",
]

#: Largest message either side accepts (configurable per executor). A screening result is a few KB,
#: a model's with its daily series tens of KB.
MAX_MESSAGE_BYTES = 64 << 20
_CHUNK = 1 << 20  # bytes per read


class ProtocolError(Exception):
    """A message that breaks the protocol: oversized, not UTF-8 JSON, the wrong shape, out of order."""


# ---- messages ----------------------------------------------------------------------------------------


def encode(message: dict) -> bytes:
    """A message as compact UTF-8 JSON (NaN and infinities as JSON's common extension, as the result
    cache writes them; numpy scalars as plain numbers)."""
    return json.dumps(message, separators=(",", ":"), default=_plain).encode()


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """A message from its bytes: UTF-8 JSON holding an object with an `op`. Never runs anything."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"a message must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(f"a message of {len(data)} bytes, at most {max_bytes}")
    try:
        message = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"not UTF-8 JSON ({_first_line(exc)})") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("not a message (a JSON object with an `op`)")
    return message


def result_message(task_id: int, result: ExperimentResult, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Worker side: the message carrying `result`. A result that cannot be written as JSON, or is
    larger than the channel carries, becomes a `degenerate_output` failure (never an exception)."""
    try:
        data = encode({"op": "result", "task_id": task_id, "result": result.to_dict()})
    except (TypeError, ValueError, RecursionError) as exc:
        why = f"the result could not be sent back: {_first_line(exc)}"
    else:
        if len(data) <= max_bytes:
            return data
        why = f"the result is {len(data)} bytes; the sandbox returns at most {max_bytes}"
    bad = ExperimentResult(result.spec_hash, result.kind, failure=Failure(FailureCategory.DEGENERATE_OUTPUT, why))
    return encode({"op": "result", "task_id": task_id, "result": bad.to_dict()})


def read_result(data: bytes, task_id: int, spec_hash: str, max_bytes: int = MAX_MESSAGE_BYTES) -> ExperimentResult:
    """Parent side: the result for task `task_id` (of spec `spec_hash`), or `ProtocolError`."""
    message = decode(data, max_bytes)
    if message.keys() != {"op", "task_id", "result"} or message["op"] != "result":
        raise ProtocolError(f"expected a result message (op, task_id, result), got op {_short(message['op'])}")
    if type(message["task_id"]) is not int or message["task_id"] != task_id:
        raise ProtocolError(f"a result for task {_short(message['task_id'])} where task {task_id} was running")
    try:
        result = ExperimentResult.from_dict(message["result"])
    except ResultSchemaError as exc:
        raise ProtocolError(f"the result does not match the schema: {exc}") from None
    if result.spec_hash not in ("", spec_hash):  # "" = the worker could not name the spec (a fallback failure)
        raise ProtocolError(f"a result for spec {_short(result.spec_hash)} where {spec_hash} was running")
    return result


def ready_message(info: dict) -> bytes:
    return encode({"op": "ready", "info": info})


def read_ready(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """Parent side: a worker's start-up report {"pid", "network_isolated", "network_note", "seccomp",
    "seccomp_note", "landlock", "landlock_note", "jail"} (a layer a worker does not load is reported false)."""
    message = decode(data, max_bytes)
    info = message.get("info")
    if (
        message["op"] != "ready"
        or not isinstance(info, dict)
        or type(info.get("pid")) is not int
        or not isinstance(info.get("network_isolated"), bool)
        or not isinstance(info.get("network_note"), (str, type(None)))
        or not isinstance(info.get("seccomp", False), bool)
        or not isinstance(info.get("seccomp_note"), (str, type(None)))
        or not isinstance(info.get("landlock", False), bool)
        or not isinstance(info.get("jail", False), bool)
        or not isinstance(info.get("landlock_note"), (str, type(None)))
    ):
        raise ProtocolError("expected a ready message with the worker's pid and isolation")
    return {
        "pid": info["pid"],
        "network_isolated": info["network_isolated"],
        "network_note": info["network_note"],
        "seccomp": info.get("seccomp", False),
        "seccomp_note": info.get("seccomp_note"),
        "landlock": info.get("landlock", False),
        "landlock_note": info.get("landlock_note"),
        "jail": info.get("jail", False),
    }


# ---- frames ----------------------------------------------------------------------------------------------


class FrameReader:
    """Parent side of a worker's socket: collects frames as bytes arrive, never blocking.

    `fileno()` makes it waitable with `multiprocessing.connection.wait`; `read()` returns the frames
    completed so far; `eof` turns true once the worker's end is closed."""

    def __init__(self, sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES):
        self.sock = sock
        self.max_bytes = max_bytes
        self.eof = False
        self._buf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[bytes]:
        """Every frame completed by the bytes available now. Raises `ProtocolError` as soon as a frame
        declares a length over `max_bytes` (its body is never read)."""
        frames = self._frames()
        # at most one largest message per call: a worker that writes without pause cannot keep us here
        budget = self.max_bytes + 12
        while not self.eof and budget > 0:
            try:
                chunk = self.sock.recv(_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset by a dying worker: as good as closed
                chunk = b""
            if not chunk:
                self.eof = True
                break
            budget -= len(chunk)
            self._buf += chunk
            frames += self._frames()
        return frames

    @property
    def pending(self) -> bool:
        """Bytes received that are not yet a whole frame (or frames not yet read)."""
        return bool(self._buf)

    def _frames(self) -> list[bytes]:
        frames = []
        buf = self._buf
        while len(buf) >= 4:
            size, head = int.from_bytes(buf[:4], "big", signed=True), 4
            if size == -1:  # multiprocessing's marker for a length that needs 8 bytes
                if len(buf) < 12:
                    break
                size, head = int.from_bytes(buf[4:12], "big"), 12
            if not 0 <= size <= self.max_bytes:
                raise ProtocolError(f"a message declared as {size} bytes, at most {self.max_bytes}")
            if len(buf) < head + size:
                break
            frames.append(bytes(buf[head : head + size]))
            del buf[: head + size]
        return frames


def send_frame(sock: socket.socket, payload: bytes, timeout: float) -> None:
    """Write one frame (as `Connection.send_bytes` does) within `timeout` seconds: a worker that stops
    reading cannot block the parent. Raises `TimeoutError` or the socket's `OSError`."""
    n = len(payload)
    if n <= 0x7FFFFFFF:
        header = n.to_bytes(4, "big", signed=True)
    else:  # multiprocessing's long form: -1, then an 8-byte length
        header = (-1).to_bytes(4, "big", signed=True) + n.to_bytes(8, "big")
    data = memoryview(header + payload)
    deadline = time.monotonic() + timeout
    poller = None
    while data:
        try:
            data = data[sock.send(data, socket.MSG_DONTWAIT) :]
            continue
        except (BlockingIOError, InterruptedError):
            pass
        if poller is None:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise TimeoutError(f"the worker did not read its messages within {timeout:g} s")


# ---- helpers -----------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON for numpy scalars (`float64` already is a float; `int64` and `bool_` are not)."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
