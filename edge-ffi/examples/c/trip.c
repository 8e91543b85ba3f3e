/*
 * A rider and a driver in one program, through the Lifeboat C API: the rider requests a
 * trip, the driver is dispatched to it and drives it, and both ride through a datacenter
 * failover (kill -9 the primary while the trip runs). Mid-trip the rider's phone changes
 * network (rebind) and goes to the background (pause/resume).
 *
 * Build (see docs/EMBEDDING.md):
 *   cc -std=c11 -Wall -Wextra -I edge-ffi/include edge-ffi/examples/c/trip.c \
 *      -L target/debug -llifeboat_edge_ffi -Wl,-rpath,$PWD/target/debug -o trip
 * Run:
 *   ./trip --ca lifeboat-region/ca.pem --rider 1 --rider-token HEX --driver 1000 \
 *          --driver-token HEX --store devices --dc 127.0.0.1:4433 --dc 127.0.0.1:4434
 *
 * Prints one line per step, flushed, so a person (or a test) can kill the primary after
 * "location 3/..." and watch the failover. Exits 0 only if the trip completed.
 */
#define _POSIX_C_SOURCE 200809L
#include "lifeboat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DCS 8
#define OP_TIMEOUT_MS 30000

struct args {
    const char *ca;
    const char *store;
    const char *rider_token;
    const char *driver_token;
    unsigned long long rider;
    unsigned long long driver;
    const char *dcs[MAX_DCS];
    int n_dcs;
    int steps;
    int pause_ms;
    unsigned long long keep_alive_ms;
    unsigned long long idle_ms;
};

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Resident memory of this process in KiB (Linux), or -1. */
static long vm_rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

/* Print the failure and exit. */
static void die(const char *what, int32_t status) {
    fprintf(stderr, "trip: %s failed: status %d: %s\n", what, status,
            lifeboat_last_error_message());
    exit(1);
}

static void check(const char *what, int32_t status) {
    if (status < 0) die(what, status);
}

static const char *phase_name(int32_t p) {
    switch (p) {
    case LIFEBOAT_PHASE_REQUESTED: return "requested";
    case LIFEBOAT_PHASE_ASSIGNED: return "assigned";
    case LIFEBOAT_PHASE_DRIVER_ARRIVED: return "driver arrived";
    case LIFEBOAT_PHASE_ON_TRIP: return "on trip";
    case LIFEBOAT_PHASE_COMPLETED: return "completed";
    case LIFEBOAT_PHASE_CANCELLED: return "cancelled";
    default: return "-";
    }
}

struct seen {
    int failovers;
    unsigned long long stalled_ms_max;
};

/* An event's own time as HH:MM:SS.mmm (UTC). */
static void clock_of(uint64_t at_ms, char out[16]) {
    unsigned long long ms = (unsigned long long)(at_ms % 86400000ULL);
    snprintf(out, 16, "%02llu:%02llu:%02llu.%03llu", ms / 3600000ULL, ms / 60000ULL % 60,
             ms / 1000ULL % 60, ms % 1000ULL);
}

/* Print every event waiting for `who`, one short line each (never blocks). Trip ids are
 * printed as the library's logs print them: `s` and 16 hex digits. */
static void drain_events(const char *who, LifeboatClient *c, struct seen *seen) {
    LifeboatEvent e;
    char at[16];
    for (int i = 0; i < 10000; i++) {
        int32_t st = lifeboat_poll_event(c, 0, &e);
        check("lifeboat_poll_event", st);
        if (st == LIFEBOAT_NO_EVENT) return;
        clock_of(e.at_ms, at);
        switch (e.kind) {
        case LIFEBOAT_EVENT_CONNECTED:
            printf("%s %s: connected to dc%u at %s\n", at, who, e.dc, e.addr);
            break;
        case LIFEBOAT_EVENT_DISCONNECTED:
            printf("%s %s: disconnected from %s (%s)\n", at, who, e.addr, e.message);
            break;
        case LIFEBOAT_EVENT_FAILOVER_STARTED:
            printf("%s %s: failover started, lost %s\n", at, who, e.addr);
            break;
        case LIFEBOAT_EVENT_FAILOVER_FINISHED:
            seen->failovers++;
            if (e.stalled_ms > seen->stalled_ms_max) seen->stalled_ms_max = e.stalled_ms;
            printf("%s %s: failover finished at dc%u: stalled %llu ms (detection %llu ms)\n", at,
                   who, e.dc, (unsigned long long)e.stalled_ms,
                   (unsigned long long)e.detection_ms);
            break;
        case LIFEBOAT_EVENT_SESSION_UPDATED:
            printf("%s %s: trip s%016llx is %s (version %llu)\n", at, who,
                   (unsigned long long)e.session, phase_name(e.phase),
                   (unsigned long long)e.version_total);
            break;
        case LIFEBOAT_EVENT_OP_REJECTED:
            printf("%s %s: op s%016llx#%llu failed: %s\n", at, who,
                   (unsigned long long)e.session, (unsigned long long)e.op_seq, e.message);
            break;
        case LIFEBOAT_EVENT_WAITING:
            printf("%s %s: trip s%016llx waits: %s\n", at, who, (unsigned long long)e.session,
                   e.message);
            break;
        case LIFEBOAT_EVENT_EVENTS_DROPPED:
            printf("%s %s: %llu events dropped\n", at, who, (unsigned long long)e.count);
            break;
        default:
            break; /* connect failures, op commits: the calls report those */
        }
    }
}

static LifeboatClient *start_device(const struct args *a, unsigned long long id,
                                    const char *token, bool available) {
    char store[1024];
    snprintf(store, sizeof store, "%s/device-%llu", a->store, id);
    LifeboatConfig *cfg = NULL;
    check("lifeboat_config_new", lifeboat_config_new(id, token, a->ca, store, &cfg));
    for (int i = 0; i < a->n_dcs; i++)
        check("lifeboat_config_add_datacenter", lifeboat_config_add_datacenter(cfg, a->dcs[i]));
    check("lifeboat_config_set_available", lifeboat_config_set_available(cfg, available));
    check("lifeboat_config_set_timing",
          lifeboat_config_set_timing(cfg, a->keep_alive_ms, a->idle_ms, 1500));
    check("lifeboat_config_set_tombstones", lifeboat_config_set_tombstones(cfg, 16, 24 * 3600));
    LifeboatClient *client = NULL;
    int32_t st = lifeboat_client_start(cfg, &client);
    lifeboat_config_free(cfg);
    check("lifeboat_client_start", st);
    uint16_t dc = 0;
    check("lifeboat_wait_connected", lifeboat_wait_connected(client, 15000, &dc));
    printf("device %llu connected to dc%u\n", id, dc);
    return client;
}

static void parse(int argc, char **argv, struct args *a) {
    memset(a, 0, sizeof *a);
    a->rider = 1;
    a->driver = 1000;
    a->steps = 8;
    a->pause_ms = 200;
    a->keep_alive_ms = 500;
    a->idle_ms = 3000;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "trip: %s needs a value\n", k);
            exit(2);
        }
        i++;
        if (!strcmp(k, "--ca")) a->ca = v;
        else if (!strcmp(k, "--store")) a->store = v;
        else if (!strcmp(k, "--rider")) a->rider = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--driver")) a->driver = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--rider-token")) a->rider_token = v;
        else if (!strcmp(k, "--driver-token")) a->driver_token = v;
        else if (!strcmp(k, "--steps")) a->steps = atoi(v);
        else if (!strcmp(k, "--pause-ms")) a->pause_ms = atoi(v);
        else if (!strcmp(k, "--keep-alive-ms")) a->keep_alive_ms = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--idle-ms")) a->idle_ms = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--dc") && a->n_dcs < MAX_DCS) a->dcs[a->n_dcs++] = v;
        else {
            fprintf(stderr, "trip: unknown option %s\n", k);
            exit(2);
        }
    }
    if (!a->ca || !a->store || !a->rider_token || !a->driver_token || a->n_dcs == 0 ||
        a->steps < 1) {
        fprintf(stderr, "usage: trip --ca CA.pem --store DIR --rider-token HEX "
                        "--driver-token HEX --dc ADDR [--dc ADDR] [--rider ID] [--driver ID] "
                        "[--steps N] [--pause-ms MS] [--keep-alive-ms MS] [--idle-ms MS]\n");
        exit(2);
    }
}

int main(int argc, char **argv) {
    struct args a;
    parse(argc, argv, &a);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("lifeboat %s\n", lifeboat_version());

    long rss_baseline = vm_rss_kib();
    LifeboatClient *driver = start_device(&a, a.driver, a.driver_token, true);
    sleep_ms(500); /* idle: connected, nothing to do */
    long rss_one = vm_rss_kib();
    LifeboatClient *rider = start_device(&a, a.rider, a.rider_token, false);
    sleep_ms(500);
    long rss_two = vm_rss_kib();
    printf("footprint: rss_baseline_kib=%ld rss_one_client_kib=%ld rss_two_clients_kib=%ld "
           "idle_client_kib=%ld\n",
           rss_baseline, rss_one, rss_two, rss_one - rss_baseline);

    struct seen seen_driver = {0, 0}, seen_rider = {0, 0};
    LifeboatPoint pickup = {52520000, 13405000};
    LifeboatPoint dropoff = {52530000, 13405000};
    LifeboatCommit c;
    check("lifeboat_request_trip",
          lifeboat_request_trip(rider, pickup, dropoff, OP_TIMEOUT_MS, NULL, &c));
    uint64_t trip = c.session;
    lifeboat_acknowledge(rider, trip, c.op_seq); /* handled: the device may forget it */
    printf("requested trip s%016llx (version %llu)\n", (unsigned long long)trip,
           (unsigned long long)c.version_total);

    /* The driver holds the trip once dispatch assigns it. */
    LifeboatTrip t;
    int assigned = 0;
    for (int i = 0; i < 400 && !assigned; i++) {
        int32_t st = lifeboat_trip(driver, trip, &t);
        check("lifeboat_trip", st);
        assigned = st == LIFEBOAT_OK && t.phase == LIFEBOAT_PHASE_ASSIGNED;
        if (!assigned) sleep_ms(50);
    }
    if (!assigned) {
        fprintf(stderr, "trip: the driver was not assigned the trip within 20 s\n");
        return 1;
    }
    printf("driver assigned trip s%016llx: rider d%llu, role %s\n", (unsigned long long)trip,
           (unsigned long long)t.rider, t.role == LIFEBOAT_ROLE_DRIVER ? "driver" : "?");

    /* Queue without waiting: the op's id at once; its outcome by asking. */
    LifeboatPoint nowhere = {0, 0};
    LifeboatOp op;
    check("lifeboat_enqueue",
          lifeboat_enqueue(driver, trip, LIFEBOAT_ACTION_ARRIVED, nowhere, &op));
    printf("arrive queued as op s%016llx#%llu\n", (unsigned long long)op.session,
           (unsigned long long)op.op_seq);
    uint64_t arrive_seq = op.op_seq;
    for (int i = 0; i < 600 && op.state == LIFEBOAT_OP_QUEUED; i++) {
        check("lifeboat_op_status", lifeboat_op_status(driver, trip, arrive_seq, &op));
        if (op.state == LIFEBOAT_OP_QUEUED) sleep_ms(50);
    }
    if (op.state != LIFEBOAT_OP_COMMITTED) {
        fprintf(stderr, "trip: arrive ended in state %d: %s\n", op.state, op.message);
        return 1;
    }
    check("lifeboat_acknowledge", lifeboat_acknowledge(driver, trip, arrive_seq));
    check("start", lifeboat_submit(driver, trip, LIFEBOAT_ACTION_START_TRIP, nowhere,
                                   OP_TIMEOUT_MS, NULL, &c));
    lifeboat_acknowledge(driver, trip, c.op_seq);
    printf("trip started (version %llu)\n", (unsigned long long)c.version_total);

    for (int k = 1; k <= a.steps; k++) {
        LifeboatPoint at = {pickup.lat_e6 + k * 300, pickup.lon_e6};
        LifeboatCancel *cancel = lifeboat_cancel_new();
        int32_t st = lifeboat_submit(driver, trip, LIFEBOAT_ACTION_LOCATION, at, OP_TIMEOUT_MS,
                                     cancel, &c);
        lifeboat_cancel_free(cancel);
        check("location", st);
        lifeboat_acknowledge(driver, trip, c.op_seq);
        printf("location %d/%d committed (version %llu)\n", k, a.steps,
               (unsigned long long)c.version_total);
        drain_events("driver", driver, &seen_driver);
        drain_events("rider", rider, &seen_rider);
        if (k == 1) {
            char addr[64];
            check("lifeboat_rebind", lifeboat_rebind(rider, addr, sizeof addr));
            printf("rider changed network: now on %s\n", addr);
        }
        if (k == 2) {
            check("lifeboat_pause", lifeboat_pause(rider));
            printf("rider app in the background (paused)\n");
        }
        sleep_ms(a.pause_ms);
    }
    check("complete", lifeboat_submit(driver, trip, LIFEBOAT_ACTION_COMPLETE, nowhere,
                                      OP_TIMEOUT_MS, NULL, &c));
    lifeboat_acknowledge(driver, trip, c.op_seq);
    check("lifeboat_trip", lifeboat_trip(driver, trip, &t));
    printf("driver: trip s%016llx %s, %llu m, %u location updates, fare %lld cents\n",
           (unsigned long long)trip, phase_name(t.phase), (unsigned long long)t.distance_m,
           t.location_updates, (long long)t.fare_cents);

    check("lifeboat_resume", lifeboat_resume(rider));
    printf("rider app in the foreground (resumed)\n");
    int done = 0;
    for (int i = 0; i < 600 && !done; i++) {
        int32_t st = lifeboat_trip(rider, trip, &t);
        check("lifeboat_trip", st);
        done = st == LIFEBOAT_OK && t.phase == LIFEBOAT_PHASE_COMPLETED;
        if (!done) sleep_ms(50);
    }
    drain_events("driver", driver, &seen_driver);
    drain_events("rider", rider, &seen_rider);
    if (!done) {
        fprintf(stderr, "trip: the rider did not see the trip completed within 30 s\n");
        return 1;
    }
    LifeboatStats s;
    check("lifeboat_stats", lifeboat_stats(driver, &s));
    printf("rider: trip s%016llx completed, fare %lld cents, %u location updates\n",
           (unsigned long long)trip, (long long)t.fare_cents, t.location_updates);
    printf("summary: trip=%llu location_updates=%u fare_cents=%lld driver_failovers=%d "
           "driver_stalled_ms_max=%llu driver_connects=%llu driver_bytes_up=%llu "
           "driver_bytes_down=%llu\n",
           (unsigned long long)trip, t.location_updates, (long long)t.fare_cents,
           seen_driver.failovers, seen_driver.stalled_ms_max,
           (unsigned long long)s.connects, (unsigned long long)s.bytes_up,
           (unsigned long long)s.bytes_down);
    lifeboat_client_free(rider);
    lifeboat_client_free(driver);
    return 0;
}
