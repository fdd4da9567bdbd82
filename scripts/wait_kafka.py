"""Wait until Kafka answers a metadata request (listing at least --brokers brokers); exit non-zero on timeout or if
one of the --pid processes died."""

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
    parser.add_argument("--pid", type=int, action="append", default=[], help="give up early if this process exits")
    parser.add_argument("--brokers", type=int, default=1, help="wait until the cluster lists this many brokers")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for pid in args.pid:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"kafka process {pid} exited", file=sys.stderr)
                return 1
        try:
            admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=3000)
            try:
                if len(admin.describe_cluster()["brokers"]) >= args.brokers:
                    return 0
            finally:
                admin.close()
        except (KafkaError, OSError):
            pass
        time.sleep(0.5)
    return 1


if __name__ == "__main__":
    sys.exit(main())
