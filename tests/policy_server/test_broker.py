"""ActionChunkBroker: alignment of late chunks, prefetch, blending, hold-last, failures, reset.

The inner policy here is a scripted "clock": the chunk for an observation taken at step ``t`` holds the
values ``t, t + 1, ...`` (plus ``offset_per_fetch`` times the request number), so a correctly aligned
broker returns exactly the step index at every step. A semaphore decides when each reply may leave,
which makes late replies deterministic.
"""

import threading
import time

import numpy as np
import pytest

from policy_server.broker import ActionChunkBroker


class ClockPolicy:
    def __init__(self, chunk=8, offset_per_fetch=0.0, fail=0, gated=False):
        self.chunk = chunk
        self.offset_per_fetch = offset_per_fetch
        self.fail = fail
        self.gate = threading.Semaphore(0) if gated else None
        self.calls = 0
        self.replied = 0
        self.resets = 0
        self.obs_steps = []

    def infer(self, obs):
        self.calls += 1
        n = self.calls
        self.obs_steps.append(obs["t"])
        if self.gate is not None:
            assert self.gate.acquire(timeout=10)
        try:
            if self.fail > 0:
                self.fail -= 1
                raise ConnectionError("server unreachable")
            vals = obs["t"] + np.arange(self.chunk) + self.offset_per_fetch * (n - 1)
            return {"actions": np.repeat(vals[:, None], 7, axis=1).astype(np.float32)}
        finally:
            self.replied += 1

    def reset(self):
        self.resets += 1


def _wait_replied(policy, n, broker):
    t0 = time.monotonic()
    while policy.replied < n or (broker._pending is not None and not broker._pending[0].done()):
        assert time.monotonic() - t0 < 10
        time.sleep(0.002)


def _wait_calls(policy, n):
    t0 = time.monotonic()
    while policy.calls < n:
        assert time.monotonic() - t0 < 10
        time.sleep(0.002)


def test_synchronous_mode_executes_n_action_steps_per_chunk():
    policy = ClockPolicy(chunk=8)
    broker = ActionChunkBroker(policy, n_action_steps=4, prefetch_steps=0, blend_steps=0, max_wait_s=None)
    out = [broker.step({"t": t})[0] for t in range(20)]
    assert out == list(range(20))
    assert policy.obs_steps == [0, 4, 8, 12, 16]  # one request per executed horizon, with the fresh obs
    assert broker.stats.holds == 0
    assert broker.stats.chunks == 5
    assert broker.infer({"t": 20})["actions"].shape == (1, 7)
    broker.close()


def test_prefetch_requests_early_and_late_chunks_stay_aligned():
    policy = ClockPolicy(chunk=8)
    broker = ActionChunkBroker(policy, n_action_steps=6, prefetch_steps=2, blend_steps=0, max_wait_s=None)
    out = [broker.step({"t": t})[0] for t in range(30)]
    assert out == list(range(30))  # every action is the one planned for its step
    # The next request leaves when 2 executable actions remain: every n_action_steps - prefetch = 4 steps.
    assert policy.obs_steps[:4] == [0, 4, 8, 12]
    assert broker.stats.holds == 0
    broker.close()


def test_hold_last_action_while_the_next_chunk_is_late():
    policy = ClockPolicy(chunk=8, gated=True)
    broker = ActionChunkBroker(policy, n_action_steps=4, prefetch_steps=1, blend_steps=0, max_wait_s=0.0)
    policy.gate.release()  # the first chunk may come
    assert [broker.step({"t": t})[0] for t in range(4)] == [0, 1, 2, 3]
    _wait_calls(policy, 2)
    assert policy.obs_steps == [0, 3]  # prefetch left at step 3 and is held back by the gate
    held = [broker.step({"t": t}) for t in (4, 5)]
    for a in held:
        np.testing.assert_array_equal(a, np.full(7, 3.0, np.float32))  # the last action, not zeros
    assert broker.stats.holds == 2
    policy.gate.release()
    _wait_replied(policy, 2, broker)
    # The chunk planned from step 3 arrives at step 6 and is used from its index 3: still aligned.
    assert broker.step({"t": 6})[0] == 6
    assert broker.stats.holds == 2
    policy.gate.release()
    broker.close()


def test_hold_stop_keeps_gripper_zeroes_motion():
    policy = ClockPolicy(chunk=2, gated=True)
    broker = ActionChunkBroker(
        policy, n_action_steps=2, prefetch_steps=0, blend_steps=0, max_wait_s=0.0, hold="stop"
    )
    policy.gate.release()
    broker.step({"t": 0})
    broker.step({"t": 1})
    a = broker.step({"t": 2})
    np.testing.assert_array_equal(a, np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    policy.gate.release()
    broker.close()


def test_blending_at_chunk_boundaries():
    def run(blend):
        policy = ClockPolicy(chunk=8, offset_per_fetch=100.0)
        broker = ActionChunkBroker(
            policy, n_action_steps=4, prefetch_steps=0, blend_steps=blend, max_wait_s=None
        )
        out = [float(broker.step({"t": t})[0]) for t in range(8)]
        broker.close()
        return out, broker.stats

    hard, _ = run(0)
    assert hard == [0, 1, 2, 3, 104, 105, 106, 107]
    soft, stats = run(2)
    # Step 4: 2/3 of the old chunk's 4 + 1/3 of the new 104; step 5: 1/3 * 5 + 2/3 * 105.
    np.testing.assert_allclose(
        soft, [0, 1, 2, 3, 2 / 3 * 4 + 104 / 3, 5 / 3 + 2 / 3 * 105, 106, 107], rtol=1e-6
    )
    assert stats.blended == 2


def test_failures_are_retried_then_reported():
    policy = ClockPolicy(fail=2)
    broker = ActionChunkBroker(policy, n_action_steps=4, max_wait_s=None, max_consecutive_failures=5)
    assert broker.step({"t": 0})[0] == 0
    assert broker.stats.failures == 2
    assert policy.calls == 3
    broker.close()

    policy = ClockPolicy(fail=100)
    broker = ActionChunkBroker(policy, n_action_steps=4, max_wait_s=None, max_consecutive_failures=3)
    with pytest.raises(RuntimeError, match="3 chunk requests failed in a row"):
        broker.step({"t": 0})
    broker.close()


def test_mid_episode_failure_holds_then_recovers():
    policy = ClockPolicy(chunk=4)
    broker = ActionChunkBroker(policy, n_action_steps=4, prefetch_steps=0, blend_steps=0, max_wait_s=5.0)
    assert [broker.step({"t": t})[0] for t in range(4)] == [0, 1, 2, 3]
    policy.fail = 1
    assert broker.step({"t": 4})[0] == 3  # request failed: hold the last action
    assert broker.stats.holds == 1
    assert broker.stats.failures == 1
    _wait_replied(policy, 3, broker)
    assert broker.step({"t": 5})[0] == 5  # the retry (sent at step 4) is used, aligned
    broker.close()


def test_reset_drops_in_flight_reply_and_resets_policy():
    policy = ClockPolicy(chunk=8, gated=True, offset_per_fetch=1000.0)
    broker = ActionChunkBroker(policy, n_action_steps=4, prefetch_steps=1, blend_steps=0, max_wait_s=0.0)
    policy.gate.release()
    for t in range(4):
        broker.step({"t": t})
    _wait_calls(policy, 2)  # a prefetch is in flight
    broker.reset()
    assert policy.resets == 1
    assert broker.stats.steps == 0
    policy.gate.release()  # the stale prefetch completes...
    policy.gate.release()  # ...and the new episode's first request
    a = broker.step({"t": 0})
    assert a[0] == 2000.0  # the third request's chunk, not the stale second one (1000 + 3)
    broker.close()


def test_n_action_steps_from_metadata_and_validation():
    policy = ClockPolicy()
    policy.metadata = {"n_action_steps": 3}
    broker = ActionChunkBroker(policy)
    assert broker.n_action_steps == 3
    assert broker.metadata == {"n_action_steps": 3}
    broker.close()
    with pytest.raises(ValueError, match="hold"):
        ActionChunkBroker(policy, hold="zeros")
    with pytest.raises(ValueError, match="n_action_steps"):
        ActionChunkBroker(policy, n_action_steps=0)
