"""`python -m bench.fastpath_cost`: the CPU one operation costs with a fast path and with the public path it
replaces, for the fast paths whose worth is too small to read off pipeline rows (celery_orjson,
prometheus_histogram).

Process CPU time, best of five repeats, so a busy machine changes the figures little. Divide by the pipeline
rows' CPU per event (`python -m bench`) to get a fast path's share of the whole: docs/performance.md does.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable


def cpu_us(operation: Callable[[], object], repeat: int) -> float:
    """CPU microseconds of one call of `operation`, best of five runs of `repeat` calls."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            operation()
        best = min(best, (time.process_time() - started) / repeat * 1e6)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fastpath_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=100, help="events per task / records per round")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fastpath-cost-")
    import django

    django.setup()
    from kombu.utils import json as kombu_json

    from bench.events import sample_events
    from fastpaths import celery_orjson, prometheus_histogram
    from publisher import metrics

    for size in (1, args.batch_size):
        message = [[], {"events": sample_events(size, tag="cost", phase=1), "source": "k", "accepted_at": 1.0}, {}]
        body = celery_orjson.json_dumps(message).encode()
        repeat = max(20, 2000 // size)
        encode = cpu_us(functools.partial(celery_orjson.json_dumps, message), repeat)
        encode_off = cpu_us(functools.partial(kombu_json.dumps, message), repeat)
        decode = cpu_us(functools.partial(celery_orjson.json_loads, body), repeat)
        decode_off = cpu_us(functools.partial(kombu_json.loads, body), repeat)
        # A task is encoded once (web) and decoded twice (worker: main process and pool process).
        print(
            f"celery_orjson, task of {size}: encode {encode:.1f} us (off {encode_off:.1f}), decode {decode:.1f} us "
            f"(off {decode_off:.1f}); saved per event: web {(encode_off - encode) / size:.2f} us, "
            f"worker {2 * (decode_off - decode) / size:.2f} us"
        )
    histogram = metrics.PUBLISH_LATENCY
    count = args.batch_size
    fast = cpu_us(lambda: prometheus_histogram.observe_many(histogram, 0.2, count), 2000)

    def one_by_one() -> None:
        for _ in range(count):
            histogram.observe(0.2)

    public = cpu_us(one_by_one, max(20, 20000 // count))
    print(
        f"prometheus_histogram, round of {count} records: {fast:.2f} us (off {public:.2f}); "
        f"saved per record {(public - fast) / count:.2f} us"
    )


if __name__ == "__main__":
    main()
