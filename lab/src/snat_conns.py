#!/usr/bin/env python3
"""TCP connection load for the SNAT tests and benchmark (control/tests/agent_snat_load.rs,
hybridway-lab bench-snat). One process holds at most a slice of the connections: the
machine caps open files per process, so callers start several.

  serve ADDR PORT            echo server (SO_REUSEPORT: several processes share the port);
                             prints "ready", runs until killed
  hold ADDR PORT N           opens N connections, each sends one byte and waits for the
                             echo; prints {"answered", "failed", "errors"} and keeps them
                             open until stdin closes
  churn ADDR PORT SECONDS    short connections (connect, one byte, echo, close) for SECONDS
                             whole seconds of CLOCK_MONOTONIC from the next one on; prints
                             {"first_second", "per_second": [...], "failed", "errors"}
  one ADDR PORT TIMEOUT      one connection with one echoed byte; prints {"result"}
                             ("ok" or the errno name, "timeout")
"""

import errno
import json
import resource
import selectors
import socket
import sys
import time

IN_FLIGHT = 256  # connects outstanding at once in `hold`


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def err_name(e):
    return errno.errorcode.get(e, str(e)) if isinstance(e, int) else str(e)


def serve(addr, port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind((addr, port))
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        c, _ = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        # Out of files: leave the rest in the backlog for now.
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, 1)
                continue
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data:
                try:
                    s.send(data)
                except OSError:
                    pass
            else:
                sel.unregister(s)
                s.close()


def hold(addr, port, n, deadline_s=300):
    sel = selectors.DefaultSelector()
    answered, failed, errors = 0, 0, {}
    started, pending = 0, 0
    held = []
    deadline = time.monotonic() + deadline_s

    def fail(s, name):
        nonlocal failed, pending
        failed += 1
        pending -= 1
        errors[name] = errors.get(name, 0) + 1
        sel.unregister(s)
        s.close()

    while (started < n or pending > 0) and time.monotonic() < deadline:
        while started < n and pending < IN_FLIGHT:
            s = socket.socket()
            s.setblocking(False)
            e = s.connect_ex((addr, port))
            started += 1
            pending += 1
            if e not in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE, "connect")
                fail(s, err_name(e))
                continue
            sel.register(s, selectors.EVENT_WRITE, "connect")
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            if key.data == "connect":
                e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if e != 0:
                    fail(s, err_name(e))
                    continue
                try:
                    s.send(b"x")
                except OSError as ex:
                    fail(s, err_name(ex.errno))
                    continue
                sel.modify(s, selectors.EVENT_READ, "echo")
            else:
                try:
                    data = s.recv(1)
                except OSError as ex:
                    fail(s, err_name(ex.errno))
                    continue
                if data != b"x":
                    fail(s, "closed")
                    continue
                answered += 1
                pending -= 1
                sel.unregister(s)
                held.append(s)
    if pending > 0:
        errors["timeout"] = pending
        failed += pending
    print(json.dumps({"answered": answered, "failed": failed, "errors": errors}), flush=True)
    sys.stdin.read()  # hold until the caller closes stdin
    for s in held:
        s.close()


def one_exchange(addr, port, timeout):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.sendall(b"x")
        if s.recv(1) != b"x":
            return "closed"
        return "ok"
    except socket.timeout:
        return "timeout"
    except OSError as ex:
        return err_name(ex.errno)
    finally:
        s.close()


# Per-exchange timeout in `churn`: the SYN's retransmissions (1 s, 2 s, 4 s) fit, so
# a lost packet on the loaded machine is a slow connection, not a failed one.
CHURN_TIMEOUT = 10.0


def churn(addr, port, seconds):
    # Completions count in whole seconds of CLOCK_MONOTONIC, one clock for every
    # process on the machine (and never stepped, unlike the wall clock): the
    # caller's processes, started within the same second, begin at the same
    # boundary, and their seconds line up when summed ("first_second" says which).
    first = int(time.monotonic()) + 1
    time.sleep(max(0.0, first - time.monotonic()))
    end = first + int(seconds)
    per_second = [0] * int(seconds)
    failed, errors = 0, {}
    while time.monotonic() < end:
        result = one_exchange(addr, port, CHURN_TIMEOUT)
        if result == "ok":
            i = int(time.monotonic()) - first
            if 0 <= i < len(per_second):
                per_second[i] += 1
        else:
            failed += 1
            errors[result] = errors.get(result, 0) + 1
    print(json.dumps({"first_second": first, "per_second": per_second, "failed": failed, "errors": errors}), flush=True)


def main(argv):
    raise_nofile()
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "serve" and len(argv) == 4:
        serve(argv[2], int(argv[3]))
    elif cmd == "hold" and len(argv) == 5:
        hold(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "churn" and len(argv) == 5:
        churn(argv[2], int(argv[3]), float(argv[4]))
    elif cmd == "one" and len(argv) == 5:
        print(json.dumps({"result": one_exchange(argv[2], int(argv[3]), float(argv[4]))}), flush=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
