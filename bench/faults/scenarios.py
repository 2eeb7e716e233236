"""The scenarios: a stack shape, and the fault injected into it while the load runs.

Each `fault(run)` starts at the run's start, waits until `run.fault_at`, breaks something, repairs
it, and records what it measured in `run.notes`. The load and the checks are the runner's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from bench.faults.load import Load
from bench.faults.stack import ITL_S, MODEL, FaultStack, post


@dataclass
class Run:
    stack: FaultStack
    load: Load
    t0: float  # time.perf_counter() at the load's start
    fault_at: float
    duration: float
    notes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what a scenario's setup prepared (gates, tokens)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def at(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    def mark(self, what: str) -> None:
        self.notes.setdefault("events", []).append(f"{what} at {self.now():.1f} s")


Fault = Callable[[Run], Awaitable[None]]


@dataclass
class Scenario:
    name: str
    what: str  # one line for the table
    fault: Fault
    replicas: int = 2
    senders: int = 1
    env: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # process name -> "old"
    postgres: bool = False  # the token database is a PostgreSQL database behind a TcpGate
    cluster: int = 0  # run on a RabbitMQ cluster of this many nodes of its own (0: the suite's node)


# -- the broker ----------------------------------------------------------------------------------
async def broker_restart(run: Run) -> None:
    await run.at(run.fault_at)
    run.mark("broker stopped (SIGTERM)")
    down = run.now()
    await asyncio.to_thread(run.stack.broker.shutdown)
    run.mark("broker down")
    await asyncio.to_thread(run.stack.broker.start)
    run.mark("broker accepting")
    run.notes["broker_down_s"] = round(run.now() - down, 1)
    run.notes["fault_end"] = run.now()


async def broker_kill(run: Run) -> None:
    await run.at(run.fault_at)
    run.mark("broker SIGKILLed")
    down = run.now()
    await asyncio.to_thread(run.stack.broker.kill)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(run.stack.broker.start)
    run.mark("broker accepting")
    run.notes["broker_down_s"] = round(run.now() - down, 1)
    run.notes["fault_end"] = run.now()


async def node_loss(run: Run) -> None:
    """The cluster node that holds the model's queue (node 0, where every sender publishes) SIGKILLed,
    started again 10 s later."""
    await run.at(run.fault_at)
    node = run.stack.broker.nodes[0]
    run.mark("broker node 0 SIGKILLed")
    await asyncio.to_thread(node.kill)
    run.notes["node_lost_at"] = run.now()
    await asyncio.sleep(10.0)
    run.notes["moved"] = round(
        await asyncio.to_thread(run.stack.counter, run.stack.senders_live(), "llmd_tickets_moved_total")
    )
    await asyncio.to_thread(node.start)
    run.mark("broker node 0 accepting")
    run.notes["fault_end"] = run.now()


# -- consumers and replicas ------------------------------------------------------------------------
async def consumer_kill(run: Run) -> None:
    await run.at(run.fault_at)
    held = (await asyncio.to_thread(run.stack.leases)).get("r0")
    run.mark(f"consumer r0 SIGKILLed holding {held} leases")
    await asyncio.to_thread(run.stack.kill, "r0")
    await asyncio.sleep(5.0)
    await asyncio.to_thread(run.stack.start_consumer, 0)
    run.mark("consumer r0 replaced")
    run.notes["fault_end"] = run.now()


async def replica_die(run: Run) -> None:
    await run.at(run.fault_at)
    sim = run.stack.procs["sim0"]
    await asyncio.to_thread(post, sim.url + "/sim/die")
    run.mark("replica sim0 engine dead")
    await asyncio.sleep(10.0)
    await asyncio.to_thread(post, sim.url + "/sim/revive")
    run.mark("replica sim0 revived")
    run.notes["fault_end"] = run.now()


async def replica_kill(run: Run) -> None:
    """The vLLM process itself SIGKILLed (a node lost, an OOM kill): its open streams are cut."""
    await run.at(run.fault_at)
    await asyncio.to_thread(run.stack.kill, "sim0")
    run.mark("replica sim0 SIGKILLed")
    await asyncio.sleep(5.0)
    await asyncio.to_thread(run.stack.start_sim, 0)
    run.mark("replica sim0 started again")
    run.notes["fault_end"] = run.now()


async def replica_stall(run: Run) -> None:
    await run.at(run.fault_at)
    for sim in run.stack.sims():
        await asyncio.to_thread(post, sim.url + "/sim/config", {"stall_before_first_token": 4.0})
    run.mark("both replicas stall 4 s before the first token")
    await asyncio.sleep(10.0)
    for sim in run.stack.sims():
        await asyncio.to_thread(post, sim.url + "/sim/config", {"stall_before_first_token": 0.0})
    run.mark("stalls off")
    run.notes["fault_end"] = run.now()


# -- clients ---------------------------------------------------------------------------------------
STORM = 60  # clients that hang up: half while queued, half after their first token


async def disconnect_storm(run: Run) -> None:
    """At the fault, STORM long streams arrive at once (more than the free capacity, so most wait in
    the queue); half hang up after 0.4 s, the other half 0.5 s after their first token. Every one
    that reached vLLM must be aborted there (counted from vLLM's `finished_reason="abort"`)."""
    await run.at(run.fault_at)
    stack = run.stack
    aborts_before = await asyncio.to_thread(
        stack.counter, stack.sims(), "vllm:request_success", finished_reason="abort"
    )
    dropped_before = await asyncio.to_thread(
        stack.counter, stack.consumers(), "llmd_consumer_tickets_dropped", reason="cancelled"
    )
    released_before = await asyncio.to_thread(
        stack.counter, stack.consumers(), "llmd_consumer_releases", reason="abandoned"
    )
    states: dict[str, int] = {}
    url = stack.sender_urls()[0] + "/v1/chat/completions"
    body = orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": int(6 / ITL_S), "stream": True}
    )
    headers = {"authorization": f"Bearer {run.load.token}", "content-type": "application/json"}

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        state = {"s": "queued"}

        async def go() -> None:
            async with session.post(url, data=body, headers={**headers, "x-request-id": f"storm{i}"}) as r:
                state["s"] = "granted" if r.status == 200 else f"refused {r.status}"
                async for line in r.content:
                    if line.startswith(b"data: {") and state["s"] != "streaming":
                        state["s"] = "streaming"
                        if i % 2:
                            await asyncio.sleep(0.5)
                            return

        task = asyncio.create_task(go())
        if i % 2 == 0:
            await asyncio.sleep(0.4)
            task.cancel()
        else:
            await asyncio.wait([task], timeout=30)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        when = {"queued": "while queued", "granted": "before the first token", "streaming": "mid-stream"}
        key = when.get(state["s"], state["s"])
        states[key] = states.get(key, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        run.mark(f"{STORM} clients arrive")
        await asyncio.gather(*(client(session, i) for i in range(STORM)))
    run.mark("storm over")
    run.notes["fault_end"] = run.now()
    await asyncio.sleep(3.0)  # aborts reach vLLM, cancels reach the consumers
    aborts = await asyncio.to_thread(stack.counter, stack.sims(), "vllm:request_success", finished_reason="abort")
    dropped = await asyncio.to_thread(
        stack.counter, stack.consumers(), "llmd_consumer_tickets_dropped", reason="cancelled"
    )
    run.notes["storm"] = dict(sorted(states.items()))
    reached = states.get("mid-stream", 0) + states.get("before the first token", 0)
    run.notes["storm_reached_vllm"] = reached
    run.notes["vllm_aborts"] = int(aborts - aborts_before)
    run.notes["tickets_dropped_as_cancelled"] = int(dropped - dropped_before)
    released = await asyncio.to_thread(stack.counter, stack.consumers(), "llmd_consumer_releases", reason="abandoned")
    run.notes["granted_after_hang_up_released"] = int(released - released_before)


# -- the token database ----------------------------------------------------------------------------
async def token_db_outage(run: Run) -> None:
    """The token database (PostgreSQL behind a TcpGate) refuses connections for 20 s: the load's
    token is cached and keeps working; a token never seen before gets 503 with Retry-After."""
    gate = run.extra["gate"]
    fresh = run.extra["fresh_token"]
    await run.at(run.fault_at)
    await gate.close()
    run.mark("token database refusing connections")
    probes: dict[str, int] = {}
    url = run.stack.sender_urls()[0] + "/v1/models"
    async with aiohttp.ClientSession() as session:
        end = run.now() + 20.0
        while run.now() < end:
            try:
                async with session.get(url, headers={"authorization": f"Bearer {fresh}"}) as r:
                    key = f"{r.status}" + (" + Retry-After" if "retry-after" in r.headers else "")
            except aiohttp.ClientError as exc:
                key = type(exc).__name__
            probes[key] = probes.get(key, 0) + 1
            await asyncio.sleep(1.0)
    await gate.open()
    run.mark("token database back")
    run.notes["fault_end"] = run.now()
    run.notes["uncached_token_during_outage"] = probes
    sender = run.stack.senders_live()[0]
    run.notes["stale_cache_hits"] = int(
        await asyncio.to_thread(run.stack.counter, [sender], "llmd_token_cache_stale_served")
    )


# -- the sender ------------------------------------------------------------------------------------
async def sender_kill(run: Run) -> None:
    """Two senders share the load; sender0 is SIGKILLed with streams in flight and the load moves to
    sender1 at once (as a Service does once the endpoint is gone). Its leases are reclaimed by lease
    expiry (LLMD_LEASE_TTL_S, 15 s here): how fast is measured."""
    stack = run.stack
    await run.at(run.fault_at)
    victim = stack.procs["sender0"]
    survivor = stack.procs["sender1"]
    marked = run.load.mark_killed(victim.url)
    await asyncio.to_thread(stack.kill, "sender0")
    killed_at = run.now()
    run.mark(f"sender0 SIGKILLed with {marked} requests in flight")

    def leaked() -> float:
        leases = stack.leases()
        held = sum(v or 0 for v in leases.values())
        return held - (stack.sender_in_flight(waiting=False).get("sender1") or 0)

    first = await asyncio.to_thread(leaked)
    run.notes["leases_of_killed_sender"] = int(max(0, first))
    reclaimed = None
    while run.now() - killed_at < 40:
        if await asyncio.to_thread(leaked) <= 0:
            reclaimed = run.now() - killed_at
            break
        await asyncio.sleep(0.2)
    run.notes["leases_reclaimed_after_s"] = None if reclaimed is None else round(reclaimed, 1)
    run.mark("its leases reclaimed" if reclaimed is not None else "its leases NOT reclaimed within 40 s")
    await asyncio.to_thread(stack.start_sender, 0)
    run.mark("sender0 restarted")
    run.notes["fault_end"] = killed_at
    del survivor


# -- rolling upgrades ------------------------------------------------------------------------------
async def roll_consumers(run: Run) -> None:
    """The consumers, old release, replaced one by one by the new one under load (SIGTERM: the old one
    drains while its successor starts, as a Deployment's surge does)."""
    for i, consumer in enumerate(sorted(p.name for p in run.stack.consumers())):
        await run.at(run.fault_at + 8 * i)
        proc = run.stack.procs[consumer]
        if proc.version != "old":
            continue
        old = proc.popen
        run.stack.kill(consumer, 15)
        await asyncio.to_thread(run.stack.start_consumer, int(consumer[1:]), "new")
        run.mark(f"{consumer}: old release draining, new one started")
        await asyncio.to_thread(old.wait, 30)
    run.notes["fault_end"] = run.now()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("broker-restart", "the broker node stopped gracefully and started again", broker_restart),
        Scenario("broker-kill", "the broker node SIGKILLed, started again 2 s later", broker_kill),
        Scenario(
            "node-loss",
            "3-node broker cluster: node 0 (holding the queue) SIGKILLed, back 10 s later",
            node_loss,
            cluster=3,
        ),
        Scenario("consumer-kill", "consumer r0 of two SIGKILLed, replaced 5 s later", consumer_kill),
        Scenario("replica-die", "vLLM replica sim0 of two: engine dead for 10 s, then revived", replica_die),
        Scenario("replica-kill", "vLLM replica sim0 of two SIGKILLed, started again 5 s later", replica_kill),
        Scenario("disconnect-storm", f"{STORM} clients hang up: half queued, half mid-stream", disconnect_storm),
        Scenario(
            "token-db-outage",
            "the token database (PostgreSQL) refuses connections for 20 s",
            token_db_outage,
            postgres=True,
        ),
        Scenario("replica-stall", "both replicas stall 4 s before the first token, for 10 s", replica_stall),
        Scenario("sender-kill", "sender0 of two SIGKILLed mid-stream, load moved to sender1", sender_kill, senders=2),
        Scenario(
            "upgrade-old-sender",
            "old sender (the previous protocol) with consumers rolled old -> new under load",
            roll_consumers,
            versions={"sender0": "old", "r0": "old", "r1": "old"},
        ),
        Scenario(
            "upgrade-new-sender",
            "new sender with old consumers (the previous protocol), rolled to new under load",
            roll_consumers,
            versions={"r0": "old", "r1": "old"},
        ),
    ]
}

SHORT = ["broker-kill", "replica-kill", "disconnect-storm"]


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
