"""``make bench``: throughput of crm-notify's ingest and delivery, and where the time goes.

Modules: :mod:`bench.workload` (the Segment traffic), :mod:`bench.load` (HTTP load generator),
:mod:`bench.services` (processes, databases, Redis keys), :mod:`bench.smtp_sink` (the SMTP
server mail goes to, in its own process), :mod:`bench.scenarios` (one mode end to end),
:mod:`bench.profiling` (pyinstrument profiles of the hot paths), :mod:`bench.report` (tables),
:mod:`bench.cpu` (CPU seconds per process). Results and logs go to ``bench/results/``. See
``docs/benchmarks.md``. ``python -m bench.timers`` is a separate benchmark of the timer
scheduler, ``python -m bench.webhooks`` one of the ESP tracking-webhook ingest.
"""
