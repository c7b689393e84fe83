"""`DaskExecutor`: run the library's calls on a Dask cluster (``pip install 'inparallel[dask]'``).

::

    submit(fn, *args, **kwargs)                          our fetch threads
      -> blob = cloudpickle((fn, args, kwargs))           dask done-callback
      -> client.submit(run_call, blob, *shared,           -> hand the future to a fetch thread
                       key=<fresh>, pure=False)             -> gather the result (or error)
      <- RemoteFuture (a concurrent.futures.Future)          -> resolve the RemoteFuture

Raw dask futures do not work with `concurrent.futures.wait` or ``as_completed``, and
``Client.get_executor()`` merges user keyword arguments into dask's own (a ``key=`` or
``priority=`` of the user's is swallowed), de-duplicates identical calls and never resolves a
future whose result fails to deserialize (dask/distributed#548, #3695). This adapter avoids
all of that by sending one blob per call (`inparallel.backends._call`).

Dask runs every done-callback of a client on one thread; gathering a result there would
serialise all of them, so the callback only hands the finished future to a small pool of
our own threads.

What does not carry over from fork: a worker imports modules afresh (globals the parent
changed at run time are not seen, unless the function is pickled by value: ``__main__``
code, lambdas and closures are); workers are long-lived (module state persists between
calls); only picklable arguments and results cross; and a call already running on a worker
cannot be interrupted (dask/distributed#4694): ``cancel()`` then releases its result only.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any, TypeVar

from .._core._future import LocalFuture
from .._executor import portable
from ._call import Shared, pack_call, run_call, unwrap_failure

if TYPE_CHECKING:
    import distributed

__all__ = ("DaskExecutor", "RemoteFuture", "adapt", "from_address")

T = TypeVar("T")
R = TypeVar("R")

#: Threads that gather finished results: enough to overlap a few transfers, few enough to
#: cost nothing (they start as needed).
FETCH_THREADS = 4


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "the dask engine needs dask and distributed: pip install 'inparallel[dask]'"
        ) from exc
    return distributed


class RemoteFuture(LocalFuture[R]):
    """A standard future for one call on a cluster.

    It stays pending until the result is back (dask does not say when a call starts), so
    ``cancel()`` succeeds until then and the future delivers nothing. On the cluster it is
    best effort: dask drops a call it has not handed to a worker yet; one a worker already
    holds may still run there, and one already running finishes (its result is released).
    `wait`, `as_completed`, `waitfor` and ``asyncio.wrap_future`` see a cancellation at once.
    """

    def __init__(self, handle: Any, name: str) -> None:
        super().__init__()
        self._handle: Any = handle  # the dask future, until the outcome is fetched
        self._name = name

    def __repr__(self) -> str:
        return f"<RemoteFuture {self._name} {self._state.lower()}>"

    def cancel(self) -> bool:
        """Cancel the call unless its outcome is already here; see the class docstring."""
        return self._cancel(lambda _: not self.running(), self._stop_handle)

    def _stop_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):  # the client is closing: nothing to cancel
                handle.cancel()

    def settle(self, handle: Any) -> None:
        """Take the finished dask future's outcome (runs on a fetch thread)."""
        if not self.set_running_or_notify_cancel():  # cancelled meanwhile
            return
        # From now on cancel() refuses: the outcome is on its way.
        try:
            status = handle.status
            if status == "cancelled":
                error: BaseException = _cancelled(self._name)
            elif status == "error":
                error = unwrap_failure(handle.exception())
            else:
                self.set_result(handle.result())
                return
        except BaseException as exc:  # the result could not be fetched or deserialized
            error = exc
        finally:
            self._handle = None  # releases the result on the cluster
        self.set_exception(error)


def _cancelled(name: str) -> BaseException:
    from concurrent.futures import CancelledError

    return CancelledError(f"the cluster cancelled {name} (its client closed, or a worker lost it)")


class DaskExecutor(Executor):
    """A `concurrent.futures.Executor` on a Dask cluster.

    Each ``submit`` sends one cloudpickled blob (function, arguments and keyword arguments)
    under a fresh key, so identical calls all run and no user keyword meets dask's own. The
    futures are standard (`RemoteFuture`); an exception raised by a call comes back as its
    own type with the worker's traceback.

    Args:
        client: A ``distributed.Client``, or the address of a scheduler
            (``"tcp://host:8786"``), or the path of a scheduler file: the executor then opens
            its own client and closes it on `shutdown`.
        resources: Dask resources every call needs (``{"GPU": 1}``).
        retries: How many times dask reruns a call that failed.

    Raises:
        ImportError: dask or distributed is not installed (the ``dask`` extra).
        TypeError: ``client`` is neither a client nor a string.
    """

    def __init__(
        self,
        client: distributed.Client | str,
        *,
        resources: Mapping[str, float] | None = None,
        retries: int = 0,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"DaskExecutor: retries must be an int >= 0, not {retries!r}")
        dist = _distributed()
        self._owns = isinstance(client, str)
        if isinstance(client, str):
            if client.endswith(".json"):
                client = dist.Client(scheduler_file=client, set_as_default=False)
            else:
                client = dist.Client(client, set_as_default=False)
        if not isinstance(client, dist.Client):
            raise TypeError(
                "DaskExecutor needs a distributed.Client or a scheduler address such as "
                f"'tcp://127.0.0.1:8786', not {type(client).__qualname__} {client!r:.80}"
            )
        self._client: Any = client  # distributed is partly untyped
        self._options: dict[str, Any] = {"retries": retries}
        if resources is not None:
            self._options["resources"] = dict(resources)
        self._fetch = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="inparallel-dask")
        self._lock = threading.Lock()
        self._outstanding: set[RemoteFuture[Any]] = set()
        self._shutdown = False

    @property
    def client(self) -> distributed.Client:
        """The dask client the calls go through."""
        client: distributed.Client = self._client
        return client

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._outstanding)} in flight"
        address = getattr(self._client.scheduler, "address", "?")
        return f"<DaskExecutor {address}: {state}>"

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> RemoteFuture[R]:
        """Send ``fn(*args, **kwargs)`` to the cluster; return its future at once.

        Raises:
            RuntimeError: The executor is shut down.
            TypeError: ``fn`` is not callable, or the call cannot be pickled.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__} {fn!r}")
        if self._shutdown:
            raise RuntimeError("cannot submit to a DaskExecutor after shutdown()")
        name = str(getattr(fn, "__qualname__", None) or type(fn).__name__)
        blob, handles = pack_call(portable(fn), args, kwargs, self)
        key = f"{name.replace('.', '-')[:60]}-{uuid.uuid4().hex}"
        handle = self._client.submit(run_call, blob, *handles, key=key, pure=False, **self._options)
        future: RemoteFuture[R] = RemoteFuture(handle, name)
        with self._lock:
            self._outstanding.add(future)
        future.add_done_callback(self._forget)
        handle.add_done_callback(lambda done: self._hand_over(future, done))
        return future

    def _hand_over(self, future: RemoteFuture[Any], handle: Any) -> None:
        # On dask's callback thread: never block here.
        try:
            self._fetch.submit(future.settle, handle)
        except RuntimeError:  # our pool is shut down: settle here, once, at the end
            future.settle(handle)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(future)  # type: ignore[arg-type,unused-ignore]

    def share(self, value: T) -> T:
        """Copy ``value`` to every worker once; return a handle calls receive it through.

        Pass the handle anywhere in the arguments (or closure) of calls on this executor:
        each call gets the value itself, read from its worker's memory. Keep the handle
        while calls may use it; dropping it frees the copies.
        """
        # In a list of one: scatter() sends a list, tuple or dict item by item, and uses a
        # dict's own keys as dask keys (two dicts with the same keys would be confused).
        (handle,) = self._client.scatter([value], broadcast=True, hash=False)
        return Shared(handle, self, type(value).__qualname__)  # type: ignore[return-value]

    def worker_slots(self) -> int:
        """How many calls the cluster runs at once now: the threads of all its workers."""
        return max(1, int(sum(self._client.nthreads().values())))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; cancel the outstanding ones if asked; wait for the rest if asked.

        Closes the client if this executor opened it.
        """
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding)
        if cancel_futures:
            for future in outstanding:
                future.cancel()
        if wait:
            wait_futures(outstanding)
        self._fetch.shutdown(wait=wait)
        if self._owns:
            self._client.close()


def from_address(address: str) -> DaskExecutor:
    """Connect to the scheduler at ``address`` (or named by a scheduler file)."""
    return DaskExecutor(address)


_adapted_lock = threading.Lock()

#: The attribute of a client that holds its executor (a cycle the garbage collector frees).
_ADAPTED = "_inparallel_executor"


def adapt(obj: object) -> DaskExecutor | None:
    """Wrap a ``distributed.Client`` in a `DaskExecutor` (None for anything else).

    One executor per client, made once: ``use(client)`` and ``executor=client`` may be
    written as often as you like without starting new fetch threads each time.
    """
    dist = _distributed()
    if not isinstance(obj, dist.Client):
        return None
    with _adapted_lock:
        executor = getattr(obj, _ADAPTED, None)
        if not isinstance(executor, DaskExecutor) or executor._shutdown:
            executor = DaskExecutor(obj)
            setattr(obj, _ADAPTED, executor)
        return executor
