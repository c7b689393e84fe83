"""The ``@task`` decorator and the `TaskFuture` it returns.

Covers both decorator forms, every kind of callable it can wrap, the metadata it keeps,
option validation at decoration time, interoperability of `TaskFuture` with
`concurrent.futures` and asyncio, the attributes describing the child, the call forms of the
original README, and the supervisor's counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import os
import signal
import threading
import time

import pytest
from _faults import deadline, supervisor_idle, supervisor_native_id, wait_until
from _faults import process_state as proc_state
from _timing import BOUND, PROMPT

from inparallel import (
    InheritedFutureError,
    InParallelError,
    TaskFuture,
    TaskTimeout,
    WorkerDied,
    task,
    waitfor,
)
from inparallel._core import _supervisor
from inparallel._core._bridge import to_asyncio
from inparallel._core._future import LocalFuture

# -- helpers ---------------------------------------------------------------------------------


def stats() -> _supervisor.Statistics:
    return _supervisor.statistics()


def run_bounded(main):
    """``asyncio.run(main())``, failing instead of hanging if it is not done within `BOUND`."""
    with deadline(BOUND, "the event loop"):
        return asyncio.run(main())


def wait_supervisor_idle() -> None:
    """Join the supervisor thread, which exits by itself once nothing is in flight."""
    assert supervisor_idle(BOUND)
    assert stats().supervisor_alive is False


# -- decorator forms -------------------------------------------------------------------------


@task
def double(x):
    """Return twice x."""
    return 2 * x


def test_bare_decorator_returns_a_running_task_future():
    fut = double(21)
    assert isinstance(fut, TaskFuture)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=BOUND) == 42


def test_call_returns_at_once_and_the_future_is_running(gate, tracked):
    @task
    def blocked():
        gate.wait()
        return "done"

    t0 = time.monotonic()
    fut = blocked()
    tracked.append(fut)
    assert time.monotonic() - t0 < PROMPT
    assert fut.running()
    assert not fut.done()
    gate.release()
    assert fut.result(timeout=BOUND) == "done"
    assert not fut.running()
    assert fut.done()


def test_parametrized_decorator_and_empty_parentheses():
    @task(timeout=30, name="adder", memory_limit="1G", cpu_time=30)
    def add(a, b):
        return a + b

    @task()
    def neg(a):
        return -a

    fut = add(2, 3)
    assert fut.name == "adder"
    assert fut.result(timeout=BOUND) == 5
    assert neg(4).result(timeout=BOUND) == -4


def test_arguments_defaults_varargs_and_kwargs_pass_through():
    @task
    def collect(a, b=10, *args, c, d=20, **kw):
        return (a, b, args, c, d, kw)

    assert collect(1, c=3).result(timeout=BOUND) == (1, 10, (), 3, 20, {})
    assert collect(1, 2, 5, 6, c=3, d=4, e=7).result(timeout=BOUND) == (
        1,
        2,
        (5, 6),
        3,
        4,
        {"e": 7},
    )


def test_arguments_are_inherited_not_pickled():
    lock = threading.Lock()  # a lock cannot be pickled; fork hands the child its own copy

    @task
    def uses(lk, gen):
        return (type(lk).__name__, next(gen))

    assert uses(lock, iter([7])).result(timeout=BOUND) == (type(lock).__name__, 7)


class Account:
    rate = 3

    def __init__(self, balance):
        self.balance = balance

    @task
    def projected(self, years):
        """Balance after some years."""
        self.balance *= 100  # runs in the child: the parent's object is not changed
        return self.balance + years

    @classmethod
    @task
    def cls_under(cls, x):
        return (cls.__name__, cls.rate * x)

    @task
    @classmethod
    def cls_over(cls, x):
        return (cls.__name__, cls.rate * x)

    @staticmethod
    @task
    def static_under(x):
        return x + 1

    @task
    @staticmethod
    def static_over(x):
        return x + 2


class SavingsAccount(Account):
    rate = 5


def test_instance_method_runs_on_an_inherited_copy_of_self():
    acct = Account(7)
    assert acct.projected(2).result(timeout=BOUND) == 702
    assert acct.balance == 7


@pytest.mark.parametrize("name", ["cls_under", "cls_over"])
def test_classmethod_in_either_order(name):
    assert getattr(Account, name)(2).result(timeout=BOUND) == ("Account", 6)
    assert getattr(Account(0), name)(2).result(timeout=BOUND) == ("Account", 6)
    assert getattr(SavingsAccount, name)(2).result(timeout=BOUND) == ("SavingsAccount", 10)


@pytest.mark.parametrize(("name", "delta"), [("static_under", 1), ("static_over", 2)])
def test_staticmethod_in_either_order(name, delta):
    assert getattr(Account, name)(1).result(timeout=BOUND) == 1 + delta
    assert getattr(Account(0), name)(1).result(timeout=BOUND) == 1 + delta


# -- metadata --------------------------------------------------------------------------------


def _original(a: int, b: str = "x", *rest: float, key: bool = False, **extra: object) -> str:
    """Original docstring."""
    return f"{a}{b}"


def test_wraps_keeps_name_doc_module_signature():
    wrapped = task(_original)
    assert wrapped.__name__ == "_original"
    assert wrapped.__qualname__ == "_original"
    assert wrapped.__doc__ == "Original docstring."
    assert wrapped.__module__ == __name__
    assert wrapped.__wrapped__ is _original
    assert inspect.signature(wrapped).parameters == inspect.signature(_original).parameters
    assert wrapped(1, "y").result(timeout=BOUND) == "1y"


def test_parametrized_form_keeps_metadata_too():
    wrapped = task(timeout=5)(_original)
    assert wrapped.__name__ == "_original"
    assert wrapped.__doc__ == "Original docstring."
    assert inspect.signature(wrapped).parameters == inspect.signature(_original).parameters


def test_method_metadata_and_bound_signature():
    assert Account.projected.__name__ == "projected"
    assert Account.projected.__qualname__ == "Account.projected"
    assert Account.projected.__doc__ == "Balance after some years."
    assert list(inspect.signature(Account.projected).parameters) == ["self", "years"]
    assert list(inspect.signature(Account(1).projected).parameters) == ["years"]
    assert list(inspect.signature(Account.cls_under).parameters) == ["x"]
    assert list(inspect.signature(Account.cls_over).parameters) == ["x"]
    assert list(inspect.signature(Account.static_under).parameters) == ["x"]
    assert list(inspect.signature(Account.static_over).parameters) == ["x"]


def test_default_name_is_the_function_name():
    fut = double(1)
    assert isinstance(fut.name, str)
    assert "double" in fut.name
    fut.result(timeout=BOUND)


# -- options validated at decoration time ----------------------------------------------------


def _plain():
    return 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"timeout": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": "5"}, TypeError),
        ({"memory_limit": -5}, ValueError),
        ({"memory_limit": "lots"}, ValueError),
        ({"memory_limit": "12Q"}, ValueError),
        ({"memory_limit": ""}, ValueError),
        ({"memory_limit": [1]}, TypeError),
        ({"cpu_time": -1}, ValueError),
        ({"cpu_time": "10"}, TypeError),
        ({"name": 3}, TypeError),
        ({"restricted_results": "yes"}, TypeError),
        ({"max_result_size": 0}, ValueError),
        ({"max_result_size": -1}, ValueError),
        ({"max_result_size": [1]}, TypeError),
        ({"timeot": 1}, TypeError),
    ],
)
def test_bad_options_fail_at_decoration_without_forking(options, error):
    spawned = stats().spawned
    with pytest.raises(error):
        task(**options)(_plain)
    assert stats().spawned == spawned


@pytest.mark.parametrize("limit", [1 << 30, "512M", "1G", "1.5GiB"])
def test_memory_limit_forms_accepted(limit):
    assert task(memory_limit=limit)(_plain)().result(timeout=BOUND) == 1


def test_non_callable_is_rejected():
    with pytest.raises(TypeError):
        task(42)
    with pytest.raises(TypeError):
        task(timeout=1)("not a function")


# -- interoperability with concurrent.futures and asyncio ------------------------------------


def test_concurrent_futures_wait_and_as_completed(gate, tracked):
    @task
    def slow():
        gate.wait()
        return "slow"

    blocked = slow()
    tracked.append(blocked)
    quick = [double(i) for i in range(4)]
    done, not_done = concurrent.futures.wait(
        [blocked, *quick], timeout=BOUND, return_when=concurrent.futures.FIRST_COMPLETED
    )
    # How many of the quick ones have finished when wait() returns is a race; at least one
    # has, and never the blocked one.
    assert done and done <= set(quick)
    assert blocked in not_done
    done, not_done = concurrent.futures.wait(quick, timeout=BOUND)
    assert done == set(quick) and not not_done
    gate.release()
    futs = [blocked, *quick]
    seen = [f.result() for f in concurrent.futures.as_completed(futs, timeout=BOUND)]
    assert sorted(seen, key=str) == sorted(["slow", 0, 2, 4, 6], key=str)


def test_wait_first_exception():
    @task
    def fail():
        raise KeyError("nope")

    futs = [fail(), double(1)]
    done, _ = concurrent.futures.wait(
        futs, timeout=BOUND, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert futs[0] in done
    assert isinstance(futs[0].exception(), KeyError)
    assert futs[1].result(timeout=BOUND) == 2


def test_asyncio_wrap_future_and_direct_await():
    async def main():
        a = await asyncio.wrap_future(double(5))
        b = await double(6)
        c = await asyncio.gather(double(1), asyncio.wrap_future(double(2)))
        return a, b, c

    assert run_bounded(main) == (10, 12, [2, 4])


def test_await_reraises_the_task_exception():
    @task
    def fail():
        raise ValueError("from the child")

    async def main():
        with pytest.raises(ValueError, match="from the child"):
            await fail()

    run_bounded(main)


def _assert_child_killed(fut):
    """The future was cancelled, and its child killed with SIGKILL and reaped."""
    assert fut.cancelled()
    # The supervisor reaps the child after the cancel, and sets its exit code then.
    assert wait_until(lambda: fut.exitcode is not None), f"child {fut.pid} was not reaped"
    assert fut.exitcode == -signal.SIGKILL
    assert proc_state(fut.pid) is None, f"child {fut.pid} still exists: {proc_state(fut.pid)}"


@pytest.mark.parametrize("how", ["await", "wrap_future"])
def test_cancelling_the_awaiting_asyncio_task_kills_the_child(gate, beacon, tracked, how):
    @task
    def blocked():
        beacon.send()
        gate.wait()
        return "should not arrive"

    async def main():
        fut = blocked()
        tracked.append(fut)
        awaiting = asyncio.Event()

        async def waiter():
            awaiting.set()
            if how == "await":
                return await fut
            return await asyncio.wrap_future(fut)

        beacon.receive()
        t = asyncio.ensure_future(waiter())
        await awaiting.wait()  # the waiter is now suspended on the future
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return fut

    _assert_child_killed(run_bounded(main))


def test_asyncio_wait_for_timeout_kills_the_child(gate, beacon, tracked):
    @task
    def blocked():
        beacon.send()
        gate.wait()

    async def main():
        fut = blocked()
        tracked.append(fut)
        beacon.receive()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fut, 0.2)
        return fut

    _assert_child_killed(run_bounded(main))


# -- futures inherited by fork ---------------------------------------------------------------


def wait_in_child(fut, how):
    """Wait for ``fut`` in the calling process, the way ``how`` says; return what it gave."""
    if how == "result":
        return fut.result()
    if how == "exception":
        return fut.exception()
    if how.startswith("wait_"):
        when = how[5:].upper()
        done, not_done = concurrent.futures.wait([fut], timeout=BOUND, return_when=when)
        return len(done), len(not_done)
    if how == "as_completed":
        return [f.result() for f in concurrent.futures.as_completed([fut])]
    if how == "add_done_callback":
        called = threading.Event()
        fut.add_done_callback(lambda f: called.set())
        return called.wait(BOUND)
    if how == "waitfor":
        return [f.result() for f in waitfor([fut])]

    async def main():
        if how == "await":
            return await fut
        assert how == "wrap_future"
        return await asyncio.wrap_future(fut)

    return asyncio.run(main())


WAYS = [
    "result",
    "exception",
    "wait_all_completed",
    "wait_first_completed",
    "wait_first_exception",
    "as_completed",
    "add_done_callback",
    "waitfor",
    "await",
    "wrap_future",
]


@task(timeout=BOUND)  # a child that hangs (as before the fix) is killed, not leaked
def wait_for_it(fut, how):
    return wait_in_child(fut, how)


@pytest.mark.parametrize("how", WAYS)
def test_a_parents_unfinished_future_refuses_to_wait_in_a_child(gate, tracked, how):
    """A task given a future of its parent: every way to wait for it fails at once.

    Before, the child waited for ever: only the parent's supervisor finishes the future.
    """

    @task
    def blocked():
        gate.wait()
        return "value"

    parent = blocked()
    tracked.append(parent)
    consumer = wait_for_it(parent, how)
    with pytest.raises(InheritedFutureError) as info:
        consumer.result(timeout=2 * BOUND)  # the error pickles back from the child as itself
    error = info.value
    assert isinstance(error, InParallelError) and isinstance(error, RuntimeError)
    assert (error.owner, error.pid) == (os.getpid(), consumer.pid)
    assert f"pid={parent.pid}" in error.what
    assert "Pass the value, not the future" in str(error)
    assert parent.running()  # the child's attempt changed nothing here
    gate.release()
    assert parent.result(timeout=BOUND) == "value"


def test_local_future_refuses_to_wait_in_a_child():
    """The base class, for futures that a thread of the parent finishes (StreamExecutor's)."""
    fut: LocalFuture[int] = LocalFuture()
    with pytest.raises(InheritedFutureError, match="LocalFuture"):
        wait_for_it(fut, "result").result(timeout=2 * BOUND)
    fut.set_result(3)
    assert fut.result() == 3


@pytest.mark.parametrize("how", WAYS)
def test_a_future_finished_before_the_fork_works_in_the_child(how):
    done = double(4)
    assert done.result(timeout=BOUND) == 8
    got = wait_for_it(done, how).result(timeout=BOUND)
    expected = {"exception": None, "as_completed": [8], "add_done_callback": True, "waitfor": [8]}
    assert got == ((1, 0) if how.startswith("wait_") else expected.get(how, 8))


def test_a_failed_future_finished_before_the_fork_keeps_its_error_in_the_child():
    @task
    def fail():
        raise KeyError("from the first child")

    failed = fail()
    assert isinstance(failed.exception(timeout=BOUND), KeyError)

    @task
    def inspect_it(fut):
        return repr(fut.exception())

    assert "from the first child" in inspect_it(failed).result(timeout=BOUND)


def test_cancel_in_a_child_leaves_the_parents_task_alone(gate, tracked):
    @task
    def blocked():
        gate.wait()
        return "still here"

    parent = blocked()
    tracked.append(parent)

    @task
    def cancel_it(fut):
        return fut.cancel(), fut.done(), fut.kill()

    assert cancel_it(parent).result(timeout=BOUND) == (False, False, False)
    assert parent.running()
    gate.release()
    assert parent.result(timeout=BOUND) == "still here"


def test_a_future_made_in_the_child_works_there():
    @task
    def nested():
        return double(5).result(timeout=BOUND)

    assert nested().result(timeout=BOUND) == 10


# -- StopIteration and StopAsyncIteration through await ---------------------------------------


def run_quietly(main):
    """``asyncio.run(main())``, failing on anything the loop reports (a callback's error)."""
    complaints = []

    async def wrapper():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: complaints.append(ctx))
        return await main()

    result = run_bounded(wrapper)
    assert complaints == []
    return result


@pytest.mark.parametrize("stop", [StopIteration, StopAsyncIteration])
def test_await_of_a_task_raising_stop_iteration_raises_runtime_error(stop):
    """As PEP 479 does: a RuntimeError caused by the original, naming the task.

    Before, asyncio refused to store a StopIteration (a TypeError in the loop's log) and the
    await hung; a StopAsyncIteration reached the awaiting code as itself, where it ends an
    ``__anext__`` in silence.
    """

    @task
    def stops():
        raise stop("no more")

    fut = stops()

    async def main():
        with pytest.raises(RuntimeError, match=f"raised {stop.__name__}") as info:
            await asyncio.wait_for(fut, BOUND)
        assert type(info.value.__cause__) is stop
        assert str(info.value.__cause__) == "no more"
        assert f"task {fut.name} (pid {fut.pid})" in str(info.value)

    run_quietly(main)
    with pytest.raises(stop, match="no more"):  # sync code gets the task's own exception
        fut.result(timeout=BOUND)


def test_to_asyncio_passes_results_errors_and_cancellation():
    async def main():
        loop = asyncio.get_running_loop()
        ok: concurrent.futures.Future[int] = concurrent.futures.Future()
        dest = to_asyncio(ok, loop, "ok")
        setter = threading.Thread(target=ok.set_result, args=(1,))  # callbacks off the loop
        setter.start()
        assert await dest == 1
        setter.join(BOUND)
        bad: concurrent.futures.Future[int] = concurrent.futures.Future()
        bad.set_exception(KeyError("k"))
        with pytest.raises(KeyError):
            await to_asyncio(bad, loop, "bad")
        stop: concurrent.futures.Future[int] = concurrent.futures.Future()
        stop.set_exception(StopIteration())
        with pytest.raises(RuntimeError, match=r"^stop raised StopIteration"):
            await to_asyncio(stop, loop, "stop")
        pending: concurrent.futures.Future[int] = concurrent.futures.Future()
        dest = to_asyncio(pending, loop, "pending")
        dest.cancel()
        await asyncio.sleep(0)  # the done-callbacks run on the next turn
        assert pending.cancelled()
        cancelled: concurrent.futures.Future[int] = concurrent.futures.Future()
        dest = to_asyncio(cancelled, loop, "cancelled")
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dest

    run_quietly(main)


def test_to_asyncio_source_finishing_after_the_loop_closed_is_quiet():
    loop = asyncio.new_event_loop()
    source: concurrent.futures.Future[int] = concurrent.futures.Future()
    to_asyncio(source, loop, "late")
    loop.close()
    source.set_result(1)  # no RuntimeError from the closed loop reaches this thread


# -- repr and attributes ---------------------------------------------------------------------


def test_repr_shows_pid_name_and_state(gate, tracked):
    @task(name="reporter")
    def blocked():
        gate.wait()
        return 1

    fut = blocked()
    tracked.append(fut)
    text = repr(fut)
    assert str(fut.pid) in text
    assert "reporter" in text
    assert "running" in text.lower()
    gate.release()
    fut.result(timeout=BOUND)
    text = repr(fut)
    assert str(fut.pid) in text
    assert "running" not in text.lower()
    assert "finished" in text.lower()


def test_pid_exitcode_rusage_while_running_and_after(gate, tracked):
    @task
    def work():
        gate.wait()
        ballast = b"\x01" * (64 << 20)  # touched: the child's peak RSS exceeds 64 MiB
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:  # burn 0.3 s of CPU
            pass
        return len(ballast)

    fut = work()
    tracked.append(fut)
    assert isinstance(fut.pid, int)
    assert fut.pid > 0
    assert fut.pid != os.getpid()
    assert proc_state(fut.pid) not in (None, "Z")
    assert fut.exitcode is None
    assert fut.rusage is None
    gate.release()
    assert fut.result(timeout=BOUND) == 64 << 20
    assert fut.exitcode == 0
    usage = fut.rusage
    assert usage is not None
    assert isinstance(usage.maxrss, int)
    # Bounds: the peak also holds the interpreter, and its exact size is the kernel's.
    assert usage.maxrss >= 64 << 20  # bytes, not kilobytes
    assert usage.maxrss < 1 << 40
    assert isinstance(usage.utime, float)
    assert isinstance(usage.stime, float)
    assert usage.utime + usage.stime >= 0.25  # a bound: CPU ticks are counted coarsely


def test_exitcode_and_rusage_are_set_before_done_callbacks(gate, tracked):
    seen = []
    called = threading.Event()

    @task
    def work():
        gate.wait()
        return 1

    def callback(f):
        seen.append((f.exitcode, f.rusage))
        called.set()

    fut = work()
    tracked.append(fut)
    fut.add_done_callback(callback)
    gate.release()
    assert called.wait(BOUND)
    [(exitcode, usage)] = seen
    assert exitcode == 0
    assert usage is not None


def test_kill_sends_a_signal_and_reports_it(gate, beacon, tracked):
    @task
    def blocked():
        beacon.send()
        gate.wait()

    fut = blocked()
    tracked.append(fut)
    beacon.receive()
    assert fut.kill() is True
    err = fut.exception(timeout=BOUND)
    assert isinstance(err, WorkerDied)
    assert err.pid == fut.pid
    assert err.signal == signal.SIGKILL
    assert err.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(err)
    assert fut.exitcode == -signal.SIGKILL
    assert fut.kill() is False  # nothing left to signal


def test_kill_with_another_signal(gate, beacon, tracked):
    @task
    def blocked():
        beacon.send()
        gate.wait()

    fut = blocked()
    tracked.append(fut)
    beacon.receive()
    assert fut.kill(signal.SIGTERM) is True
    err = fut.exception(timeout=BOUND)
    assert isinstance(err, WorkerDied)
    assert err.signal == signal.SIGTERM
    assert fut.exitcode == -signal.SIGTERM


def test_kill_with_a_harmless_signal_lets_the_task_finish(gate, beacon, tracked):
    @task
    def blocked():
        beacon.send()
        gate.wait()
        return "finished"

    fut = blocked()
    tracked.append(fut)
    beacon.receive()
    assert fut.kill(signal.SIGCONT) is True
    gate.release()
    assert fut.result(timeout=BOUND) == "finished"


# -- the call forms of the original README ---------------------------------------------------


SERVERS = [
    "alpha.local",
    "bravo.local",
    "charlie.local",
    "delta.local",
    "echo.local",
    "foxtrot.local",
    "golf.local",
    "hotel.local",
    "india.local",
    "juliet.local",
    "kilo.local",
    "lima.local",
]


def test_readme_form_without_concurrency_factor():
    servers = list(SERVERS)

    @task
    def getOS(server):  # the README's spelling
        return f"Linux {server} {os.getpid()}"

    active_futures = []
    while len(servers) > 0:
        active_futures.append(getOS(servers.pop(0)))

    results = []
    with deadline(BOUND, "waitfor"):
        for future in waitfor(active_futures):
            results.append(future.result())

    assert active_futures == []
    assert sorted(r.split()[1] for r in results) == sorted(SERVERS)
    assert len({r.split()[2] for r in results}) == len(SERVERS)  # one process per call


def test_readme_form_with_concurrency_factor():
    servers = list(SERVERS)

    @task
    def getOS(server):  # the README's spelling
        return f"Linux {server}"

    active_futures = []
    results = []
    most = 0
    with deadline(BOUND, "waitfor"):
        for future in waitfor(active_futures, concurrency_factor=3):
            if future is not None:
                results.append(future.result())
            elif len(servers) > 0:
                active_futures.append(getOS(servers.pop(0)))
                most = max(most, sum(not f.done() for f in active_futures))

    assert active_futures == []
    assert sorted(r.split()[1] for r in results) == sorted(SERVERS)
    # A bound: how many calls are still running when the next one starts depends on how fast
    # they finish; the factor caps it.
    assert 1 <= most <= 3


# -- statistics ------------------------------------------------------------------------------


def test_statistics_is_a_typed_frozen_record():
    s = stats()
    fields = {f.name: f.type for f in dataclasses.fields(s)}
    assert fields == {
        **dict.fromkeys(
            ("spawned", "completed", "failed", "cancelled", "timed_out", "killed_lingering"), "int"
        ),
        "in_flight": "int",
        "supervisor_alive": "bool",
    }
    for name in fields:
        value = getattr(s, name)
        assert type(value) is (bool if name == "supervisor_alive" else int), name
        assert value >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.spawned = 0  # type: ignore[misc]


def test_statistics_count_every_outcome(gate, beacon, tracked):
    @task
    def blocked():
        beacon.send()
        gate.wait()
        return 1

    @task
    def fail():
        raise RuntimeError("counted")

    @task(timeout=0.3)
    def hang():
        gate.wait()

    wait_supervisor_idle()  # nothing of an earlier test is still in flight
    before = stats()
    assert before.in_flight == 0
    running = blocked()
    tracked.append(running)
    beacon.receive()
    during = stats()
    assert during.spawned == before.spawned + 1
    assert during.in_flight == 1
    assert during.supervisor_alive is False  # nothing waits for it yet

    assert double(1).result(timeout=BOUND) == 2
    with pytest.raises(RuntimeError):
        fail().result(timeout=BOUND)
    with pytest.raises(TaskTimeout):
        hang().result(timeout=BOUND)
    assert running.cancel() is True

    wait_supervisor_idle()  # the cancelled child is reaped (and counted) asynchronously
    after = stats()
    # Each outcome is counted once, under its own name.
    assert after.spawned == before.spawned + 4
    assert after.completed == before.completed + 1
    assert after.failed == before.failed + 1
    assert after.timed_out == before.timed_out + 1
    assert after.cancelled == before.cancelled + 1
    assert after.killed_lingering == before.killed_lingering
    assert after.in_flight == 0


def test_supervisor_thread_starts_on_demand_and_exits_when_idle(gate, tracked):
    wait_supervisor_idle()

    @task
    def blocked():
        gate.wait()
        return 1

    fut = blocked()
    tracked.append(fut)
    assert stats().supervisor_alive is False  # nothing waits for it yet
    fut.add_done_callback(lambda _: None)  # something will, without calling result()
    native_id = supervisor_native_id()
    assert native_id is not None and str(native_id) in os.listdir("/proc/self/task")
    (supervisor,) = [t for t in threading.enumerate() if t.name == "inparallel-supervisor"]
    assert supervisor.native_id == native_id
    assert supervisor.daemon  # never holds up interpreter exit
    assert stats().supervisor_alive is True
    gate.release()
    assert fut.result(timeout=BOUND) == 1
    wait_supervisor_idle()


def test_task_future_is_generic():
    alias = TaskFuture[int]
    assert alias.__origin__ is TaskFuture


def test_result_from_inside_own_callback_is_immediate():
    got = []
    called = threading.Event()

    def callback(f):
        got.append(f.result())
        called.set()

    fut = double(8)
    fut.add_done_callback(callback)
    assert called.wait(BOUND)
    assert got == [16]


def test_inparallel_error_is_the_root():
    for cls in (WorkerDied, TaskTimeout):
        assert issubclass(cls, InParallelError)
    assert issubclass(TaskTimeout, TimeoutError)


def test_lambda_can_be_wrapped():
    assert task(lambda: "lam")().result(timeout=BOUND) == "lam"


def test_task_timeout_says_what_happened_and_which_knobs_there_are():
    message = str(TaskTimeout(1234, 2.5))
    assert message.startswith("task process 1234 was still running after timeout=2.5s")
    assert "SIGKILL" in message and "raise timeout= on @task" in message
    assert "deadlines of their own" in message
    assert "progress" not in message
