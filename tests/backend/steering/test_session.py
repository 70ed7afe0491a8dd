"""SteeringSession from a script: latest wins, stale generations never reach a listener, one unit function."""

from __future__ import annotations

import threading

import pytest
import torch

from gemscope_widgets import Scope
from gemscope_widgets.backend.dictionaries.loading import load_sae_folder
from gemscope_widgets.backend.steering.generation import generate
from gemscope_widgets.backend.steering.session import SessionListener, SteeringSession
from gemscope_widgets.backend.steering.spec import DirectionSpec, SteeringSpec
from gemscope_widgets.errors import JobCancelled, SteeringError

TEXT = "Paris is the capital of France. The quick brown fox"


@pytest.fixture(scope="module")
def sae(gemma_scope_folders):
    return load_sae_folder(gemma_scope_folders["resid_post"])


class Recorder(SessionListener):
    def __init__(self):
        self.events = []

    def session_started(self, gid, keep_baseline):
        self.events.append(("start", gid))

    def session_token(self, gid, baseline, steered, divergence, step):
        self.events.append(("token", gid))

    def session_finished(self, gid, result, keep_baseline):
        self.events.append(("finish", gid))

    def session_failed(self, gid, error):
        self.events.append(("fail", gid))


def test_a_session_runs_from_a_script_like_generate(tiny_model, sae):
    session = SteeringSession(tiny_model, TEXT, {5: 2.0}, sae=sae, max_new_tokens=6, stop_at_eos=False)
    try:
        gid = session.run()
        result = session.wait()
        entry = session.entries[0]
        assert entry.raw == pytest.approx(2.0 * entry.unit.value)
        direct = generate(tiny_model, TEXT, [SteeringSpec(5, entry.raw)], sae=sae, unit="raw", max_new_tokens=6,
                          stop_at_eos=False)
        assert result.steered_ids == direct.steered_ids and result.baseline_ids == direct.baseline_ids
        session.update(5, multiple=-30.0)
        assert session.run() == gid + 1
        assert session.wait().steered_ids != result.steered_ids
        assert session.generate().steered_ids == session.result.steered_ids  # synchronous, same settings
    finally:
        session.close()


def test_stale_generations_never_reach_the_listener(tiny_model, sae):
    recorder = Recorder()
    session = SteeringSession(tiny_model, TEXT, {5: 0.0}, sae=sae, listener=recorder, max_new_tokens=30,
                              stop_at_eos=False)
    try:
        def slide(value):
            session.update(5, multiple=value)
            session.run()

        threads = [threading.Thread(target=slide, args=(v,)) for v in (0.5, -1.0, 2.0, -3.0, 1.0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        last = session.run()
        session.wait()
        latest = 0
        for kind, gid in recorder.events:
            if kind == "start":
                assert gid > latest
                latest = gid
            else:
                assert gid == latest, (kind, gid, latest)  # only the newest generation is ever heard from
        assert recorder.events[-1] == ("finish", last)
        assert sum(1 for kind, gid in recorder.events if kind == "token" and gid == last) == 30
    finally:
        session.close()


def test_next_token_is_refused_while_the_configuration_is_regenerating(tiny_model, sae):
    session = SteeringSession(tiny_model, TEXT, {5: 1.0}, sae=sae, max_new_tokens=200, stop_at_eos=False)
    try:
        session.run()
        session.wait()
        assert session.next_token(0)["chosen"]
        session.update(5, multiple=3.0)
        session.run()
        with pytest.raises(SteeringError, match="being regenerated"):
            session.next_token(0)
        session.wait()
        assert session.next_token(0)["index"] == 0
    finally:
        session.close()


def test_scope_generate_is_a_session(tiny_model, sae):
    r = torch.randn(tiny_model.d_model, generator=torch.Generator().manual_seed(3))
    steering = [SteeringSpec(5, 1.5), DirectionSpec(r, mode="add", layer=2, strength=2.0)]
    ours = Scope(tiny_model, sae).generate(TEXT, steering, max_new_tokens=5)
    session = SteeringSession(tiny_model, TEXT, steering, sae=sae, max_new_tokens=5)
    assert [e.key for e in session.entries] == [5, "d0"]
    assert session.specs()[1].strength == pytest.approx(2.0 * float(r.norm()))  # 2× the direction's length
    assert ours.steered_ids == session.generate().steered_ids
    assert [s.strength for s in ours.specs] == [s.strength for s in session.specs()]


def test_bad_session_input(tiny_model, sae):
    with pytest.raises(SteeringError, match="Unknown generation settings"):
        SteeringSession(tiny_model, TEXT, sae=sae, beams=2)
    with pytest.raises(SteeringError, match="max_new_tokens"):
        SteeringSession(tiny_model, TEXT, sae=sae, max_new_tokens=0)
    session = SteeringSession(tiny_model, TEXT, {5: 1.0}, sae=sae)
    with pytest.raises(SteeringError, match="already steered"):
        session.add_feature(5)
    with pytest.raises(SteeringError, match="not steered here"):
        session.update(6, multiple=1.0)
    with pytest.raises(SteeringError, match="finite"):
        session.update(5, multiple=float("nan"))
    with pytest.raises(SteeringError, match="Cannot change"):
        session.update(5, feature=7)
    with pytest.raises(SteeringError, match="no SAE"):
        SteeringSession(tiny_model, TEXT).add_feature(1)
    with pytest.raises(SteeringError, match="call run"):
        session.wait()


def test_a_generation_cancelled_at_once_ends_and_leaves_no_worker(tiny_model, sae):
    recorder = Recorder()
    session = SteeringSession(tiny_model, TEXT, {5: 1.0}, sae=sae, listener=recorder, max_new_tokens=50,
                              stop_at_eos=False)
    gid = session.run()
    session.cancel()  # before or just after its job starts: either way it ends, and says how
    try:
        result = session.wait(30)
    except JobCancelled:
        assert recorder.events[-1] == ("fail", gid)
    else:
        assert result.stopped == "cancelled" and len(result.steered_ids) < 50
        assert recorder.events[-1] == ("finish", gid)
    session._jobs.wait(30)
    assert session._jobs.jobs() == []
    assert session.run() == gid + 1 and len(session.wait(60).steered_ids) == 50  # the next run starts afresh
    session.close()
