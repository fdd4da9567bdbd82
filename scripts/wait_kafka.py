"""Wait until a Kafka broker answers a metadata request; exit non-zero on timeout or if its process died."""

import argparse
import os
import sys
import time

from kafka import KafkaAdminClient
from kafka.errors import KafkaError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--pid", type=int, help="give up early if this process exits")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if args.pid:
            try:
                os.kill(args.pid, 0)
            except ProcessLookupError:
                print(f"kafka process {args.pid} exited", file=sys.stderr)
                return 1
        try:
            admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=3000)
            try:
                admin.describe_cluster()
                return 0
            finally:
                admin.close()
        except (KafkaError, OSError):
            time.sleep(0.5)
    return 1


if __name__ == "__main__":
    sys.exit(main())
