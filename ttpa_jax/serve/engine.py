"""The decoding side of the server: a request becomes a prompt (the model's own chat template), waits
in one queue, and decodes in a batch with the requests that arrived with it, on the jitted decoder.

One worker thread owns the model. When it is free it takes the oldest request, waits up to
``batch_wait_s`` for others arriving at the same moment, and decodes together (one
``decode.loop.generate`` call through ``decode.batching.decode_in_batches``) every queued request
that shares the first one's next-token rule and stop strings, oldest first, up to ``batch_size`` rows
(a request with ``n`` choices takes ``n`` rows). Requests of another kind wait for the batch in flight,
no longer. The queue holds at most ``max_queue`` requests; one more is refused (429) rather than left
waiting. The new-token budget of a batch is its longest request's ``max_tokens``, rounded up to a
power of two so batches share compiled loops; each row is cut to its own request's budget.

A batch decodes ``segment`` steps at a time (``decode.segments``): between segments a request whose
rows have all ended is answered while the batch decodes on, and a streamed request without tools gets
the text decoded so far (a stop string's possible beginning held back). With tools the answer is sent
once its calls can be parsed, from the whole output, as evaluation parses it.

A ``tool_choice`` naming a function (or ``required``) is honoured by writing the start of a call into
the assistant turn (``forced_prefix``: the chat template's own rendering of a call, cut where the
arguments, or the name, begin, less a trailing space, which byte-level tokenizers fold into the next
token); the model continues from there and the prefix is parsed with its output.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import jax
import jax.numpy as jnp
import numpy as np

from ttpa_jax.core.conversation import normalize_record
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.decode.batching import decode_in_batches
from ttpa_jax.decode.rules import Sampling
from ttpa_jax.decode.segments import SegmentedDecode
from ttpa_jax.decode.settings import DEFAULT_BUCKET
from ttpa_jax.serve.protocol import ChatRequest, RequestError
from ttpa_jax.text.detokenize import Completion, decode_text, finish, stop_token_sequences, truncate_at_stop
from ttpa_jax.text.prompts import render_chat

SENTINEL = "TTPAxFORCEDxCALLx7f3a"  # marks where a rendered call's name or arguments begin


@dataclasses.dataclass
class Job:
    """One request ready to decode: ``ids`` [T] prompt tokens (a forced ``prefix`` included)."""

    ids: list[int]
    prefix: str
    request: ChatRequest
    max_tokens: int
    sampling: Sampling
    seed: int
    future: Future = dataclasses.field(default_factory=Future)
    notify: Callable[[int, str], None] | None = None  # (choice, new text) while decoding; called by the decoder
    sent: list[str] = dataclasses.field(default_factory=list)  # [n] text notified so far per choice
    ended: list[Completion | None] = dataclasses.field(default_factory=list)  # [n] finished choices

    def __post_init__(self):
        self.sent = [""] * self.request.n
        self.ended = [None] * self.request.n

    @property
    def kind(self) -> tuple:
        """Requests of one kind decode in one loop (the rule and the stop strings are compiled in)."""
        return (self.sampling, self.request.stop)

    @property
    def streams_text(self) -> bool:
        """Whether text is sent as it decodes: streamed, and no calls to parse from the whole output."""
        return self.request.stream and not (self.request.tools and self.request.tool_choice != "none")


def sampling_of(request: ChatRequest) -> Sampling:
    """The next-token rule: greedy at temperature 0 (top_p then changes nothing)."""
    return Sampling() if request.temperature == 0 else Sampling(request.temperature, 0, request.top_p)


def new_tokens_bucket(n: int) -> int:
    """A batch's new-token budget: the next power of two, at least 16 (few compiled loops)."""
    return max(16, 1 << max(0, (n - 1).bit_length()))


def forced_prefix(tokenizer, messages: list[dict], tools: list[dict], name: str | None) -> str:
    """The assistant text that starts a call of ``name`` (any tool when None), as the chat template
    writes one: the rendering of a call with a sentinel argument (or name), cut at the sentinel."""
    prompt = render_chat(tokenizer, messages, tools)
    fn = {"name": name, "arguments": SENTINEL} if name else {"name": SENTINEL, "arguments": "{}"}
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "call_0", "function": fn}]}
    full = tokenizer.apply_chat_template([*messages, call], tools=tools, tokenize=False)
    cut = full.find(SENTINEL)
    if not full.startswith(prompt) or cut < len(prompt):
        raise RequestError("tool_choice: this model's chat template does not show where a tool call begins, so a "
                           "call cannot be required", param="tool_choice")
    return full[len(prompt):cut].rstrip(" ")  # a trailing space is the start of the model's next token


class Engine:
    """The model, its tokenizer and the request queue; ``start()`` runs the decoding thread."""

    def __init__(self, model, tokenizer, *, eos_ids: tuple[int, ...], batch_size: int = 8, max_queue: int = 64,
                 batch_wait_s: float = 0.005, default_max_tokens: int = 512, bucket: int = DEFAULT_BUCKET,
                 segment: int = 16):
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, tuple(eos_ids)
        self.segment = segment
        self.batch_size, self.max_queue, self.batch_wait_s = batch_size, max_queue, batch_wait_s
        self.default_max_tokens, self.bucket = default_max_tokens, bucket
        self.context = model.config.max_position_embeddings
        self._queue: list[Job] = []
        self._cv = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches decoded (the tests and the benchmark read it)

    # ------------------------------------------------------------ requests
    def prepare(self, request: ChatRequest) -> Job:
        """The prompt of a request, checked against the context; ``RequestError`` on what cannot decode."""
        if request.n > self.batch_size:
            raise RequestError(f"n must be at most {self.batch_size} (the server's --batch-size)", param="n")
        tools = request.tools if request.tool_choice != "none" else []
        try:
            rec = normalize_record({"messages": request.messages, "tools": tools}, "request")
            prompt = render_chat(self.tokenizer, rec["messages"], rec["tools"])
        except DataError as e:
            raise RequestError(str(e).removeprefix("request: "), param="messages") from None
        prefix = ""
        if request.tool_choice in ("function", "required"):
            prefix = forced_prefix(self.tokenizer, rec["messages"], rec["tools"], request.forced_name)
        ids = self.tokenizer(prompt + prefix, add_special_tokens=False)["input_ids"]
        room = self.context - len(ids)
        max_tokens = request.max_tokens or min(self.default_max_tokens, room)
        if max_tokens > room or room < 1:
            raise RequestError(f"the prompt is {len(ids)} tokens; with max_tokens {max_tokens} that exceeds the "
                               f"model's context of {self.context} tokens (shorten the messages or lower max_tokens)",
                               param="messages", code="context_length_exceeded")
        seed = secrets.randbits(63) if request.seed is None else request.seed
        return Job(ids, prefix, request, max_tokens, sampling_of(request), seed)

    def submit(self, job: Job) -> Future:
        """Queue ``job``; its future resolves to ``n`` ``Completion``s. Refused (429) when the queue is full."""
        with self._cv:
            if not self._running:
                raise RequestError("the server is shutting down", status=503, type="server_error")
            if len(self._queue) >= self.max_queue:
                raise RequestError(f"the server's queue is full ({self.max_queue} requests waiting); retry later",
                                   status=429, type="rate_limit_error", code="queue_full")
            self._queue.append(job)
            self._cv.notify_all()
        return job.future

    # ------------------------------------------------------------ the decoding thread
    def start(self) -> Engine:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="ttpa-serve-decoder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._running = False
            self._cv.notify_all()
            left, self._queue = self._queue, []
        for job in left:
            job.future.set_exception(RequestError("the server is shutting down", status=503, type="server_error"))
        if self._thread is not None:
            self._thread.join()

    def _next_batch(self) -> list[Job]:
        """The oldest request and every queued one of its kind that fits, after a short gathering wait."""
        with self._cv:
            while self._running and not self._queue:
                self._cv.wait()
            deadline = time.monotonic() + self.batch_wait_s
            while self._running and sum(j.request.n for j in self._queue) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            if not self._running:
                return []
            kind, batch, rows = self._queue[0].kind, [], 0
            for job in self._queue:
                if job.kind == kind and rows + job.request.n <= self.batch_size:
                    batch.append(job)
                    rows += job.request.n
            self._queue = [j for j in self._queue if j not in batch]
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            try:
                self.decode(batch)
            except Exception as e:  # a bug or an XLA failure: every request of the batch gets a 500
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    def decode(self, jobs: list[Job]) -> None:
        """Decode jobs of one kind together (their ``n`` rows each, one batch), a segment at a time;
        each job's future resolves to its ``n`` ``Completion``s as soon as its rows have ended."""
        rows = [(j, c) for j in jobs for c in range(j.request.n)]
        budget = new_tokens_bucket(max(j.max_tokens for j in jobs))
        keys = jnp.stack([jax.random.fold_in(jax.random.key(j.seed % 2**63), c) for j, c in rows])  # [B]
        stop = jobs[0].request.stop
        stop_seqs = stop_token_sequences(self.tokenizer, stop)

        def decode_batch(batch):
            seg = SegmentedDecode(self.model, batch.ids, batch.mask, conv=batch.conv, lengths=batch.lengths,
                                  max_new_tokens=budget, sampling=jobs[0].sampling, key=keys[np.asarray(batch.rows)],
                                  eos_ids=self.eos_ids, stop_token_seqs=stop_seqs, bucket=self.bucket)
            live = list(dict.fromkeys(batch.rows))  # the batch's first rows, in order; the rest repeat them
            while not seg.finished:
                tokens, lengths, done = seg.advance(self.segment)  # [B, M], [B], [B]
                for r, i in enumerate(live):
                    job, c = rows[i]
                    self._progress(job, c, tokens[r, : lengths[r]].tolist(), bool(done[r]) or seg.finished, stop)
                if all(rows[i][0].ended[rows[i][1]] is not None for i in live):
                    break  # every row reached its own request's budget: the rest of the loop's is not needed
            return [None] * len(batch.rows)

        decode_in_batches([j.ids for j, _ in rows], self.batch_size, self.model.config.pad_id, decode_batch)
        self.batches += 1

    def _progress(self, job: Job, c: int, ids: list[int], ended: bool, stop: tuple[str, ...]) -> None:
        """Row ``c`` of ``job`` after a segment: its ``ids`` so far; ``ended`` when it will not grow."""
        if job.ended[c] is not None:
            return
        stopped = bool(stop) and truncate_at_stop(self.tokenizer, ids[: job.max_tokens], stop)[2]
        if ended or stopped or len(ids) >= job.max_tokens:
            job.ended[c] = finish(self.tokenizer, ids[: job.max_tokens], self.eos_ids, stop)
            if all(e is not None for e in job.ended):
                job.future.set_result(list(job.ended))
        elif job.notify is not None and job.streams_text:
            text = decode_text(self.tokenizer, ids)
            hold = max((len(s) for s in stop), default=1) - 1  # what may be the start of a stop string
            text = text[: len(text) - hold].rstrip("\ufffd")  # and a partly decoded character
            if len(text) > len(job.sent[c]) and text.startswith(job.sent[c]):
                job.notify(c, text[len(job.sent[c]):])
                job.sent[c] = text
