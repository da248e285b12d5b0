"""The Celery app of the settlement workers: broker, delivery guarantees, the beat schedule and the retry cap.

`celery -A ledger.celery_app worker` and `sluice worker` run it. The broker is BROKER_URL
(Redis, or RabbitMQ with an amqp:// URL), else the embedded Redis of the state dir. Tasks
live in `ledger.settlement.tasks` as shared tasks with their retry policy in the decorator;
this module only configures how they are delivered.

Nothing is read at import time: `make_app(settings)` builds an app from the settings it is
given, and the module attribute `app` is the process's app, built from the process settings
on first access (a module `__getattr__`), so importing the tasks or this module neither reads
the environment nor fails on a bad setting before a worker starts.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

from ledger.settlement import presence  # noqa: F401  (connects the worker's announcements for `sluice status`)
from ledger.settlement.settings import SettlementSettings, get_settlement_settings

CUT_TASK = "sluice.cut_batches"
SUBMIT_TASK = "sluice.submit_batch"

# The longest a retried task may wait before its next run (SLUICE_SETTLEMENT_RETRY_MAX is capped here).
RETRY_BACKOFF_MAX_S = 60
# The longest one task may run: a submit waits at most SLUICE_SETTLEMENT_WAIT per step (mining,
# confirmations), so this hard limit only stops a task wedged on an unresponsive endpoint.
TASK_TIME_LIMIT_S = 300
# Redis (and SQS) hand an unacknowledged message to another worker once it has been out this long.
# With acks_late a message stays unacknowledged while its task runs and while a retry's countdown
# runs out inside the worker, so the timeout must be longer than both: otherwise a slow or
# retrying task gets a twin. Twins would be harmless (tasks are idempotent) but waste gas and
# time, so it is set well above TASK_TIME_LIMIT_S + RETRY_BACKOFF_MAX_S. A worker killed outright
# therefore gets its message back only after this long; the settlement sweeper (beat, every
# SLUICE_BATCH_INTERVAL) re-enqueues its batch after SLUICE_SETTLEMENT_SWEEP seconds instead, so
# recovery never waits for the broker. RabbitMQ has no visibility timeout: it redelivers as soon
# as the consumer's connection drops (its consumer_timeout, 30 min by default, exceeds the task
# time limit).
VISIBILITY_TIMEOUT_S = 3 * (TASK_TIME_LIMIT_S + RETRY_BACKOFF_MAX_S)
assert VISIBILITY_TIMEOUT_S > TASK_TIME_LIMIT_S + RETRY_BACKOFF_MAX_S

# How often beat checks for a full batch (SLUICE_BATCH_MAX_ITEMS pairs waiting) between interval cuts.
FULL_BATCH_POLL_MAX_S = 0.5


def make_app(settings: SettlementSettings) -> Celery:
    """The Celery app for `settings` (the module attribute `app` is this for the process settings)."""
    if settings.settlement_retry_max > RETRY_BACKOFF_MAX_S:
        raise ValueError(f"SLUICE_SETTLEMENT_RETRY_MAX must be at most {RETRY_BACKOFF_MAX_S} s (the broker's "
                         "visibility timeout is sized for it)")
    app = Celery("sluice", include=["ledger.settlement.tasks"])
    full_poll = min(FULL_BATCH_POLL_MAX_S, settings.batch_interval / 2)
    app.conf.update(
        broker_url=settings.effective_broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_default_queue=settings.settlement_queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Acknowledge after the task ran, and give the message back when the worker process died
        # under it: a crash mid-task means redelivery, never a lost batch.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=TASK_TIME_LIMIT_S,
        # With late acks a running task's message is redelivered if the broker connection drops,
        # so the running copy is cancelled rather than left to race its twin.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_prefetch_multiplier=1,
        # The submit task's back-off cap is a setting: annotations set it on the task class when the task
        # binds to this app, before its autoretry wrapper reads it.
        task_annotations={SUBMIT_TASK: {"retry_backoff_max": settings.settlement_retry_max}},
        # Interval schedules need no persisted state: no schedule file in the working directory.
        beat_scheduler="celery.beat:Scheduler",
        beat_schedule={
            "cut-batches": {
                "task": CUT_TASK,
                "schedule": settings.batch_interval,
                # A tick nobody ran in time is dropped: the next one cuts everything waiting anyway.
                "options": {"expires": max(settings.batch_interval, 1.0)},
            },
            "cut-full-batches": {
                "task": CUT_TASK,
                "schedule": full_poll,
                "kwargs": {"full_only": True},
                "options": {"expires": max(full_poll, 1.0)},
            },
        },
    )
    return app


@after_setup_logger.connect  # type: ignore[untyped-decorator]
def _quiet_task_lines(logger: logging.Logger, loglevel: int, **_kwargs: Any) -> None:
    """Beat sends a cut several times a second: at INFO, Celery's two lines per task would drown the log.

    `ledger.settlement.settler` logs every cut, transaction, confirmation and failed attempt itself; DEBUG brings
    Celery's task lines back.
    """
    if loglevel > logging.DEBUG:
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)


@cache
def get_app() -> Celery:
    """The process's app, built from the process settings on first use."""
    return make_app(get_settlement_settings())


def __getattr__(name: str) -> Celery:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
