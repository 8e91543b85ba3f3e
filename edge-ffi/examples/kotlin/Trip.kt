// A rider and a driver in one program, through the Lifeboat UniFFI Kotlin bindings (JVM, JNA).
//
// The Kotlin twin of examples/python/trip.py: the rider requests a trip, dispatch assigns the
// driver, the driver drives it, and both ride through a datacenter failover (kill -9 the
// primary while the trip runs). Shows the blocking calls, one suspend call (`submitAsync`, run
// on the client's own runtime), a cancel token, a typed error, an op queued without waiting
// (`enqueue`, then `opStatus`), outcomes acknowledged once handled (and, after a restart,
// `outcomes()`/`queuedOps()` first), event polling with each event's own time, a network
// change (`rebind`) and app backgrounding (`pause`/`resume`).
//
// Compile it with the generated bindings (see docs/EMBEDDING.md, section 4), then:
//
//   java -Djna.library.path=target/release -cp trip.jar:$JNA_JAR:$KOTLIN_HOME/lib/kotlin-stdlib.jar:$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar \
//       TripKt --ca lifeboat-region/ca.pem --store devices \
//       --rider 1 --rider-token HEX --driver 1000 --driver-token HEX \
//       --dc 127.0.0.1:4433 --dc 127.0.0.1:4434
//
// Prints one line per step (kill the primary after "location 3/..."). Exits 0 only if the
// trip completed.

import java.time.Instant
import java.time.ZoneOffset
import java.time.format.DateTimeFormatter
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking
import uniffi.lifeboat_edge_ffi.CancelToken
import uniffi.lifeboat_edge_ffi.EmbeddedClient
import uniffi.lifeboat_edge_ffi.EventKind
import uniffi.lifeboat_edge_ffi.LifeboatException
import uniffi.lifeboat_edge_ffi.OpState
import uniffi.lifeboat_edge_ffi.Phase
import uniffi.lifeboat_edge_ffi.Point
import uniffi.lifeboat_edge_ffi.TripAction
import uniffi.lifeboat_edge_ffi.TripRole
import uniffi.lifeboat_edge_ffi.TripView
import uniffi.lifeboat_edge_ffi.defaultSettings
import uniffi.lifeboat_edge_ffi.libraryVersion

const val OP_TIMEOUT_MS: ULong = 30_000u
val PICKUP = Point(latE6 = 52_520_000, lonE6 = 13_405_000)
val DROPOFF = Point(latE6 = 52_530_000, lonE6 = 13_405_000)

class Args(argv: Array<String>) {
    private val values = mutableMapOf<String, MutableList<String>>()

    init {
        var i = 0
        while (i < argv.size) {
            val key = argv[i]
            if (!key.startsWith("--") || i + 1 >= argv.size) fail("bad argument $key")
            values.getOrPut(key.removePrefix("--")) { mutableListOf() }.add(argv[i + 1])
            i += 2
        }
    }

    fun all(key: String): List<String> = values[key] ?: fail("--$key is required")
    fun str(key: String): String = all(key).last()
    fun num(key: String, default: ULong): ULong = values[key]?.last()?.toULong() ?: default
}

fun fail(why: String): Nothing {
    System.err.println(why)
    exitProcess(1)
}

class Seen {
    var failovers = 0
    var stalledMsMax = 0uL
}

fun startDevice(a: Args, device: ULong, token: String, available: Boolean): EmbeddedClient {
    val s = defaultSettings(device, token, a.all("dc"), a.str("ca"), "${a.str("store")}/device-$device")
    s.available = available
    s.keepAliveMs = a.num("keep-alive-ms", 500u) // battery vs. failure detection
    s.idleTimeoutMs = a.num("idle-ms", 3_000u)
    s.connectTimeoutMs = 1_500u
    s.maxTombstones = 16u
    val client = EmbeddedClient(s)
    val dc = client.waitConnected(15_000u) ?: fail("device $device did not connect within 15 s")
    println("device $device connected to dc$dc")
    return client
}

/** A trip id in its one printed form, as the library's logs show it. */
fun label(session: ULong): String = "s" + session.toString(16).padStart(16, '0')

/** HH:MM:SS.mmm (UTC) of an event's own time. */
fun clock(atMs: ULong): String =
    DateTimeFormatter.ofPattern("HH:mm:ss.SSS").withZone(ZoneOffset.UTC)
        .format(Instant.ofEpochMilli(atMs.toLong()))

/** Print every event waiting for `who`, one short line each (never blocks). */
fun drainEvents(who: String, client: EmbeddedClient, seen: Seen) {
    repeat(10_000) {
        val e = client.pollEvent(0u) ?: return
        val at = "${clock(e.atMs)} $who:"
        when (e.kind) {
            EventKind.CONNECTED -> println("$at connected to dc${e.dc} at ${e.addr}")
            EventKind.DISCONNECTED -> println("$at disconnected from ${e.addr} (${e.message})")
            EventKind.FAILOVER_STARTED -> println("$at failover started, lost ${e.addr}")
            EventKind.FAILOVER_FINISHED -> {
                seen.failovers += 1
                seen.stalledMsMax = maxOf(seen.stalledMsMax, e.stalledMs)
                println("$at failover finished at dc${e.dc}: stalled ${e.stalledMs} ms (detection ${e.detectionMs} ms)")
            }
            EventKind.SESSION_UPDATED ->
                println("$at trip ${label(e.session)} is ${e.phase?.name?.lowercase()} at ${e.version}")
            EventKind.OP_REJECTED -> println("$at op ${label(e.session)}#${e.opSeq} failed: ${e.message}")
            EventKind.WAITING -> println("$at trip ${label(e.session)} waits: ${e.message}")
            EventKind.EVENTS_DROPPED -> println("$at ${e.count} events dropped")
            else -> {}
        }
    }
}

/** After a restart: outcomes the last run may not have handled, and ops still queued. */
fun handleEarlierOutcomes(who: String, client: EmbeddedClient) {
    for (o in client.outcomes()) {
        println("$who: from before: op ${label(o.session)}#${o.opSeq} ${o.kind?.name?.lowercase()} ${o.state.name.lowercase()}")
        client.acknowledge(o.session, o.opSeq)
    }
    for (o in client.queuedOps()) {
        println("$who: still queued from before: op ${label(o.session)}#${o.opSeq} ${o.kind?.name?.lowercase()}")
    }
}

fun <T : Any> waitFor(what: String, timeoutS: Long, pred: () -> T?): T {
    val deadline = System.nanoTime() + timeoutS * 1_000_000_000
    while (System.nanoTime() < deadline) {
        pred()?.let { return it }
        Thread.sleep(50)
    }
    fail("$what within $timeoutS s: no")
}

fun main(argv: Array<String>) {
    val a = Args(argv)
    val steps = a.num("steps", 8u).toInt()
    val pauseMs = a.num("pause-ms", 200u).toLong()
    println("lifeboat ${libraryVersion()}")

    // A bad setting is a typed exception carrying its field, before anything starts.
    try {
        EmbeddedClient(defaultSettings(1u, "not hex", a.all("dc"), a.str("ca"), a.str("store")))
        fail("a malformed credential was accepted")
    } catch (e: LifeboatException.Config) {
        println("bad credential refused: ${e.detail}")
    }

    val driver = startDevice(a, a.str("driver").toULong(), a.str("driver-token"), true)
    val rider = startDevice(a, a.str("rider").toULong(), a.str("rider-token"), false)
    val seenDriver = Seen()
    val seenRider = Seen()
    handleEarlierOutcomes("driver", driver)
    handleEarlierOutcomes("rider", rider)

    val commit = rider.requestTrip(PICKUP, DROPOFF, OP_TIMEOUT_MS, null)
    val trip = commit.session
    rider.acknowledge(trip, commit.opSeq)
    println("requested trip ${label(trip)} at ${commit.version}")

    val v = waitFor("driver assigned", 20) { driver.trip(trip)?.takeIf { it.phase == Phase.ASSIGNED } }
    println(
        "driver assigned trip ${v.label}: rider d${v.rider}, " +
            "pickup ${v.pickup.latE6},${v.pickup.lonE6}, role ${v.role?.name?.lowercase()}"
    )
    check(v.role == TripRole.DRIVER && v.rider == a.str("rider").toULong() && v.driver == a.str("driver").toULong()) { "$v" }
    check(v.label == label(trip) && v.pickup == PICKUP) { "$v" }

    // A cancel token ends a wait; cancelled before the call, nothing is even queued.
    val token = CancelToken()
    token.cancel()
    try {
        driver.submit(trip, TripAction.Arrived, OP_TIMEOUT_MS, token)
        fail("a cancelled token did not cancel")
    } catch (e: LifeboatException.Cancelled) {
        check(e.opSeq == 0uL)
        println("arrive: cancelled before it was queued (op_seq 0); submitting for real")
    }

    // Queue without waiting: the op's id at once, its outcome by asking (or as an event).
    val op = driver.enqueue(trip, TripAction.Arrived)
    println("arrive queued as op ${label(op.session)}#${op.opSeq}")
    val o = waitFor("arrive decided", 30) { driver.opStatus(trip, op.opSeq).takeIf { it.state != OpState.QUEUED } }
    check(o.state == OpState.COMMITTED) { "$o" }
    driver.acknowledge(trip, op.opSeq)
    println("arrive committed at ${o.version}")
    var c = driver.submit(trip, TripAction.StartTrip, OP_TIMEOUT_MS, null)
    driver.acknowledge(trip, c.opSeq)
    println("trip started at ${c.version}")

    for (k in 1..steps) {
        val at = Point(latE6 = PICKUP.latE6 + k * 300, lonE6 = PICKUP.lonE6)
        val action = TripAction.Location(at)
        if (k == 4) {
            // The same op from a coroutine: the work runs on the client's own runtime.
            c = runBlocking { driver.submitAsync(trip, action, OP_TIMEOUT_MS, null) }
            println("async location committed")
        } else {
            c = driver.submit(trip, action, OP_TIMEOUT_MS, null)
        }
        driver.acknowledge(trip, c.opSeq) // handled: the device may forget the outcome
        println("location $k/$steps committed at ${c.version}")
        drainEvents("driver", driver, seenDriver)
        drainEvents("rider", rider, seenRider)
        if (k == 1) println("rider changed network: now on ${rider.rebind()}")
        if (k == 2) {
            rider.pause()
            println("rider app in the background (paused)")
        }
        Thread.sleep(pauseMs)
    }

    c = driver.submit(trip, TripAction.Complete, OP_TIMEOUT_MS, null)
    driver.acknowledge(trip, c.opSeq)
    val d = driver.trip(trip) ?: fail("the driver lost trip ${label(trip)}")
    println(
        "driver: trip ${label(trip)} ${d.phase.name.lowercase()}, ${d.distanceM} m, " +
            "${d.locationUpdates} location updates, fare ${d.fareCents} cents"
    )

    rider.resume()
    println("rider app in the foreground (resumed)")

    val t: TripView = waitFor("rider sees the trip completed", 30) {
        rider.trip(trip)?.takeIf { it.phase == Phase.COMPLETED }
    }
    check(t.role == TripRole.RIDER && t.lastPosition != null) { "$t" }
    drainEvents("driver", driver, seenDriver)
    drainEvents("rider", rider, seenRider)
    val s = driver.stats()
    println("rider: trip ${label(trip)} completed, fare ${t.fareCents} cents, ${t.locationUpdates} location updates")
    println(
        "summary: trip=$trip location_updates=${t.locationUpdates} fare_cents=${t.fareCents} " +
            "driver_failovers=${seenDriver.failovers} driver_stalled_ms_max=${seenDriver.stalledMsMax} " +
            "driver_connects=${s.connects} driver_bytes_up=${s.bytesUp} driver_bytes_down=${s.bytesDown}"
    )
    rider.shutdown()
    driver.shutdown()
    rider.close()
    driver.close()
}
