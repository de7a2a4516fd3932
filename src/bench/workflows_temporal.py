"""The Temporal side of `vcos bench workflows` (src/bench/workflows.rs), on the `temporalio` SDK.

Two workflows over one activity, `echo` (returns its argument), the same work as the v-COS
definitions and the Restate service:

- `Sequential`: 10 `execute_activity(echo, {"i": i})` calls, one after another;
- `Fanout`: 100 `execute_activity(echo, {"i": i})` started at once, joined with
  `asyncio.gather`.

Two modes, each its own process (as the v-COS and Restate sides have the service and the driver
in different processes):

    python workflows_temporal.py worker ADDRESS TASK_QUEUE
        Connects to the server (retrying while it starts), runs a worker for both workflows
        and the activity on TASK_QUEUE, prints `worker ready` once polling, and runs until its
        standard input closes (the bench holds it open; if the bench dies, the worker ends).

    python workflows_temporal.py drive ADDRESS TASK_QUEUE SHAPE COUNT CONCURRENCY
        Runs COUNT workflows of SHAPE (`sequential` or `fanout`), CONCURRENCY of them at a time,
        each with `client.execute_workflow` (start, then wait for its result: one end-to-end
        latency), checks every result, and prints one JSON line:
        {"shape", "concurrency", "count", "seconds", "latencies_ms": [...], "errors": [...]}.

Workflows run outside the SDK's sandbox (`sandboxed=False`): the sandbox re-imports modules for
each workflow run and is a debugging aid; leaving it out is the peer's fastest configuration.
The worker's other settings are the SDK's defaults.
"""

import asyncio
import json
import os
import sys
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

#: Steps of the sequential workflow.
SEQUENTIAL_STEPS = 10
#: Branches of the fan-out workflow.
FANOUT_BRANCHES = 100
#: One attempt of an activity may take this long (they take microseconds; queued ones wait
#: before they start, which this does not bound).
ACTIVITY_TIMEOUT = timedelta(seconds=60)
#: A whole workflow run may take this long.
WORKFLOW_TIMEOUT = timedelta(seconds=300)
#: How long to keep trying to reach the server.
CONNECT_TIMEOUT_S = 60.0


@activity.defn
async def echo(value):
    """The trivial step: returns its argument."""
    return value


@workflow.defn(name="Sequential", sandboxed=False)
class Sequential:
    """10 echo activities, one after another."""

    @workflow.run
    async def run(self, payload):
        last = None
        for i in range(SEQUENTIAL_STEPS):
            last = await workflow.execute_activity(echo, {"i": i}, start_to_close_timeout=ACTIVITY_TIMEOUT)
        return {"steps": SEQUENTIAL_STEPS, "last": last, "input": payload}


@workflow.defn(name="Fanout", sandboxed=False)
class Fanout:
    """100 echo activities at once, all joined."""

    @workflow.run
    async def run(self, payload):
        results = await asyncio.gather(
            *(workflow.execute_activity(echo, {"i": i}, start_to_close_timeout=ACTIVITY_TIMEOUT) for i in range(FANOUT_BRANCHES))
        )
        return {"steps": len(results), "input": payload}


#: Workflow type and expected step count by shape.
SHAPES = {"sequential": ("Sequential", SEQUENTIAL_STEPS), "fanout": ("Fanout", FANOUT_BRANCHES)}


async def connect(address):
    """A client of `address`, retrying while the server starts."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            return await Client.connect(address)
        except Exception as error:  # the server is not up yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Temporal server at {address} within {CONNECT_TIMEOUT_S:.0f} s: {error}") from error
            await asyncio.sleep(0.2)


async def run_worker(address, task_queue):
    """Runs the worker until standard input closes."""
    client = await connect(address)
    worker = Worker(client, task_queue=task_queue, workflows=[Sequential, Fanout], activities=[echo])
    async with worker:
        print("worker ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)


async def drive(address, task_queue, shape, count, concurrency):
    """Runs `count` workflows of `shape`, `concurrency` at a time; prints the JSON result."""
    workflow_type, steps = SHAPES[shape]
    client = await connect(address)
    prefix = f"bench-{shape}-{uuid.uuid4().hex[:12]}"
    latencies = []
    errors = []
    next_index = 0

    async def one_caller():
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                result = await client.execute_workflow(
                    workflow_type, {"n": i}, id=f"{prefix}-{i}", task_queue=task_queue, execution_timeout=WORKFLOW_TIMEOUT
                )
            except Exception as error:
                errors.append(f"workflow {i}: {error!r}")
                continue
            elapsed_ms = (time.perf_counter() - started) * 1e3
            if not isinstance(result, dict) or result.get("steps") != steps:
                errors.append(f"workflow {i}: unexpected result {result!r}")
                continue
            latencies.append(elapsed_ms)

    started = time.perf_counter()
    await asyncio.gather(*(one_caller() for _ in range(max(1, min(concurrency, count)))))
    seconds = time.perf_counter() - started
    print(json.dumps({"shape": shape, "concurrency": concurrency, "count": len(latencies), "seconds": seconds, "latencies_ms": latencies, "errors": errors[:10]}), flush=True)


def main(argv):
    """Dispatches on the mode."""
    if len(argv) == 4 and argv[1] == "worker":
        asyncio.run(run_worker(argv[2], argv[3]))
        return 0
    if len(argv) == 7 and argv[1] == "drive" and argv[4] in SHAPES:
        asyncio.run(drive(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK's native runtime threads can abort the interpreter's finalisation ("Fatal Python
    # error: PyGILState_Release"): everything is printed, so leave without it.
    os._exit(code)
