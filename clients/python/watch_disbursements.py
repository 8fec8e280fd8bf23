#!/usr/bin/env python3
"""Watch qistatus for debts that are disbursed or canceled, and resume after a reconnect.

Every message of a watch stream carries a sequence number; remembering the last one and
sending it back as `start_after_sequence` on reconnect is all it takes to miss nothing and
see nothing twice, across network failures and server restarts.

    python3 watch_disbursements.py --server 127.0.0.1:50051
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))

import grpc  # noqa: E402
from qistatus.v1 import qistatus_pb2, qistatus_pb2_grpc  # noqa: E402

# Errors a reconnect cannot fix: report them and stop.
FATAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}


def watch(server, start_after=None, max_changes=None, token=None):
    """Yields each disbursement or cancellation once, reconnecting as needed."""
    resume = start_after
    seen = 0
    backoff = 0.1
    metadata = [("authorization", f"Bearer {token}")] if token else None
    while True:
        request = qistatus_pb2.WatchOperationRequest(
            kinds=["debt"],
            statuses=["disbursed", "canceled", "canceled_permanently"],
        )
        if resume is not None:
            request.start_after_sequence = resume
        try:
            with grpc.insecure_channel(server) as channel:
                stub = qistatus_pb2_grpc.OperationStatusServiceStub(channel)
                for message in stub.WatchOperation(request, metadata=metadata):
                    backoff = 0.1
                    if message.HasField("progress"):
                        resume = message.progress.sequence
                        continue
                    change = message.change
                    resume = change.sequence
                    yield change
                    seen += 1
                    if max_changes is not None and seen >= max_changes:
                        return
        except grpc.RpcError as error:
            if error.code() in FATAL:
                raise
            print(
                f"watch interrupted ({error.code().name}); resuming after sequence {resume}",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("QISTATUS_GRPC", "127.0.0.1:50051"))
    parser.add_argument("--from-sequence", type=int, default=None, help="resume after this sequence")
    parser.add_argument("--max-changes", type=int, default=None, help="stop after this many")
    parser.add_argument("--token", default=os.environ.get("QISTATUS_TOKEN"))
    args = parser.parse_args()
    for change in watch(args.server, args.from_sequence, args.max_changes, args.token):
        op = change.operation
        print(
            json.dumps(
                {
                    "sequence": change.sequence,
                    "kind": op.kind,
                    "key": op.key,
                    "status": op.status,
                    "previous_status": change.previous_status,
                    "detail": op.detail,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
