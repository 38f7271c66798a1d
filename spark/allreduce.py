"""Summing an array among the K tasks of one Spark barrier stage, over ZeroMQ.

Every task binds one PULL socket (its inbox) on its node's address and
connects a PUSH socket to every other task's inbox: a full mesh of K (K - 1)
links. `Mesh.allreduce(flat, round)` sums a 1-d array over the tasks in two
steps:

1. reduce-scatter: the array is cut into K pieces (`pieces(n, K)`); task r
   owns piece r, receives every other task's piece r and adds the K of them
   in rank order 0, 1, ..., K - 1;
2. all-gather: every owner sends its summed piece to every other task.

Each task sends (and receives) (K - 1) / K of the array in each step, so
2 (K - 1) / K of it per sum, whatever K is. Every element is added in rank
order whatever the timing, so all tasks get bit-identical sums, and running
the same sums again gives the same bits.

Every message carries the segment's secret token and its (round, step,
sender); a message with another token (another segment, a stray connection)
is dropped. Every wait is bounded: a peer whose part does not arrive within
`timeout` seconds raises PeerTimeout, naming it. No Spark and no I/O beyond
the sockets: the segment task (spark.segment) drives it.
"""
import struct
import time

import numpy as np
import zmq

TOKEN_BYTES = 16
_HEADER = struct.Struct(f"<{TOKEN_BYTES}sqBi")        # token, round, step, sender
_SCATTER, _GATHER = 0, 1


class PeerTimeout(TimeoutError):
    """A peer's part of a sum did not arrive in time."""


def pieces(n, size):
    """Bounds of the K = `size` pieces of an array of n: (K + 1,) int, pieces differing by <= 1."""
    base, extra = divmod(n, size)
    counts = [base + (1 if k < extra else 0) for k in range(size)]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class Mesh:
    """This task's end of the mesh. Use as a context manager, or close()."""

    def __init__(self, rank, size, token, timeout, host):
        """rank: this task (0 .. size - 1); token: the segment's secret (16 bytes);
        timeout: seconds a wait may last; host: this node's address, which the
        other tasks reach it by (the inbox is bound there)."""
        if len(token) != TOKEN_BYTES:
            raise ValueError(f"the token must be {TOKEN_BYTES} bytes")
        self.rank, self.size, self.token = int(rank), int(size), bytes(token)
        self.timeout = float(timeout)
        self.peer_hosts = {}
        self.bytes_sent = 0
        self._context = zmq.Context(io_threads=1)
        self._outboxes = {}
        self._early = {}                                 # (round, step, sender) -> frame
        self._inbox = self._context.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.setsockopt(zmq.RCVHWM, 0)           # no limit: a sum is never dropped
        port = self._inbox.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)

    def connect(self, addresses):
        """addresses: every task's inbox address, by rank (this one's included)."""
        if len(addresses) != self.size:
            raise ValueError(f"{len(addresses)} addresses for {self.size} tasks")
        for peer, address in enumerate(addresses):
            if peer == self.rank:
                continue
            outbox = self._context.socket(zmq.PUSH)
            outbox.setsockopt(zmq.LINGER, 0)
            outbox.setsockopt(zmq.SNDHWM, 0)             # queued, never dropped or blocking
            outbox.connect(address)
            self._outboxes[peer] = outbox
            self.peer_hosts[peer] = address

    def allreduce(self, flat, round):
        """The sum of every task's `flat` (1-d, same length and dtype everywhere) -> a new array.

        round: a number no earlier sum of this mesh used (the iteration)."""
        flat = np.ascontiguousarray(flat)
        if self.size == 1:
            return flat.copy()
        bounds = pieces(len(flat), self.size)
        mine = slice(bounds[self.rank], bounds[self.rank + 1])
        for peer, outbox in self._outboxes.items():
            self._send(outbox, round, _SCATTER, flat[bounds[peer]:bounds[peer + 1]])
        parts = self._receive(round, _SCATTER)
        parts[self.rank] = flat[mine]
        total = np.array(self._as_array(parts[0], flat.dtype))     # rank order: 0, 1, ..., K-1
        for sender in range(1, self.size):
            total += self._as_array(parts[sender], flat.dtype)
        for outbox in self._outboxes.values():
            self._send(outbox, round, _GATHER, total)
        out = np.empty_like(flat)
        out[mine] = total
        for sender, frame in self._receive(round, _GATHER).items():
            out[bounds[sender]:bounds[sender + 1]] = self._as_array(frame, flat.dtype)
        return out

    @staticmethod
    def _as_array(part, dtype):
        if isinstance(part, np.ndarray):
            return part
        return np.frombuffer(part.buffer, dtype)

    def _send(self, outbox, round, step, array):
        header = _HEADER.pack(self.token, round, step, self.rank)
        # copy=False: ZeroMQ sends from the array itself, which is not changed afterwards
        outbox.send_multipart([header, array], copy=False)
        self.bytes_sent += array.nbytes

    def _receive(self, round, step):
        """The K - 1 other tasks' frames of (round, step) -> {sender: frame}."""
        got = {}
        for sender in range(self.size):
            frame = self._early.pop((round, step, sender), None)
            if frame is not None:
                got[sender] = frame
        deadline = time.monotonic() + self.timeout
        while len(got) < self.size - 1:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poller.poll(left * 1000):
                missing = sorted(set(range(self.size)) - set(got) - {self.rank})
                raise PeerTimeout(
                    f"all-reduce: no part of sum {round} from task{'s' * (len(missing) > 1)} "
                    + ", ".join(f"{p} ({self.peer_hosts.get(p, '?')})" for p in missing)
                    + f" within {self.timeout:g} s (SPARK_CNN_IO_TIMEOUT): stalled or gone")
            header, frame = self._inbox.recv_multipart(copy=False)
            try:
                token, their_round, their_step, sender = _HEADER.unpack(header.bytes)
            except struct.error:
                continue                                  # not one of ours
            if token != self.token:
                continue
            if (their_round, their_step) == (round, step):
                got[sender] = frame
            else:
                self._early[(their_round, their_step, sender)] = frame
        return got

    def close(self):
        for outbox in self._outboxes.values():
            outbox.close(linger=0)
        self._inbox.close(linger=0)
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
