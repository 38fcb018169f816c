#!/usr/bin/env python3
"""Wait until a gateway has delivered N notifications.

Usage: wait_delivered.py ADMIN_PORT N TIMEOUT_S [READY_FILE]

Polls http://127.0.0.1:ADMIN_PORT/metrics every 10 ms over one keep-alive
connection and sums the samples of pushbridge_notifications_delivered_total.
Exits 0 once the sum reaches N; 1 (saying how many) after TIMEOUT_S.

With READY_FILE it creates that file and then waits, without polling, for
SIGUSR1 before it starts: the benchmark starts it before the load (its
start-up not timed) and signals it when the load generator is done (its
polls not competing with the load).

One process and one connection for the whole wait: a `curl` per poll cost
~8 ms of CPU, half a core at this rate, taken from the gateway being
measured on a 2-core machine.
"""
import http.client
import signal
import sys
import time

METRIC = b"pushbridge_notifications_delivered_total"


def delivered(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"/metrics answered {resp.status}")
    total = 0.0
    for line in body.splitlines():
        if line.startswith(METRIC):
            total += float(line.rsplit(b" ", 1)[1])
    return int(total)


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    port, want, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    deadline = time.monotonic() + timeout
    if len(sys.argv) == 5:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        open(sys.argv[4], "w").close()
        signal.sigwait({signal.SIGUSR1})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    got = 0
    while time.monotonic() < deadline:
        try:
            got = delivered(conn)
        except (OSError, http.client.HTTPException):
            conn.close()  # connects again on the next request
        if got >= want:
            return 0
        time.sleep(0.01)
    print(f"only {got} of {want} delivered after {timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
