"""The all-reduce's transport candidates, measured where it runs: in one Spark barrier stage.

    spark-submit --master local[2] --py-files <egg> bench/transports.py [rounds] [--redis ADDR]
    mpirun -n 2 python3 bench/transports.py [rounds] --mpi        (needs mpi4py)

Two tasks of one barrier stage sum a gradient-sized float32 array (165,642
values, the default network's 662,568 bytes) `rounds` times (default 300), by
reduce-scatter then all-gather, through each candidate in turn:

- zmq: spark.allreduce.Mesh, what --exchange allreduce uses (ZeroMQ PUSH/PULL);
- tcp: plain sockets of the standard library, one connection per pair, a
  sender thread sending while the task receives (a hand-written transport);
- redis: the node's Redis (SPARK_CNN_REDIS, its first address; password from
  SPARK_CNN_REDIS_PASSWORD[_FILE]): SET of each piece, RPUSH of its key to the
  owner's list, BLPOP and GET on the other side;
- mpi (with --mpi, outside Spark): MPI_Allreduce of mpi4py between 2 ranks
  started by mpirun; Spark cannot start MPI ranks, so it is a reference only.

Prints one line per candidate (median and 90th percentile of a round, ms)
and, last, a JSON line of the medians. Rank 0's sums are checked against
the arithmetic.
"""
import json
import os
import queue
import socket
import sys
import threading
import time

import numpy as np

SIZE = 165642


def arrays(rank, rounds):
    rng = np.random.default_rng(rank)
    return [rng.standard_normal(SIZE).astype(np.float32) for _ in range(min(rounds, 4))]


def timed(rounds, one_round, data):
    """Run one_round(array, round) `rounds` times -> (times in s, the last result)."""
    times, result = [], None
    for r in range(rounds):
        started = time.perf_counter()
        result = one_round(data[r % len(data)], r)
        times.append(time.perf_counter() - started)
    return times, result


def zmq_candidate(rank, addresses_of, rounds, data):
    from spark.allreduce import Mesh
    token = b"transports-bench"[:16].ljust(16, b".")
    with Mesh(rank, 2, token, 30, "127.0.0.1") as mesh:
        mesh.connect(addresses_of(mesh.address))
        return timed(rounds, mesh.allreduce, data)


def tcp_candidate(rank, addresses_of, rounds, data):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    addresses = addresses_of(f"127.0.0.1:{listener.getsockname()[1]}")
    if rank == 0:
        conn, _ = listener.accept()
    else:
        host, port = addresses[0].split(":")
        conn = socket.create_connection((host, int(port)))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    half = SIZE // 2
    mine = slice(0, half) if rank == 0 else slice(half, SIZE)
    theirs = slice(half, SIZE) if rank == 0 else slice(0, half)

    def receive(count):
        out = np.empty(count, np.float32)
        view, got = memoryview(out).cast("B"), 0
        while got < len(view):
            got += conn.recv_into(view[got:])
        return out

    outbox, sent = queue.Queue(), queue.Queue()

    def sender():                    # one thread for the run: sends while the task receives
        while (item := outbox.get()) is not None:
            conn.sendall(item)
            sent.put(True)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()

    def exchange(send, count):
        outbox.put(memoryview(send).cast("B"))
        got = receive(count)
        sent.get()
        return got

    def one_round(grad, r):
        total = grad[mine] + exchange(np.ascontiguousarray(grad[theirs]), mine.stop - mine.start)
        out = np.empty(SIZE, np.float32)
        out[mine] = total
        out[theirs] = exchange(total, theirs.stop - theirs.start)
        return out

    try:
        return timed(rounds, one_round, data)
    finally:
        outbox.put(None)
        thread.join(10)
        conn.close()
        listener.close()


def redis_candidate(rank, addresses_of, rounds, data, address, password):
    import redis
    if address.startswith("unix://"):
        client = redis.Redis(unix_socket_path=address[7:], password=password)
    else:
        host, port = address.rsplit(":", 1)
        client = redis.Redis(host=host, port=int(port), password=password)
    run = addresses_of(os.urandom(8).hex() if rank == 0 else "")[0]     # rank 0's name for it
    half = SIZE // 2
    mine = slice(0, half) if rank == 0 else slice(half, SIZE)
    theirs = slice(half, SIZE) if rank == 0 else slice(0, half)
    prefix = f"spark-cnn-bench:{run}"

    def handoff(array, r, step):
        key = f"{prefix}:{r}:{step}:{rank}"
        client.set(key, np.ascontiguousarray(array).tobytes(), ex=60)
        client.rpush(f"{prefix}:to{1 - rank}", key)
        _, other = client.blpop(f"{prefix}:to{rank}", timeout=30)
        got = np.frombuffer(client.get(other), np.float32)
        client.delete(other)
        return got

    def one_round(grad, r):
        total = grad[mine] + handoff(grad[theirs], r, 0)
        out = np.empty(SIZE, np.float32)
        out[mine] = total
        out[theirs] = handoff(total, r, 1)
        return out

    try:
        return timed(rounds, one_round, data)
    finally:
        client.close()


def task(rounds, redis_address, password, _):
    from pyspark import BarrierTaskContext
    context = BarrierTaskContext.get()
    rank = context.partitionId()
    data = arrays(rank, rounds)

    def addresses_of(mine):
        return context.allGather(mine)

    results = {}
    candidates = [("zmq", zmq_candidate), ("tcp", tcp_candidate)]
    if redis_address:
        candidates.append(("redis", lambda *a: redis_candidate(*a, redis_address, password)))
    for name, candidate in candidates:
        context.barrier()
        times, last = candidate(rank, addresses_of, rounds, data)
        expected = arrays(0, rounds)[(rounds - 1) % len(data)] + arrays(1, rounds)[
            (rounds - 1) % len(data)]
        results[name] = (times, bool(np.allclose(last, expected, rtol=1e-6)))
    return [(rank, results)]


def report(results, rounds):
    medians = {}
    for name, (times, right) in results.items():
        times = np.array(times[10:]) * 1e3
        medians[name] = float(np.median(times))
        print(f"{name:6s} {medians[name]:7.3f} ms per sum (90th percentile "
              f"{np.percentile(times, 90):.3f} ms) over {len(times)} rounds of "
              f"{SIZE * 4:,} bytes, 2 tasks{'' if right else ', WRONG SUMS'}")
    print(json.dumps(medians, sort_keys=True))


def spark_main(rounds):
    from pyspark import SparkContext
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from spark.settings import redis_password
    address = (os.environ.get("SPARK_CNN_REDIS") or "").split(",")[0]
    if "--redis" in sys.argv:
        address = sys.argv[sys.argv.index("--redis") + 1]
    sc = SparkContext.getOrCreate()
    try:
        import functools
        out = (sc.parallelize(range(2), 2).barrier()
               .mapPartitions(functools.partial(task, rounds, address, redis_password()))
               .collect())
    finally:
        sc.stop()
    report(dict(sorted(out)[0][1]), rounds)


def mpi_main(rounds):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    data = arrays(comm.rank, rounds)
    comm.Barrier()

    def one_round(grad, r):
        out = np.empty_like(grad)
        comm.Allreduce(grad, out, op=MPI.SUM)
        return out

    times, last = timed(rounds, one_round, data)
    if comm.rank == 0:
        expected = arrays(0, rounds)[(rounds - 1) % 4] + arrays(1, rounds)[(rounds - 1) % 4]
        report({"mpi": (times, bool(np.allclose(last, expected, rtol=1e-6)))}, rounds)


if __name__ == "__main__":
    count = next((int(a) for a in sys.argv[1:] if a.isdigit()), 300)
    (mpi_main if "--mpi" in sys.argv else spark_main)(count)
