"""IMAP workload for the Tandem/Dovecot benchmark: the same Python imaplib client against either
server. Prints one JSON object with the timings.

usage: imap_workload.py PORT MESSAGES MIXED_SECONDS CLIENTS
"""

import imaplib
import json
import random
import sys
import threading
import time

port, n, mixed_secs, clients = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])


def message(i):
    body = ("Line %d of a benchmark message, padded to about four kilobytes.\r\n" % i) * 60
    return (
        "From: Bench <bench@example.org>\r\nTo: alice@example.com\r\n"
        "Subject: benchmark message %d\r\nMessage-ID: <bench%d@example.org>\r\n"
        "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\n%s" % (i, i, body)
    ).encode()[:4096]


def connect():
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login("alice", "secret")
    return m


out = {}
m = connect()
t = time.perf_counter()
for i in range(n):
    typ, _ = m.append("INBOX", None, None, message(i))
    assert typ == "OK"
out["append_s"] = time.perf_counter() - t
typ, data = m.select("INBOX")
assert int(data[0]) == n, data


def median_time(f, runs=21):
    """Median of 21 runs: one run of a 10-40 ms command is mostly noise on this machine, and with
    5 runs the ratio of the two servers still moved between 0.8 and 1.6 from run to run."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def fetch_envelopes():
    typ, data = m.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)")
    assert typ == "OK" and len(data) >= n


def fetch_bodies():
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
    bodies = [d for d in data if isinstance(d, tuple)]
    assert len(bodies) == n, len(bodies)


out["fetch_envelope_s"] = median_time(fetch_envelopes)
out["fetch_bodies_s"] = median_time(fetch_bodies)
m.logout()

ops = [0] * clients
errors = [0] * clients
stop = time.perf_counter() + mixed_secs


def worker(k):
    rnd = random.Random(k)
    c = connect()
    c.select("INBOX")
    while time.perf_counter() < stop:
        r = rnd.random()
        try:
            if r < 0.35:
                typ, _ = c.fetch(str(rnd.randint(1, n)), "(BODY.PEEK[])")
            elif r < 0.6:
                typ, _ = c.store(str(rnd.randint(1, n)), rnd.choice(["+FLAGS", "-FLAGS"]), "(\\Seen)")
            elif r < 0.7:
                typ, _ = c.search(None, "UNSEEN")
            elif r < 0.8:
                typ, _ = c.append("INBOX", None, None, message(100000 + k))
            elif r < 0.9:
                typ, _ = c.fetch("%d:%d" % (max(1, n - 50), n), "(FLAGS UID)")
            else:
                typ, _ = c.noop()
            if typ != "OK":
                errors[k] += 1
            ops[k] += 1
        except imaplib.IMAP4.error:
            errors[k] += 1
    c.logout()


threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
t = time.perf_counter()
for th in threads:
    th.start()
for th in threads:
    th.join()
elapsed = time.perf_counter() - t
out["mixed_ops"] = sum(ops)
out["mixed_ops_per_s"] = sum(ops) / elapsed
out["mixed_errors"] = sum(errors)
print(json.dumps(out))
