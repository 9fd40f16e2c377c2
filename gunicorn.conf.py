"""gunicorn settings: threaded workers (keep-alive for EHR connection reuse), shared metrics."""

import gc
import os
import tempfile

from prometheus_client import multiprocess

worker_class = "gthread"
threads = int(os.environ.get("PROTOCOL_ENGINE_THREADS", "4"))
keepalive = 30
timeout = 30
graceful_timeout = 10
accesslog = None  # the app logs what it needs; access logs could carry query strings

if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="protocol-engine-metrics-")


def child_exit(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook signature
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn hook signature
    # The loaded app (rule engine, value-set indexes, pydantic model classes) is hundreds of thousands of
    # long-lived objects; left in the collector's generations, every full collection walked them and gave
    # 80-120 ms tails (p90 of the 500-Observation call was 104 ms, 21 ms once frozen; bench/run.py).
    gc.collect()
    gc.freeze()
