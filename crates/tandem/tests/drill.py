"""IMAP side of the failure drills in drills.rs, with Python's imaplib (a real client).

usage:
  drill.py dump PORT
      every mailbox: UIDVALIDITY and (UID, Message-ID, flags) of each message, as JSON
  drill.py hop STATE PORT...
      one visit to each port in turn: checks that no UID of INBOX ever names two different
      messages (I1) and that UIDVALIDITY never changes, across visits and across nodes, with
      what earlier visits saw kept in the JSON file STATE; appends one message per visit
  drill.py load PORT SECONDS CLIENTS SEED TAG
      CLIENTS connections doing a mixed workload for SECONDS: APPEND, FETCH, STORE, SEARCH,
      UID MOVE, EXPUNGE; prints {"ops": n, "errors": n, "appended": [message ids]}
"""

import imaplib
import json
import os
import random
import re
import sys
import threading
import time


def connect(port):
    m = imaplib.IMAP4("127.0.0.1", int(port))
    m.login("alice", "secret")
    return m


def message(mid, subject):
    return (
        "From: Drill <drill@example.org>\r\nTo: alice@example.com\r\n"
        "Subject: %s\r\nMessage-ID: <%s>\r\n"
        "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\nbody of %s\r\n" % (subject, mid, mid)
    ).encode()


def mailboxes(m):
    typ, data = m.list()
    assert typ == "OK", data
    out = []
    for line in data:
        line = line.decode()
        name = re.match(r'\((.*?)\) (?:"[^"]*"|NIL) (.*)$', line).group(2)
        if name.startswith('"'):
            name = name[1:-1]
        out.append(name)
    return sorted(out)


def messages(m):
    """(uid, message id, sorted flags) of every message in the selected mailbox."""
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = int(re.search(r"UID (\d+)", meta).group(1))
        flags = sorted(re.search(r"FLAGS \((.*?)\)", meta).group(1).split())
        mid = re.search(rb"<([^>]*)>", item[1])
        out.append([uid, mid.group(1).decode() if mid else "", flags])
    return sorted(out)


def select(m, name):
    typ, data = m.select('"%s"' % name, readonly=True)
    assert typ == "OK", (name, data)
    return int(m.response("UIDVALIDITY")[1][0])


def dump(port):
    m = connect(port)
    out = {}
    for name in mailboxes(m):
        uv = select(m, name)
        out[name] = {"uidvalidity": uv, "messages": messages(m)}
        m.close()
    m.logout()
    print(json.dumps(out, sort_keys=True))


def hop(state_file, ports):
    state = {"uids": {}, "uidvalidity": None, "visits": 0, "appended": []}
    if os.path.exists(state_file):
        with open(state_file) as f:
            state = json.load(f)
    for port in ports:
        m = connect(port)
        uv = select(m, "INBOX")
        if state["uidvalidity"] is None:
            state["uidvalidity"] = uv
        assert uv == state["uidvalidity"], "UIDVALIDITY of INBOX changed: %s then %s (port %s)" % (
            state["uidvalidity"], uv, port)
        for uid, mid, _flags in messages(m):
            seen = state["uids"].setdefault(str(uid), mid)
            assert seen == mid, "UID %d named %r and now %r (port %s)" % (uid, seen, mid, port)
        m.close()
        state["visits"] += 1
        mid = "hop%d@example.org" % state["visits"]
        typ, data = m.append("INBOX", None, None, message(mid, "hop %d" % state["visits"]))
        assert typ == "OK", data
        state["appended"].append(mid)
        m.logout()
    with open(state_file, "w") as f:
        json.dump(state, f)
    print(json.dumps({"visits": state["visits"], "uids": len(state["uids"])}))


def load(port, seconds, clients, seed, tag):
    ops = [0] * clients
    errors = [0] * clients
    appended = [[] for _ in range(clients)]
    stop = time.time() + seconds

    def worker(k):
        rnd = random.Random(seed * 1000 + k)
        c = connect(port)
        c.select("INBOX")
        n = 0
        while time.time() < stop:
            r = rnd.random()
            try:
                if r < 0.25:
                    n += 1
                    mid = "%s-%d-%d@example.org" % (tag, k, n)
                    typ, _ = c.append("INBOX", None, None, message(mid, "load"))
                    if typ == "OK":
                        appended[k].append(mid)
                elif r < 0.45:
                    lo = rnd.randint(1, 3000)
                    typ, _ = c.uid("FETCH", "%d:%d" % (lo, lo + 40), "(FLAGS BODY.PEEK[])")
                elif r < 0.7:
                    lo = rnd.randint(1, 3000)
                    typ, _ = c.uid("STORE", "%d:%d" % (lo, lo + rnd.randint(0, 10)),
                                   rnd.choice(["+FLAGS", "-FLAGS"]),
                                   rnd.choice(["(\\Seen)", "(\\Flagged)", "($label1)"]))
                elif r < 0.8:
                    typ, _ = c.search(None, "UNSEEN")
                elif r < 0.87:
                    typ, _ = c.uid("MOVE", "%d" % rnd.randint(1, 3000), "Work")
                elif r < 0.92:
                    typ, _ = c.uid("STORE", "%d" % rnd.randint(1, 3000), "+FLAGS", "(\\Deleted)")
                    if typ == "OK":
                        typ, _ = c.expunge()
                else:
                    typ, _ = c.noop()
                # Every command works by UID, so anything but OK is a failure.
                if typ != "OK":
                    errors[k] += 1
                ops[k] += 1
            except imaplib.IMAP4.error as e:
                errors[k] += 1
                sys.stderr.write("client %d: %s\n" % (k, e))
        c.logout()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"ops": sum(ops), "errors": sum(errors),
                      "appended": [x for a in appended for x in a]}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "dump":
        dump(sys.argv[2])
    elif cmd == "hop":
        hop(sys.argv[2], sys.argv[3:])
    elif cmd == "load":
        load(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit("unknown command " + cmd)
