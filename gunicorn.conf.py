"""gunicorn settings: threaded workers (keep-alive for EHR connection reuse), shared metrics, no shared sockets.

Production runs behind the reverse proxy in deploy/nginx.conf, which buffers whole requests from slow clients
(gthread workers read a request on a worker thread once its first byte arrives).
"""

import gc
import glob
import os
import shutil
import tempfile

METRICS_PREFIX = "protocol-engine-metrics-"
OWN_DIR = "PROTOCOL_ENGINE_METRICS_DIR_CREATED"  # set when this master made the directory (survives a HUP reload)


def _remove_orphaned_metrics_dirs():  # noqa: ANN202
    """Directories of masters that died without on_exit (SIGKILL, OOM): named after their pid, removed if it is gone."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), METRICS_PREFIX + "*-*")):
        pid = os.path.basename(path)[len(METRICS_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # gone meanwhile, or a live process of another user
            pass


# prometheus_client chooses in-memory or file-backed values when it is first imported, and the workers inherit
# the master's choice: the directory must be in the environment before anything imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _remove_orphaned_metrics_dirs()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
    os.environ[OWN_DIR] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from prometheus_client import multiprocess  # noqa: E402 - must follow the environment variable

worker_class = "protocol_engine.runtime.balanced_worker.BalancedThreadWorker"  # gthread, sharing connections evenly
threads = int(os.environ.get("PROTOCOL_ENGINE_THREADS", "4"))
keepalive = 30
timeout = 30
graceful_timeout = 10
accesslog = None  # the app logs what it needs; access logs could carry query strings

# gunicorn >= 25 opens a control socket at one per-user default path, so two instances on one machine would
# share (and take over) each other's. None unless asked for, and then at a path of this instance's own.
if os.environ.get("PROTOCOL_ENGINE_CONTROL_SOCKET"):
    control_socket = os.environ["PROTOCOL_ENGINE_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# X-Forwarded-* and the scheme headers are believed only through the app's ProxyFix, for the configured number of
# proxies (PROTOCOL_ENGINE_PROXY_HOPS, default none). gunicorn's own default believes them from any loopback
# peer, so a local caller could change the scheme, the script name and with them the URL a JWT's `aud` must name.
forwarded_allow_ips = ""
secure_scheme_headers = {}
forwarder_headers = ""

METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def on_starting(server):  # noqa: ANN001, ANN201 - gunicorn hook signature
    # A bad setting refuses the start once, in one line, instead of a traceback from every worker boot.
    from protocol_engine.runtime.config import load_settings

    try:
        load_settings()
    except ValueError as exc:
        import sys

        print(f"not started: {exc}", file=sys.stderr)
        sys.exit(1)
    # Files left by an earlier run (other pids) would be summed into this run's counters.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for pattern in METRIC_FILES:
        for path in glob.glob(os.path.join(directory, pattern)):
            os.remove(path)


def child_exit(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook signature
    # Drops the dead worker's live-gauge files; its counters stay (they are part of the totals).
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001, ANN201 - gunicorn hook signature
    # The counters are per run (on_starting clears them), so nothing is lost: a directory this master made goes
    # (it was left in /tmp by every start); in a directory given to us only our files go.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory and os.environ.get(OWN_DIR) == directory:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for pattern in METRIC_FILES:
        for path in glob.glob(os.path.join(directory, pattern)):
            os.remove(path)


def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn hook signature
    # The loaded app (rule engine, value-set indexes, pydantic model classes) is hundreds of thousands of
    # long-lived objects; left in the collector's generations, every full collection walked them and gave
    # 80-120 ms tails (p90 of the 500-Observation call was 104 ms, 21 ms once frozen; bench/run.py).
    gc.collect()
    gc.freeze()
