#!/usr/bin/env python3
"""A rider and a driver in one program, through the Lifeboat UniFFI Python bindings.

The rider requests a trip, dispatch assigns the driver, the driver drives it, and both ride
through a datacenter failover (kill -9 the primary while the trip runs). Shows the blocking
calls, one async call (``submit_async``, run on the client's own runtime), a cancel token,
an op queued without waiting (``enqueue``, then ``op_status``), outcomes acknowledged once
handled (and, after a restart, ``outcomes()``/``queued_ops()`` first), event polling with
each event's own time, a network change (``rebind``) and app backgrounding
(``pause``/``resume``).

Generate the bindings first (see docs/EMBEDDING.md), then:

    PYTHONPATH=out/python python3 edge-ffi/examples/python/trip.py \\
        --ca lifeboat-region/ca.pem --store devices \\
        --rider 1 --rider-token HEX --driver 1000 --driver-token HEX \\
        --dc 127.0.0.1:4433 --dc 127.0.0.1:4434

Prints one line per step (kill the primary after "location 3/..."). Exits 0 only if the
trip completed.
"""

import argparse
import asyncio
import sys
import time

import lifeboat_edge_ffi as lb

OP_TIMEOUT_MS = 30_000
PICKUP = lb.Point(lat_e6=52_520_000, lon_e6=13_405_000)
DROPOFF = lb.Point(lat_e6=52_530_000, lon_e6=13_405_000)


def start_device(args, device, token, available):
    s = lb.default_settings(
        device, token, args.dc, args.ca, f"{args.store}/device-{device}"
    )
    s.available = available
    s.keep_alive_ms = args.keep_alive_ms  # battery vs. failure detection
    s.idle_timeout_ms = args.idle_ms
    s.connect_timeout_ms = 1_500
    s.max_tombstones = 16
    client = lb.EmbeddedClient(s)
    dc = client.wait_connected(15_000)
    if dc is None:
        sys.exit(f"device {device} did not connect within 15 s")
    print(f"device {device} connected to dc{dc}")
    return client


class Seen:
    def __init__(self):
        self.failovers = 0
        self.stalled_ms_max = 0


def label(session):
    """A trip id in its one printed form, as the library's logs show it."""
    return f"s{session:016x}"


def clock(at_ms):
    """HH:MM:SS.mmm (UTC) of an event's own time."""
    return time.strftime("%H:%M:%S", time.gmtime(at_ms / 1000)) + f".{at_ms % 1000:03d}"


def drain_events(who, client, seen):
    """Print every event waiting for `who`, one short line each (never blocks)."""
    for _ in range(10_000):
        e = client.poll_event(0)
        if e is None:
            return
        k = e.kind
        at = f"{clock(e.at_ms)} {who}:"
        if k == lb.EventKind.CONNECTED:
            print(f"{at} connected to dc{e.dc} at {e.addr}")
        elif k == lb.EventKind.DISCONNECTED:
            print(f"{at} disconnected from {e.addr} ({e.message})")
        elif k == lb.EventKind.FAILOVER_STARTED:
            print(f"{at} failover started, lost {e.addr}")
        elif k == lb.EventKind.FAILOVER_FINISHED:
            seen.failovers += 1
            seen.stalled_ms_max = max(seen.stalled_ms_max, e.stalled_ms)
            print(
                f"{at} failover finished at dc{e.dc}: stalled {e.stalled_ms} ms "
                f"(detection {e.detection_ms} ms)"
            )
        elif k == lb.EventKind.SESSION_UPDATED:
            print(f"{at} trip {label(e.session)} is {e.phase.name.lower()} at {e.version}")
        elif k == lb.EventKind.OP_REJECTED:
            print(f"{at} op {label(e.session)}#{e.op_seq} failed: {e.message}")
        elif k == lb.EventKind.WAITING:
            print(f"{at} trip {label(e.session)} waits: {e.message}")
        elif k == lb.EventKind.EVENTS_DROPPED:
            print(f"{at} {e.count} events dropped")


def handle_earlier_outcomes(who, client):
    """After a restart: outcomes the last run may not have handled, and ops still queued."""
    for o in client.outcomes():
        print(f"{who}: from before: op {label(o.session)}#{o.op_seq} {o.kind.name.lower()} {o.state.name.lower()}")
        client.acknowledge(o.session, o.op_seq)
    for o in client.queued_ops():
        print(f"{who}: still queued from before: op {label(o.session)}#{o.op_seq} {o.kind.name.lower()}")


def wait_for(what, pred, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"{what} within {timeout_s} s: no")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ca", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--rider", type=int, default=1)
    p.add_argument("--driver", type=int, default=1000)
    p.add_argument("--rider-token", required=True)
    p.add_argument("--driver-token", required=True)
    p.add_argument("--dc", action="append", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--pause-ms", type=int, default=200)
    p.add_argument("--keep-alive-ms", type=int, default=500)
    p.add_argument("--idle-ms", type=int, default=3_000)
    args = p.parse_args()
    print(f"lifeboat {lb.library_version()}")

    driver = start_device(args, args.driver, args.driver_token, True)
    rider = start_device(args, args.rider, args.rider_token, False)
    seen_driver, seen_rider = Seen(), Seen()
    handle_earlier_outcomes("driver", driver)
    handle_earlier_outcomes("rider", rider)

    commit = rider.request_trip(PICKUP, DROPOFF, OP_TIMEOUT_MS, None)
    trip = commit.session
    rider.acknowledge(trip, commit.op_seq)
    print(f"requested trip {label(trip)} at {commit.version}")

    def assigned():
        t = driver.trip(trip)
        return t is not None and t.phase == lb.Phase.ASSIGNED

    wait_for("driver assigned", assigned, 20)
    t = driver.trip(trip)
    print(f"driver assigned trip {t.label}: rider d{t.rider}, pickup {t.pickup.lat_e6},{t.pickup.lon_e6}, role {t.role.name.lower()}")
    assert t.role == lb.TripRole.DRIVER and t.rider == args.rider and t.driver == args.driver, t
    assert t.label == label(trip) and t.pickup == PICKUP, t

    # A cancel token ends a wait; cancelled before the call, nothing is even queued.
    token = lb.CancelToken()
    token.cancel()
    try:
        driver.submit(trip, lb.TripAction.ARRIVED(), OP_TIMEOUT_MS, token)
        sys.exit("a cancelled token did not cancel")
    except lb.LifeboatError.Cancelled as e:
        assert e.op_seq == 0
        print("arrive: cancelled before it was queued (op_seq 0); submitting for real")

    # Queue without waiting: the op's id at once, its outcome by asking (or as an event).
    op = driver.enqueue(trip, lb.TripAction.ARRIVED())
    print(f"arrive queued as op {label(op.session)}#{op.op_seq}")

    def decided():
        s = driver.op_status(trip, op.op_seq)
        return s if s.state != lb.OpState.QUEUED else None

    o = wait_for("arrive decided", decided, 30)
    assert o.state == lb.OpState.COMMITTED, o
    driver.acknowledge(trip, op.op_seq)
    print(f"arrive committed at {o.version}")
    c = driver.submit(trip, lb.TripAction.START_TRIP(), OP_TIMEOUT_MS, None)
    driver.acknowledge(trip, c.op_seq)
    print(f"trip started at {c.version}")

    for k in range(1, args.steps + 1):
        at = lb.Point(lat_e6=PICKUP.lat_e6 + k * 300, lon_e6=PICKUP.lon_e6)
        action = lb.TripAction.LOCATION(at=at)
        if k == 4:
            # The same op from async code: the work runs on the client's own runtime.
            c = asyncio.run(driver.submit_async(trip, action, OP_TIMEOUT_MS, None))
            print("async location committed")
            driver.acknowledge(trip, c.op_seq)
        else:
            c = driver.submit(trip, action, OP_TIMEOUT_MS, None)
        driver.acknowledge(trip, c.op_seq)  # handled: the device may forget the outcome
        print(f"location {k}/{args.steps} committed at {c.version}")
        drain_events("driver", driver, seen_driver)
        drain_events("rider", rider, seen_rider)
        if k == 1:
            print(f"rider changed network: now on {rider.rebind()}")
        if k == 2:
            rider.pause()
            print("rider app in the background (paused)")
        time.sleep(args.pause_ms / 1000)

    c = driver.submit(trip, lb.TripAction.COMPLETE(), OP_TIMEOUT_MS, None)
    driver.acknowledge(trip, c.op_seq)
    t = driver.trip(trip)
    print(
        f"driver: trip {label(trip)} {t.phase.name.lower()}, {t.distance_m} m, "
        f"{t.location_updates} location updates, fare {t.fare_cents} cents"
    )

    rider.resume()
    print("rider app in the foreground (resumed)")

    def completed():
        t = rider.trip(trip)
        return t if t is not None and t.phase == lb.Phase.COMPLETED else None

    t = wait_for("rider sees the trip completed", completed, 30)
    assert t.role == lb.TripRole.RIDER and t.last_position is not None, t
    drain_events("driver", driver, seen_driver)
    drain_events("rider", rider, seen_rider)
    s = driver.stats()
    print(f"rider: trip {label(trip)} completed, fare {t.fare_cents} cents, {t.location_updates} location updates")
    print(
        f"summary: trip={trip} location_updates={t.location_updates} fare_cents={t.fare_cents} "
        f"driver_failovers={seen_driver.failovers} driver_stalled_ms_max={seen_driver.stalled_ms_max} "
        f"driver_connects={s.connects} driver_bytes_up={s.bytes_up} driver_bytes_down={s.bytes_down}"
    )
    rider.shutdown()
    driver.shutdown()


if __name__ == "__main__":
    main()
