"""The CNN on Spark as one long barrier stage per segment: --exchange allreduce.

The two-stage exchanges start two Spark jobs per iteration (about 0.15-0.2 s
each here), which minibatch training cannot afford. Here a segment of many
iterations is one Spark job: `RDD.barrier().mapPartitions` with one task per
slot (spark.segment), whose tasks sum their gradients among themselves over
ZeroMQ (spark.allreduce) every iteration, after a rendezvous through the
driver (spark.coordinator). The driver only starts segments, prints the rows
rank 0 streams, and, at a segment's end, takes the parameters, velocities and
metrics rows, checks that every task ended with the same bits, saves and
evaluates.

Faults. Spark does not retry a failed barrier result stage: it aborts the
job. The driver runs the segment again from the parameters it holds, up to
spark.task.maxFailures attempts in all; with the same number of tasks the
result is bit-identical, and after a lost node the segment runs with the task
slots left. A task that stalls makes its peers time out
(SPARK_CNN_IO_TIMEOUT), and the coordinator cancels a segment whose task
sent nothing for that long.
"""
import functools
import re
import secrets
import sys
import time

from .cnn import Diverged
from .coordinator import Coordinator
from .errors import one_line
from .memory_cnn import InMemoryCNN
from .segment import SegmentJob, address_towards, segment_task
from .spark_context import task_max_failures, task_slots

# How long the first segment waits for executors to offer the task slots it needs,
# and (B left out) for how long the slots must stop growing to count as all there.
SLOT_WAIT, SLOTS_SETTLE = 60.0, 5.0


_BARRIER_FAILED = re.compile(r"Could not recover from a failed barrier ResultStage.*?barrier task "
                             r"(.+?) finished unsuccessfully\.?")


def _reason(line):
    """Spark's words for a failed barrier stage, made plain."""
    return _BARRIER_FAILED.sub(r"its task \1 did not finish (its Python worker or executor was "
                               r"lost?)", line)


class SegmentError(RuntimeError):
    """A segment failed on every attempt, or its tasks disagree."""


class AllReduceCNN(InMemoryCNN):
    """SparkCNN whose segments run as one barrier stage each; see the module docstring."""

    store_kind = "allreduce"
    segmented = True                 # spark.runner: this trainer ends its own segments

    def __init__(self, sc, settings, batches=None, **options):
        if sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true":
            raise SegmentError(
                "--exchange allreduce runs each segment as one barrier stage, which Spark "
                "refuses under dynamic allocation: set spark.dynamicAllocation.enabled=false "
                "(spark-submit --conf)")
        self.asked = int(batches) if batches else None      # B given on the command line
        super().__init__(sc, settings, batches or 1, **options)
        self.batches = self._tasks(first=True)
        self._driver = address_towards(self._driver_host)

    def _tasks(self, first=False):
        """How many tasks the next segment runs: B if given, else the slots there are.

        The first segment waits (up to SLOT_WAIT s) for executors to register:
        for B slots when B is given, else until the slots stop changing for
        SLOTS_SETTLE s. A segment run again after a failure (maybe a lost node)
        waits until Spark's count of slots has settled the same way, and takes
        what is left. A local master's slots are all there from the start."""
        local = self.sc.master.startswith("local")
        deadline = time.monotonic() + (0.0 if local else SLOT_WAIT if first else SLOTS_SETTLE * 3)
        slots, grown = task_slots(self.sc), time.monotonic()
        while time.monotonic() < deadline:
            if first and self.asked and slots >= self.asked:
                break
            if (not self.asked or not first) and slots and time.monotonic() - grown >= SLOTS_SETTLE:
                break                     # no change for a while: all there (or all gone)
            time.sleep(0.5)
            now = task_slots(self.sc)
            if now != slots:
                slots, grown = now, time.monotonic()
        wanted = self.asked or slots
        if slots >= max(wanted, 1):
            return wanted
        if first or slots < 1:
            raise SegmentError(
                f"--exchange allreduce needs {wanted} task slots at once, the cluster has "
                f"{slots}: give fewer batches, or more executors or cores")
        self.asked = slots
        return slots

    def loss_and_gradients(self, *args, **kwargs):
        raise TypeError("--exchange allreduce trains whole segments (train_segment); "
                        "it has no separate loss and gradients stage")

    def network_spec(self):
        """The tasks' network: the optimiser too (every task updates), and as many chunk
        threads as a task has cores (segment_task)."""
        spec = dict(super().network_spec(), lr=self.lr, momentum=self.momentum, reg=self.reg,
                    nesterov=self.nesterov)
        del spec["threads"]
        return spec

    def train_segment(self, images, labels, run, end, on_row=None, progress=None):
        """Iterations self.iteration .. up to end - 1 as one barrier stage (see
        CNN.train_segment); the segment may end earlier, after about
        run.segment_seconds, when the run has no --save-every."""
        began = time.perf_counter()
        data_bc = self._broadcast_data(images, labels)
        attempts = task_max_failures(self.sc)
        printed = set()

        def live(row):
            printed.add(row["iteration"])
            if on_row is not None:
                on_row(row)

        counters = {}

        def moving(iteration, fraction):
            """A beat of rank 0 in a long iteration: its progress counter."""
            if progress is None:
                return
            counter = counters.get(iteration)
            if counter is None:
                counter = counters[iteration] = progress(iteration)
            if counter is not None:
                counter.update(int(fraction * run.batch_size) - counter.done)

        for attempt in range(1, attempts + 1):
            if attempt > 1:
                tasks = self._tasks()
                if tasks < self.batches:
                    print(f"spark-cnn: {tasks} task slots left of the {self.batches} the segments "
                          f"had: going on with {tasks} tasks", file=sys.stderr, flush=True)
                self.batches = tasks
            try:
                results = self._attempt(data_bc, run, end, live, moving)
                break
            except SegmentError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed barrier stage: Spark does not retry it
                reason = getattr(e, "segment_reason", None) or _reason(one_line(e))
                if attempt == attempts:
                    raise SegmentError(
                        f"the segment from iteration {self.iteration + 1} failed "
                        f"{attempts} time{'s' * (attempts > 1)} (spark.task.maxFailures); "
                        f"the last time: {reason}") from None
                print(f"spark-cnn: the segment from iteration {self.iteration + 1} failed "
                      f"({reason}); running it again (attempt {attempt + 1} of {attempts})",
                      file=sys.stderr, flush=True)
        return self._take(results, began, on_row, printed)

    def _attempt(self, data_bc, run, end, on_row, on_progress):
        """One try of a segment -> the tasks' SegmentResults, by rank."""
        token = secrets.token_bytes(16)
        state_bc = self.sc.broadcast({"params": self.params(), "velocity": self.velocity})
        group = f"{self.run_id}-{self.iteration + 1}-segment"
        timeout = self.exchange.io_timeout
        coordinator = Coordinator(self._driver, self.batches, token, timeout,
                                  start_timeout=SLOT_WAIT + timeout, on_row=on_row,
                                  on_stall=lambda reason: self.sc.cancelJobGroup(group),
                                  on_progress=on_progress)
        job = SegmentJob(network=self.network_spec(), run=run, start=self.iteration, end=end,
                         seconds=None if run.save_every else run.segment_seconds,
                         size=self.batches, coordinator=coordinator.address, timeout=timeout,
                         driver_host=self._driver_host, token=token)
        rdd = (self.sc.parallelize(range(self.batches), self.batches).barrier()
               .mapPartitions(functools.partial(segment_task, job, data_bc, state_bc)))
        try:
            results = self._run_stage("segment", rdd.collect)
        except Exception as e:
            if coordinator.failure:
                e.segment_reason = coordinator.failure
            raise
        finally:
            coordinator.close()
            state_bc.unpersist()
        results = sorted(results, key=lambda r: r.rank)
        if [r.rank for r in results] != list(range(self.batches)):
            raise SegmentError(f"the segment returned the results of tasks "
                               f"{[r.rank for r in results]}, expected 0..{self.batches - 1}")
        return results

    def _take(self, results, began, on_row, printed):
        """Check the tasks agree, keep rank 0's parameters -> its metrics rows."""
        first = results[0]
        if first.diverged:
            last = first.rows[-1] if first.rows else {"iteration": first.iteration, "loss": "?"}
            raise Diverged(last["iteration"] - 1, last["loss"])
        differ = [(r.rank, r.host) for r in results
                  if (r.iteration, r.digest) != (first.iteration, first.digest)]
        if differ:
            raise SegmentError(
                "the tasks of the segment ended with different parameters (task 0 on "
                f"{first.host}: iteration {first.iteration}; differing: "
                + ", ".join(f"task {rank} on {host}" for rank, host in differ)
                + "): a bug or a faulty machine; the checkpoint keeps the last segment")
        self.set_params(first.params)
        for name, v in first.velocity.items():
            self.velocity[name][...] = v
        self.iteration = first.iteration
        self.im2col_backends |= {b for row in first.rows for b in row["im2col"]}
        elapsed = time.perf_counter() - began
        start_up = elapsed - (first.rows[-1]["t"] if first.rows else 0.0)
        hosts = sorted({r.host for r in results})
        for row in first.rows:
            row["segment_s"] = start_up + row.pop("t")
            row["task_hosts"] = hosts
            if row["iteration"] not in printed and on_row is not None:
                on_row(row)
        return first.rows
