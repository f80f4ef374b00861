"""The served models: one queue and one worker thread per model, and the KV caches kept between requests.

Requests for a model are answered one at a time, in arrival order (batch 1 is what our decode loop
does well): each `ServedModel` has a FIFO of `Job`s and a thread that takes them in turn. A job
opens its session with `firefly_core.session.open_session` (the model from the process's model
service, loaded on first use and shared; the saved prompt format and system prompt; the generation
settings resolved by the same layers as `firefly chat` and the app, the request's fields being the
explicit overrides), renders the messages with the model's prompt format (`firefly_core.formats`,
the same code `firefly chat` and training use), and streams `generate_stream`'s events back under the service's per-model
generation lock. A job whose client went away is cancelled between tokens (or skipped if it never
started), so the model is free for the next request at once.

KV-prefix reuse across requests: OpenAI clients resend the whole conversation each turn, so the
worker keeps a few decoder caches ("slots", the same mechanism `ChatSession` keeps across turns) and
gives each request the slot whose last prompt it extends (same conversation: only the new message
and the tail of the last reply are prefilled). A request that extends no slot's last prompt takes an
empty slot, else the least recently used one; so a second conversation, or a client's side request
(a title, a summary), does not throw away the first conversation's cache.

Torch is imported only inside the worker thread; importing this module is light.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import traceback
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .protocol import ApiError, ChatMessage, ChatRequest, CompletionRequest, shutting_down

DEFAULT_CACHE_SLOTS = 4


@dataclass
class Started:
    """The job holds the model: its prompt is rendered and generation begins."""

    prompt_tokens: int


@dataclass
class Failed:
    """The job ended without a reply; `error` is what the client gets."""

    error: ApiError


@dataclass(eq=False)  # identity: jobs are kept in a set
class Job:
    """One request's work. `emit` is called on the worker thread with `Started`, then the
    generation's `TextDelta`s and `ReplyDone` (or one `Failed`); it must be thread-safe."""

    request: ChatRequest | CompletionRequest
    emit: Callable[[Any], None]
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Finished:
    """A record of an answered job, kept for the log line and for tests."""

    stop_reason: str
    prompt_tokens: int
    reused_tokens: int
    new_tokens: int
    ttft_s: float
    tokens_per_s: float


@dataclass
class _Slot:
    prefix: Any  # a decoder's cache (generation.TokenCache): it knows its ids
    anchor: int = 0  # length of the last prompt answered from this slot
    last_used: int = 0


class ServedModel:
    """A model this server answers for, its job queue and its worker thread."""

    def __init__(
        self,
        name: str,
        model_id: str,
        *,
        overrides: dict[str, Any] | None = None,
        cache_slots: int = DEFAULT_CACHE_SLOTS,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name  # as the user gave it (settings and catalog are keyed by it)
        self.id = model_id  # as `firefly list` shows it, and as clients name it
        self.overrides = dict(overrides or {})  # ModelRequest fields from the command line
        self.cache_slots = max(1, cache_slots)
        self.log = log or (lambda line: None)
        self.finished: deque[Finished] = deque(maxlen=64)  # replies generated (not skipped jobs)
        self.jobs_done = 0  # jobs taken off the queue: answered, failed or skipped
        self.changed = threading.Condition()  # notified when a job is queued or ends
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._slots: list[_Slot] = []
        # The LoadedModel the slots belong to, weakly: when the service drops the model (it keeps the
        # two most recently used), this server must not keep its weights alive.
        self._lm: Any = None
        self._clock = itertools.count(1)
        self._current: Job | None = None
        self._pending: set[Job] = set()
        self._pending_lock = threading.Lock()

    # -- public --------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job; it runs after the jobs queued before it."""
        with self._pending_lock:
            self._pending.add(job)
        self._ensure_thread()
        self._queue.put(job)
        with self.changed:
            self.changed.notify_all()

    def load(self, status: Callable[[str], None] | None = None) -> Any:
        """Load the model now (through the model service) and return the LoadedModel."""
        from firefly_core.models.service import model_service

        service = model_service()
        request = service.request_for(self.name, **self.overrides)
        return service.get(request, status=(lambda s: status(s.message)) if status else None)

    def cancel_all(self) -> None:
        """Cancel every queued and running job (server shutdown)."""
        with self._pending_lock:
            jobs = list(self._pending)
        for job in jobs:
            job.cancel.set()

    def stop(self) -> None:
        """Cancel the jobs and let the worker thread end."""
        self.cancel_all()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def wait_finished(self, count: int, timeout: float = 60.0) -> list[Finished]:
        """Block until at least `count` replies have finished (for tests and benchmarks)."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.finished) >= count, timeout)
            return list(self.finished)

    def wait_until(self, predicate: Callable[["ServedModel"], bool], timeout: float = 60.0) -> bool:
        """Block until `predicate(self)` holds, re-checked whenever a job is queued or ends."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def queued(self) -> int:
        """Jobs waiting for their turn (not counting the one running)."""
        with self._pending_lock:
            return len(self._pending) - (1 if self._current is not None else 0)

    # -- the worker ------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=f"serve:{self.id}", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._current = job
            try:
                if job.cancel.is_set():  # the client is gone, or the server is stopping
                    self._emit(job, Failed(shutting_down()))
                else:
                    self._run(job)
            except ApiError as e:
                self._emit(job, Failed(e))
            except BaseException as e:  # noqa: BLE001 - the worker must survive any request
                self._emit(job, Failed(_api_error_for(e)))
            finally:
                self._current = None
                with self._pending_lock:
                    self._pending.discard(job)
                with self.changed:
                    self.jobs_done += 1
                    self.changed.notify_all()

    def _emit(self, job: Job, event: Any) -> None:
        try:
            job.emit(event)
        except Exception:  # the receiving side is gone (event loop closed): stop this job
            job.cancel.set()

    def _run(self, job: Job) -> None:
        from firefly_core.generation import ReplyDone, generate_stream
        from firefly_core.models.service import model_service
        from firefly_core.session import open_session

        service = model_service()
        session = open_session(
            self.name, overrides=job.request.generation_overrides(), load=self.overrides,
            status=lambda s: self.log(s.message), cancel=job.cancel,
        )
        if job.cancel.is_set():
            raise shutting_down()
        lm, config = session.lm, session.config
        ids = self._prompt_ids(session, job.request)
        context = int(getattr(lm, "context_length", 0) or 0)
        if context and len(ids) >= context:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens; this model's context window is {context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        with service.generation_lock(lm):
            slot = self._slot_for(lm, ids)
            self._emit(job, Started(len(ids)))
            for event in generate_stream(lm, ids, config, job.cancel, prefix_cache=slot.prefix):
                if isinstance(event, ReplyDone):
                    self._record(event.stats)
                self._emit(job, event)

    def _prompt_ids(self, session: Any, request: ChatRequest | CompletionRequest) -> list[int]:
        from firefly_core.errors import FireflyError

        from .limits import check_prompt_size

        check_prompt_size(session.lm, request)
        try:
            if isinstance(request, CompletionRequest):
                return list(session.lm.tokenizer.encode(request.prompt))
            return render_chat(session, request.messages)
        except FireflyError as e:
            raise ApiError(400, _say(e), param="messages") from None

    def _slot_for(self, lm: Any, ids: list[int]) -> _Slot:
        """The cache slot for a prompt (see the module docstring)."""
        from firefly_core.generation import decoder_for
        from firefly_core.generation.cache import common_prefix_length

        if self._lm is None or self._lm() is not lm:  # loaded anew: the old caches belong to the old model
            self._slots.clear()
            self._lm = weakref.ref(lm)
        extending = [s for s in self._slots if s.anchor and common_prefix_length(s.prefix.ids, ids) >= s.anchor]
        if extending:
            slot = max(extending, key=lambda s: (s.anchor, s.last_used))
        elif len(self._slots) < self.cache_slots:
            slot = _Slot(decoder_for(lm).new_cache())
            self._slots.append(slot)
        else:
            slot = min(self._slots, key=lambda s: s.last_used)
        slot.anchor = len(ids)
        slot.last_used = next(self._clock)
        return slot

    def _record(self, stats: Any) -> None:
        rec = Finished(
            stats.stop_reason, stats.prompt_tokens, stats.reused_tokens, stats.new_tokens,
            stats.ttft_s, stats.tokens_per_s,
        )
        with self.changed:
            self.finished.append(rec)
        self.log(
            f"{self.id}: prompt {rec.prompt_tokens} ({rec.reused_tokens} reused) · {rec.new_tokens} tokens · "
            f"{rec.tokens_per_s:.1f} tok/s · first token {rec.ttft_s * 1000:.0f} ms · {rec.stop_reason}"
        )


def render_chat(session: Any, messages: list[ChatMessage]) -> list[int]:
    """Prompt ids for a conversation, exactly as `firefly chat` renders it: the session's prompt
    format, and its system prompt (the one saved for the model) when the request brings none."""
    from firefly_core.formats import Message

    msgs = [Message(m.role, m.content) for m in messages]
    if msgs[0].role != "system" and session.system:
        msgs.insert(0, Message("system", session.system))
    lm = session.lm
    return list(lm.prompt_format.render(lm.tokenizer, msgs, add_generation_prompt=True).ids)


def _say(e: Any) -> str:
    from firefly_core.errors import format_error

    return format_error(e)


def _api_error_for(e: BaseException) -> ApiError:
    """A job's failure as the client sees it: our errors say what to do; anything else is a bug,
    logged with its traceback and answered 500 without one."""
    from firefly_core.errors import (
        ConfigError,
        FireflyError,
        ModelNotFoundError,
        OutOfMemoryError,
        PromptTooLongError,
    )

    from firefly_core.models.service import LoadCancelled

    if isinstance(e, LoadCancelled):
        return shutting_down()
    if isinstance(e, (ConfigError, PromptTooLongError)):
        return ApiError(400, _say(e))
    if isinstance(e, ModelNotFoundError):
        return ApiError(404, _say(e), param="model", code="model_not_found")
    if isinstance(e, OutOfMemoryError):
        return ApiError(503, _say(e), "server_error", code="out_of_memory")
    if isinstance(e, FireflyError):
        return ApiError(500, _say(e), "server_error")
    traceback.print_exception(e, file=sys.stderr)
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error")
