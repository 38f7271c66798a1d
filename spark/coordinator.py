"""The driver's end of an all-reduce segment: rendezvous, progress and liveness.

The driver runs a `Coordinator` (a ZeroMQ ROUTER socket on its own address,
served by a thread) for every attempt of a segment. Each task of the segment
connects a `CoordinatorClient` to it and
- says hello with the address of its all-reduce inbox; once all K have, every
  task gets the K addresses (the rendezvous: one per segment, a few
  milliseconds, where Spark's own BarrierTaskContext.allGather polls once a
  second);
- rank 0 sends the metrics rows of the iterations it finished, every half
  second (progress lines while the segment runs; the rows that count come
  back with the results);
- a thread of every task sends a beat every second (not when SIGSTOPped),
  rank 0's with how far it is in its iteration (a progress line for long
  iterations).

The coordinator calls `on_stall(reason)` once when a task that said hello
has sent nothing for `timeout` seconds, or when the K tasks have not all
said hello within `start_timeout`: the driver then cancels the segment.
Every message carries the attempt's secret token; others are dropped.
"""
import json
import threading
import time

import zmq

BEAT_EVERY = 1.0
ROWS_EVERY = 0.5


class Coordinator:
    def __init__(self, host, size, token, timeout, start_timeout, on_row=None, on_stall=None,
                 on_progress=None):
        self.size, self.token = int(size), bytes(token)
        self.timeout, self.start_timeout = float(timeout), float(start_timeout)
        self.on_row, self.on_stall, self.on_progress = on_row, on_stall, on_progress
        self.failure = None                      # why the segment was cancelled, if it was
        self.hosts = {}                          # rank -> the task's node
        self._context = zmq.Context(io_threads=1)
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="spark-cnn-coordinator",
                                        daemon=True)
        self._thread.start()

    def _serve(self):
        hello, seen, started = {}, {}, time.monotonic()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(200):
                    identity, token, kind, body = self._receive()
                    if token != self.token:
                        continue
                    rank = int(body.get("rank", -1))
                    seen[rank] = time.monotonic()
                    if kind == "hello" and 0 <= rank < self.size:
                        hello[rank] = (identity, body["address"])
                        self.hosts[rank] = body.get("host", "?")
                        if len(hello) == self.size:
                            reply = json.dumps([hello[r][1] for r in range(self.size)]).encode()
                            for r in range(self.size):
                                self._socket.send_multipart([hello[r][0], b"peers", reply])
                    elif kind == "rows" and self.on_row is not None:
                        for row in body["rows"]:
                            self.on_row(row)
                    elif (kind == "beat" and rank == 0 and body.get("progress")
                          and self.on_progress is not None):      # rank 0 speaks for all
                        self.on_progress(*body["progress"])
                self._watch(hello, seen, started)
        finally:
            self._socket.close(linger=0)

    def _receive(self):
        frames = self._socket.recv_multipart()
        if len(frames) != 4:
            return None, None, None, {}
        identity, token, kind, body = frames
        try:
            return identity, token, kind.decode(), json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return None, None, None, {}

    def _watch(self, hello, seen, started):
        if self.failure is not None:
            return
        now = time.monotonic()
        if len(hello) < self.size and now - started > self.start_timeout:
            self._stall(f"{len(hello)} of the segment's {self.size} tasks started within "
                        f"{self.start_timeout:g} s")
            return
        for rank in hello:
            if now - seen.get(rank, now) > self.timeout:
                self._stall(f"task {rank} of the segment (on {self.hosts.get(rank, '?')}) sent "
                            f"nothing for {self.timeout:g} s (SPARK_CNN_IO_TIMEOUT): stalled "
                            "or gone")
                return

    def _stall(self, reason):
        self.failure = reason
        if self.on_stall is not None:
            self.on_stall(reason)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Counter:
    """How far a task is in its current iteration: the beats carry it to the driver."""

    def __init__(self):
        self.iteration, self.done, self.total = None, 0, 0

    def start(self, iteration, total):
        self.iteration, self.done, self.total = iteration, 0, total

    def update(self, n=1):
        self.done += n

    def now(self):
        """[iteration, fraction done] of the iteration under way, or None."""
        if self.iteration is None or not self.total:
            return None
        return [self.iteration, self.done / self.total]


class CoordinatorClient:
    """A task's end: rendezvous, rows, and a beat every second from a thread of its own."""

    def __init__(self, address, token, rank, timeout):
        self.address, self.token, self.rank = address, bytes(token), int(rank)
        self.timeout = float(timeout)
        self._context = zmq.Context(io_threads=1)
        self._socket = self._dealer()
        self._socket.setsockopt(zmq.LINGER, 1000)    # rows still queued at the end: 1 s to go
        self._rows, self._sent = [], time.monotonic()
        self.progress = Counter()
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, name="spark-cnn-beat", daemon=True)
        self._beats.start()

    def _dealer(self):
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.address)
        return socket

    def _send(self, socket, kind, **body):
        socket.send_multipart([self.token, kind.encode(),
                               json.dumps(dict(body, rank=self.rank)).encode()])

    def _beat(self):
        socket = self._dealer()                      # ZeroMQ sockets are not shared by threads
        try:
            while not self._stop.wait(BEAT_EVERY):
                self._send(socket, "beat", progress=self.progress.now())
        finally:
            socket.close(linger=0)

    def rendezvous(self, inbox, host):
        """Say hello with this task's inbox address -> every task's, by rank.

        Waits at most `timeout` seconds for the other tasks' hellos."""
        self._send(self._socket, "hello", address=inbox, host=host)
        if not self._socket.poll(self.timeout * 1000):
            raise TimeoutError(f"all-reduce: the other tasks of the segment did not report "
                               f"to the driver at {self.address} within {self.timeout:g} s "
                               "(SPARK_CNN_IO_TIMEOUT)")
        kind, body = self._socket.recv_multipart()
        if kind != b"peers":
            raise RuntimeError(f"all-reduce: unexpected answer {kind!r} from the driver")
        return json.loads(body)

    def send_row(self, row, flush=False):
        """Queue a metrics row; the queue goes to the driver at most every ROWS_EVERY
        seconds (progress lines need no more, and a send per iteration costs the loop)."""
        self._rows.append(row)
        now = time.monotonic()
        if flush or now - self._sent >= ROWS_EVERY:
            self._send(self._socket, "rows", rows=self._rows)
            self._rows, self._sent = [], now

    def close(self):
        if self._rows:
            self._send(self._socket, "rows", rows=self._rows)
        self._stop.set()
        self._beats.join(timeout=5)
        self._socket.close()
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
