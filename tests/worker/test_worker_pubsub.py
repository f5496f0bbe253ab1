"""The worker's rq pubsub listener stops at once on shutdown, whatever the thread interleaving."""

from __future__ import annotations

import threading
import time

from rq import Queue

from worker.main import VideoWorker, WorkerState


def _worker(redis_client) -> VideoWorker:
    state = WorkerState(model="tiny", queues=["tiny"])
    return VideoWorker([Queue("tiny", connection=redis_client)], connection=redis_client, name="pubsub-test",
                       runner=None, state=state, heartbeat=None)


def test_unsubscribe_returns_when_the_listener_reads_the_reply_first(redis_client):
    # The interleaving that made a SIGTERM take 30-60 s (rq 3.0 with redis-py 8.2): the main thread sends UNSUBSCRIBE
    # and is descheduled before it stops the listening thread, which reads the reply and loops back into a 60 s wait
    # for a subscription. A delay after the send forces that order.
    worker = _worker(redis_client)
    worker.subscribe()
    deadline = time.monotonic() + 10
    while not worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.pubsub.subscribed
    thread = worker.pubsub_thread
    send = worker.pubsub.unsubscribe

    def send_then_stall(*args, **kwargs):
        sent = send(*args, **kwargs)
        time.sleep(0.3)  # the listener has the reply long before the main thread goes on
        return sent

    worker.pubsub.unsubscribe = send_then_stall
    started = time.monotonic()
    done = threading.Thread(target=worker.unsubscribe, daemon=True)
    done.start()
    done.join(timeout=20)
    assert not done.is_alive(), "unsubscribe still waiting for the pubsub thread after 20 s"
    assert time.monotonic() - started < 3
    thread.join(timeout=5)
    assert not thread.is_alive()
