#!/usr/bin/env python3
"""CI check: the Python stubs generated from proto/ work against a live qistatus server.

Starts the server, runs watch_disbursements.py, posts webhooks, restarts the server in the
middle, and checks that the example printed every disbursement and cancellation exactly once,
in order, and said that it resumed; then asks GetFlow how long d1 took to be disbursed.

    python3 check.py --server-bin target/debug/qistatus-server
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "generated"))

import grpc  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402
from qistatus.v1 import qistatus_pb2, qistatus_pb2_grpc  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout}s")


def post(http_port, webhook):
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/webhooks",
        data=json.dumps(webhook).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def debt(key, status, when):
    return {"webhook_type": "debt", "key": key, "status": status, "event_datetime": when}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-bin", required=True)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="qistatus-python-check-")
    http_port, grpc_port = free_port(), free_port()

    def start_server():
        server = subprocess.Popen(
            [
                args.server_bin,
                "--data-dir", data_dir,
                "--http-addr", f"127.0.0.1:{http_port}",
                "--grpc-addr", f"127.0.0.1:{grpc_port}",
                "--admin-addr", "127.0.0.1:0",
                "--log", "warn",
            ]
        )
        wait_for_port(http_port)
        wait_for_port(grpc_port)
        return server

    server = start_server()
    watcher = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HERE, "watch_disbursements.py"),
            "--server", f"127.0.0.1:{grpc_port}",
            "--from-sequence", "0",
            "--max-changes", "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        post(http_port, debt("d1", "waiting_signature", "2024-01-01 10:00:00"))
        post(http_port, debt("d1", "disbursed", "2024-01-02 10:00:00"))
        post(http_port, {"webhook_type": "account", "key": "a1", "status": "account_opened"})
        post(http_port, debt("d2", "canceled ", "2024-01-03 10:00:00"))

        # Once the watcher has printed its first change, restart the server under it.
        first = watcher.stdout.readline()
        server.terminate()
        server.wait(timeout=30)
        server = start_server()
        post(http_port, debt("d3", "disbursed", "2024-01-04 10:00:00"))

        # Through the same buffered reader as `first`: `communicate` reads the pipe itself
        # and would miss a line that reader already took in with the first one.
        watcher.wait(timeout=60)
        out, err = watcher.stdout.read(), watcher.stderr.read()
        flow = check_flow(grpc_port)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        server.terminate()
        server.wait(timeout=30)

    if watcher.returncode != 0:
        raise SystemExit(f"the example failed ({watcher.returncode}):\n{err}")
    changes = [json.loads(line) for line in (first + out).splitlines()]
    got = [(c["sequence"], c["key"], c["status"]) for c in changes]
    expected = [(2, "d1", "disbursed"), (4, "d2", "canceled"), (5, "d3", "disbursed")]
    if got != expected:
        raise SystemExit(f"expected {expected}, got {got}\nstderr:\n{err}")
    if "resuming after sequence" not in err:
        raise SystemExit(f"the example did not report its reconnect:\n{err}")
    print(f"python-client: 4 passed, 0 failed ({flow})")


def check_flow(grpc_port):
    """GetFlow over the first days of 2024 (event times, QI's -03:00): d1 went from
    waiting_signature to disbursed in 24 h, within the answer's 9.1 %."""
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = qistatus_pb2_grpc.OperationStatusServiceStub(channel)
    since, until = Timestamp(), Timestamp()
    since.FromJsonString("2024-01-01T00:00:00Z")
    until.FromJsonString("2024-01-05T00:00:00Z")
    flow = stub.GetFlow(
        qistatus_pb2.GetFlowRequest(kind="debt", since=since, until=until), timeout=10
    )
    stages = {
        (s.from_status, s.to_status): s.total for s in flow.stages if not s.milestone
    }
    total = stages.get(("waiting_signature", "disbursed"))
    if total is None or total.count != 1:
        raise SystemExit(f"GetFlow: no single waiting_signature -> disbursed stage: {flow}")
    took = total.p50.ToTimedelta().total_seconds()
    if abs(took / 86400 - 1) > 0.091:
        raise SystemExit(f"GetFlow: d1 took {took} s, not 24 h within 9.1 %")
    return f"GetFlow: d1 disbursed after {took / 3600:.1f} h"


if __name__ == "__main__":
    main()
