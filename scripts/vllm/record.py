"""Record what a vLLM OpenAI server answers to the requests the node agent and the service rely on.

Against a running server (``scripts/vllm/serve.sh``, or the simulator for comparison)::

    .venv/bin/python scripts/vllm/record.py --base-url http://127.0.0.1:24010 \\
        --out tests/inference_node/recorded/vllm-0.32

Each case becomes ``OUT/<name>.json``: ``{"name", "description", "request", "status", "headers", ...}``
with the answer as ``body`` (parsed JSON), ``text`` (any other body) or ``sse`` (the raw event stream,
byte for byte). Cases that need several requests (metrics around a disconnect, queue gauges under load)
keep each step's answer. Sampling is greedy (``temperature: 0``) or seeded, so a rerun against the same
build and model gives the same text; ids and timestamps change (see the README next to the recordings).
Run it against a freshly started server: ``metrics-idle`` expects counters still at zero.
Standard library only, but for prometheus_client's exposition parser.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

MODEL = "sluice-tiny-llama"
CHAT_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello, please."},
]
COMPLETION_PROMPT = "The quick brown fox"
# With --max-model-len 2048 (serve.sh): a prompt that alone is over the context, and one that fits
# only if the output is shortened. "hello" and " hello" are one token each in both the tiny model's
# BPE and the simulator's word tokenizer, so the counts match on both (checked through /tokenize).
LONG_PROMPT_WORDS = 2100
NEAR_FULL_PROMPT_WORDS = 2000
QUEUE_STREAMS = 6  # with --max-num-seqs 4: 4 running, 2 waiting
JSON_HEADERS = {"Content-Type": "application/json"}
RESPONSE_HEADERS = ("content-type", "x-request-id")


def words(count: int) -> str:
    return " ".join(["hello"] * count)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)

    def entry(self) -> dict[str, Any]:
        """The recorded form: status, the headers that matter, and the body as JSON, SSE or text."""
        content_type = self.headers.get("content-type", "")
        out: dict[str, Any] = {"status": self.status, "headers": self.headers}
        if content_type.startswith("application/json"):
            out["body"] = self.json()
        elif content_type.startswith("text/event-stream"):
            out["sse"] = self.raw.decode()
        else:
            out["text"] = self.raw.decode()
        return out


@dataclass
class Server:
    base_url: str
    timeout: float = 120.0
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        connection = self.connect()
        try:
            payload = None if body is None else json.dumps(body).encode()
            sent = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
            response = connection.getresponse()
            raw = response.read()
            kept = {name: response.headers[name] for name in RESPONSE_HEADERS if response.headers[name] is not None}
            return Reply(response.status, kept, raw)
        finally:
            connection.close()

    def open_stream(self, path: str, body: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = self.connect()
        connection.request("POST", path, body=json.dumps(body).encode(), headers=JSON_HEADERS)
        return connection, connection.getresponse()

    def metrics(self) -> str:
        return self.call("GET", "/metrics").raw.decode()


def hang_up(connection: http.client.HTTPConnection) -> None:
    """Close the TCP connection under a request, as a client that goes away does."""
    if connection.sock is not None:
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)
        connection.sock.close()


def metric_samples(exposition: str) -> dict[str, float]:
    """Every sample of an exposition as ``name{label="value",...}`` -> value (labels sorted)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def metric_families(exposition: str) -> list[dict[str, Any]]:
    """The shape of an exposition: each family's name, type, help, label names and values, histogram buckets."""
    families = []
    for family in text_string_to_metric_families(exposition):
        label_names = sorted({key for sample in family.samples for key in sample.labels})
        families.append({
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "sample_names": sorted({sample.name for sample in family.samples}),
            "label_names": label_names,
            "label_values": {key: sorted({s.labels[key] for s in family.samples if key in s.labels})
                             for key in label_names if key not in {"le", "quantile"}},
            "buckets": sorted({s.labels["le"] for s in family.samples if "le" in s.labels}, key=float),
        })  # fmt: skip
    return families


def vllm_samples(exposition: str) -> dict[str, float]:
    return {key: value for key, value in metric_samples(exposition).items() if key.startswith("vllm:")}


def changed(before: dict[str, float], after: dict[str, float], prefixes: tuple[str, ...]) -> dict[str, float]:
    """The samples under ``prefixes`` whose value moved, as after - before."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in sorted(after)
        if key.startswith(prefixes) and after[key] != before.get(key, 0.0)
    }


def poll(check: Callable[[], bool], deadline_seconds: float, what: str) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {deadline_seconds} s waiting for {what}")


def gauges(server: Server) -> tuple[float, float]:
    samples = metric_samples(server.metrics())
    running = sum(v for k, v in samples.items() if k.startswith("vllm:num_requests_running{"))
    waiting = sum(v for k, v in samples.items() if k.startswith("vllm:num_requests_waiting{"))
    return running, waiting


# ---- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    method: str
    path: str
    body: Any = None
    headers: dict[str, str] | None = None


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": CHAT_MESSAGES, "temperature": 0, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": COMPLETION_PROMPT, "temperature": 0, **fields}


INCLUDE_USAGE = {"include_usage": True}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}  # what the node agent sends
SAMPLED = {"temperature": 1.0, "seed": 7}  # n > 1 needs sampling for distinct choices; seeded to repeat
NATURAL_STOP = {"logit_bias": {"2": 100}, "min_tokens": 3}  # </s> (id 2) after 3 tokens: a natural stop

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

SIMPLE_CASES = [
    Case("models", "GET /v1/models: the model card the agent reads ids and max_model_len from", "GET", "/v1/models"),
    Case("health", "GET /health of a ready server", "GET", "/health"),
    Case("version", "GET /version", "GET", "/version"),
    Case("tokenize-completion", "POST /tokenize, completion form (BOS added by default)", "POST", "/tokenize",
         {"model": MODEL, "prompt": COMPLETION_PROMPT}),
    Case("tokenize-completion-token-strs", "POST /tokenize with return_token_strs", "POST", "/tokenize",
         {"model": MODEL, "prompt": COMPLETION_PROMPT, "return_token_strs": True}),
    Case("tokenize-completion-no-special", "POST /tokenize with add_special_tokens false", "POST", "/tokenize",
         {"model": MODEL, "prompt": COMPLETION_PROMPT, "add_special_tokens": False}),
    Case("tokenize-chat", "POST /tokenize, chat form (the chat template applied)", "POST", "/tokenize",
         {"model": MODEL, "messages": CHAT_MESSAGES, "return_token_strs": True}),
    Case("tokenize-chat-no-generation-prompt", "POST /tokenize, chat form, add_generation_prompt false", "POST",
         "/tokenize", {"model": MODEL, "messages": CHAT_MESSAGES, "add_generation_prompt": False}),
    Case("tokenize-unknown-model", "POST /tokenize naming a model the server does not serve", "POST", "/tokenize",
         {"model": "no-such-model", "prompt": COMPLETION_PROMPT}),
    # chat completions
    Case("chat", "chat, non-stream, max_tokens 8", "POST", CHAT, chat(max_tokens=8)),
    Case("chat-max-completion-tokens", "chat, non-stream, max_completion_tokens 8", "POST", CHAT,
         chat(max_completion_tokens=8)),
    Case("chat-request-id", "chat with an X-Request-Id header (the agent sends the job id)", "POST", CHAT,
         chat(max_tokens=4), {"X-Request-Id": "00112233445566778899aabbccddeeff"}),
    Case("chat-natural-stop", "chat ending on EOS (logit_bias on </s>, min_tokens 3)", "POST", CHAT,
         chat(max_tokens=8, **NATURAL_STOP)),
    Case("chat-n2", "chat, non-stream, n 2 (seeded sampling)", "POST", CHAT, chat(max_tokens=6, n=2, **SAMPLED)),
    Case("chat-stream", "chat, stream, no stream_options", "POST", CHAT, chat(max_tokens=8, stream=True)),
    Case("chat-stream-include-usage", "chat, stream, include_usage", "POST", CHAT,
         chat(max_tokens=8, stream=True, stream_options=INCLUDE_USAGE)),
    Case("chat-stream-continuous-usage", "chat, stream, include_usage + continuous_usage_stats", "POST", CHAT,
         chat(max_tokens=8, stream=True, stream_options=CONTINUOUS)),
    Case("chat-stream-natural-stop", "chat, stream with continuous usage, ending on EOS", "POST", CHAT,
         chat(max_tokens=8, stream=True, stream_options=CONTINUOUS, **NATURAL_STOP)),
    Case("chat-stream-n2-continuous-usage", "chat, stream, n 2, continuous usage", "POST", CHAT,
         chat(max_tokens=6, n=2, stream=True, stream_options=CONTINUOUS, **SAMPLED)),
    Case("chat-default-max-tokens", "chat without max_tokens: runs to the end of the context", "POST", CHAT,
         chat()),
    # completions
    Case("completion", "completion, non-stream, max_tokens 8", "POST", COMPLETIONS, completion(max_tokens=8)),
    Case("completion-default-max-tokens", "completion without max_tokens (16)", "POST", COMPLETIONS, completion()),
    Case("completion-token-ids", "completion of a token-id prompt", "POST", COMPLETIONS,
         completion(prompt=[1, 300, 301, 302], max_tokens=4)),
    Case("completion-natural-stop", "completion ending on EOS (logit_bias on </s>, min_tokens 3)", "POST",
         COMPLETIONS, completion(max_tokens=8, **NATURAL_STOP)),
    Case("completion-n2", "completion, non-stream, n 2 (seeded sampling)", "POST", COMPLETIONS,
         completion(max_tokens=6, n=2, **SAMPLED)),
    Case("completion-multi-prompt", "completion of two prompts, non-stream", "POST", COMPLETIONS,
         completion(prompt=[COMPLETION_PROMPT, "Hello world"], max_tokens=5)),
    Case("completion-stream", "completion, stream, no stream_options", "POST", COMPLETIONS,
         completion(max_tokens=8, stream=True)),
    Case("completion-stream-include-usage", "completion, stream, include_usage", "POST", COMPLETIONS,
         completion(max_tokens=8, stream=True, stream_options=INCLUDE_USAGE)),
    Case("completion-stream-continuous-usage", "completion, stream, include_usage + continuous_usage_stats", "POST",
         COMPLETIONS, completion(max_tokens=8, stream=True, stream_options=CONTINUOUS)),
    Case("completion-stream-natural-stop", "completion, stream with continuous usage, ending on EOS", "POST",
         COMPLETIONS, completion(max_tokens=8, stream=True, stream_options=CONTINUOUS, **NATURAL_STOP)),
    Case("completion-stream-n2-continuous-usage", "completion, stream, n 2, continuous usage", "POST", COMPLETIONS,
         completion(max_tokens=6, n=2, stream=True, stream_options=CONTINUOUS, **SAMPLED)),
    Case("completion-stream-multi-prompt-n2-continuous-usage",
         "completion, stream, two prompts x n 2, continuous usage (choice index = prompt * n + sample)", "POST",
         COMPLETIONS, completion(prompt=[COMPLETION_PROMPT, "Hello world"], max_tokens=4, n=2, stream=True,
                                 stream_options=CONTINUOUS, **SAMPLED)),
    # length limits (the served context is 2048 tokens)
    Case("error-chat-max-tokens-over-context", "chat with max_tokens 4096 > max_model_len", "POST", CHAT,
         chat(max_tokens=4096)),
    Case("error-completion-max-tokens-over-context", "completion with max_tokens 4096 > max_model_len", "POST",
         COMPLETIONS, completion(max_tokens=4096)),
    Case("error-chat-prompt-too-long", f"chat whose prompt alone is over the context ({LONG_PROMPT_WORDS} words)",
         "POST", CHAT, chat(messages=[{"role": "user", "content": words(LONG_PROMPT_WORDS)}], max_tokens=8)),
    Case("error-completion-prompt-too-long", f"completion of a {LONG_PROMPT_WORDS}-word prompt, over the context",
         "POST", COMPLETIONS, completion(prompt=words(LONG_PROMPT_WORDS), max_tokens=8)),
    Case("error-completion-prompt-too-long-default-max-tokens",
         f"completion of a {LONG_PROMPT_WORDS}-word prompt, max_tokens unset", "POST", COMPLETIONS,
         completion(prompt=words(LONG_PROMPT_WORDS))),
    Case("chat-prompt-plus-max-tokens-over-context",
         f"chat: {NEAR_FULL_PROMPT_WORDS}-word prompt + max_tokens 100 > context, each alone within it", "POST",
         CHAT, chat(messages=[{"role": "user", "content": words(NEAR_FULL_PROMPT_WORDS)}], max_tokens=100)),
    Case("completion-prompt-plus-max-tokens-over-context",
         f"completion: {NEAR_FULL_PROMPT_WORDS}-word prompt + max_tokens 100 > context, each alone within it",
         "POST", COMPLETIONS, completion(prompt=words(NEAR_FULL_PROMPT_WORDS), max_tokens=100)),
    Case("completion-stream-prompt-plus-max-tokens-over-context",
         "the same, streamed with continuous usage", "POST", COMPLETIONS,
         completion(prompt=words(NEAR_FULL_PROMPT_WORDS), max_tokens=100, stream=True, stream_options=CONTINUOUS)),
    # other refusals
    Case("error-chat-unknown-model", "chat naming a model the server does not serve", "POST", CHAT,
         chat(model="no-such-model", max_tokens=4)),
    Case("error-completion-unknown-model", "completion naming a model the server does not serve", "POST",
         COMPLETIONS, completion(model="no-such-model", max_tokens=4)),
    Case("error-chat-stream-options-without-stream", "chat with stream_options but no stream", "POST", CHAT,
         chat(max_tokens=4, stream_options=INCLUDE_USAGE)),
    Case("error-completion-stream-options-without-stream", "completion with stream_options but no stream", "POST",
         COMPLETIONS, completion(max_tokens=4, stream_options=INCLUDE_USAGE)),
    Case("error-chat-max-tokens-zero", "chat with max_tokens 0", "POST", CHAT, chat(max_tokens=0)),
    Case("error-completion-max-tokens-negative", "completion with max_tokens -1", "POST", COMPLETIONS,
         completion(max_tokens=-1)),
    Case("error-chat-n-zero", "chat with n 0", "POST", CHAT, chat(max_tokens=4, n=0)),
    Case("error-chat-missing-messages", "chat without messages (a schema error)", "POST", CHAT,
         {"model": MODEL, "max_tokens": 4}),
    Case("error-chat-max-tokens-string", "chat with max_tokens \"many\" (a schema error)", "POST", CHAT,
         chat(max_tokens="many")),
    Case("error-completion-empty-prompt", "completion with an empty prompt", "POST", COMPLETIONS,
         completion(prompt="", max_tokens=4)),
    Case("error-completion-missing-prompt", "completion without a prompt", "POST", COMPLETIONS,
         {"model": MODEL, "max_tokens": 4}),
    Case("error-not-json", "chat with a body that is not JSON", "POST", CHAT),
    Case("error-unknown-route", "GET of a path the server does not have", "GET", "/v1/no-such-route"),
    Case("error-wrong-method", "GET of a POST-only route", "GET", CHAT),
]  # fmt: skip


def record_simple(server: Server, case: Case) -> dict[str, Any]:
    if case.name == "error-not-json":
        connection = server.connect()
        try:
            connection.request("POST", case.path, body=b"{not json", headers=JSON_HEADERS)
            response = connection.getresponse()
            kept = {name: response.headers[name] for name in RESPONSE_HEADERS if response.headers[name] is not None}
            reply = Reply(response.status, kept, response.read())
        finally:
            connection.close()
        request = {"method": case.method, "path": case.path, "raw_body": "{not json"}
    else:
        reply = server.call(case.method, case.path, case.body, case.headers)
        request = {"method": case.method, "path": case.path}
        if case.headers:
            request["headers"] = case.headers
        if case.body is not None:
            request["body"] = case.body
    return {"name": case.name, "description": case.description, "request": request, **reply.entry()}


def record_metrics_idle(server: Server) -> dict[str, Any]:
    exposition = server.metrics()
    return {
        "name": "metrics-idle",
        "description": "GET /metrics of a fresh, idle server: every family's name, type, labels; the raw text",
        "request": {"method": "GET", "path": "/metrics"},
        "status": 200,
        "families": metric_families(exposition),
        "vllm_samples": vllm_samples(exposition),
        "text": exposition,
    }


def record_metrics_after(server: Server) -> dict[str, Any]:
    reply = server.call("GET", "/metrics")
    exposition = reply.raw.decode()
    return {
        "name": "metrics-after-cases",
        "description": "GET /metrics after the other cases: families and labels once histograms have observations",
        "request": {"method": "GET", "path": "/metrics"},
        "status": reply.status,
        "headers": reply.headers,
        "families": metric_families(exposition),
        "vllm_samples": vllm_samples(exposition),
        "text": exposition,
    }


WATCHED = ("vllm:request_success_total", "vllm:num_requests_running", "vllm:num_requests_waiting",
           "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_generation_tokens_count",
           "vllm:request_generation_tokens_sum", "vllm:e2e_request_latency_seconds_count",
           "vllm:num_preemptions_total")  # fmt: skip


def record_stream_disconnect(server: Server) -> dict[str, Any]:
    """Read three events of a long stream, close the socket, then watch /metrics until the request is gone."""
    body = completion(max_tokens=1000, stream=True, stream_options=CONTINUOUS)
    before = vllm_samples(server.metrics())
    connection, response = server.open_stream(COMPLETIONS, body)
    events = []
    while len(events) < 3:
        line = response.readline()
        if line.startswith(b"data: "):
            events.append(line.decode())
    during = vllm_samples(server.metrics())
    hang_up(connection)
    response.close()
    connection.close()
    closed = time.monotonic()
    poll(lambda: gauges(server) == (0, 0), 30, "the aborted request to leave the engine")
    gone_after = time.monotonic() - closed
    after = vllm_samples(server.metrics())
    return {
        "name": "disconnect-mid-stream",
        "description": "a stream (max_tokens 1000) closed by the client after 3 events; /metrics before and after",
        "request": {"method": "POST", "path": COMPLETIONS, "body": body},
        "status": response.status,
        "headers": {"content-type": response.headers["content-type"]},
        "events_read": events,
        "gauges_while_streaming": {k: v for k, v in during.items() if k.startswith(WATCHED[1:3])},
        "seconds_until_gauges_zero": round(gone_after, 2),
        "metrics_delta": changed(before, after, WATCHED),
    }


def record_nonstream_disconnect(server: Server) -> dict[str, Any]:
    """Send a long non-stream request, close the socket while it runs, then compare /metrics."""
    body = completion(max_tokens=1000)
    before = vllm_samples(server.metrics())
    connection = server.connect()
    connection.request("POST", COMPLETIONS, body=json.dumps(body).encode(), headers=JSON_HEADERS)
    poll(lambda: gauges(server)[0] >= 1, 30, "the request to start running")
    hang_up(connection)
    connection.close()
    closed = time.monotonic()
    poll(lambda: gauges(server) == (0, 0), 30, "the aborted request to leave the engine")
    gone_after = time.monotonic() - closed
    after = vllm_samples(server.metrics())
    return {
        "name": "disconnect-non-stream",
        "description": "a non-stream completion (max_tokens 1000) whose client closed the socket while it ran",
        "request": {"method": "POST", "path": COMPLETIONS, "body": body},
        "seconds_until_gauges_zero": round(gone_after, 2),
        "metrics_delta": changed(before, after, WATCHED),
    }


def record_queue_gauges(server: Server) -> dict[str, Any]:
    """More streams than --max-num-seqs at once: the running and waiting gauges while they are held."""
    body = completion(max_tokens=1000, stream=True)
    before = vllm_samples(server.metrics())
    streams = [server.open_stream(COMPLETIONS, body) for _ in range(QUEUE_STREAMS)]

    def drain(response: http.client.HTTPResponse) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError, http.client.HTTPException):
            while response.readline():
                pass

    readers = [threading.Thread(target=drain, args=(response,), daemon=True) for _, response in streams]
    for reader in readers:
        reader.start()
    observed: dict[str, float] = {}

    def settled() -> bool:
        nonlocal observed
        observed = {k: v for k, v in vllm_samples(server.metrics()).items() if k.startswith(WATCHED[1:3])}
        running = sum(v for k, v in observed.items() if k.startswith("vllm:num_requests_running{"))
        waiting = sum(v for k, v in observed.items() if k.startswith("vllm:num_requests_waiting{"))
        return running + waiting == QUEUE_STREAMS and waiting > 0

    poll(settled, 30, f"{QUEUE_STREAMS} requests to be running or waiting")
    for connection, _ in streams:
        hang_up(connection)
    for reader in readers:
        reader.join(timeout=10)
    for connection, response in streams:
        response.close()
        connection.close()
    poll(lambda: gauges(server) == (0, 0), 60, "the aborted requests to leave the engine")
    after = vllm_samples(server.metrics())
    return {
        "name": "queue-gauges",
        "description": f"{QUEUE_STREAMS} streams at once against --max-num-seqs 4; then all closed by the client",
        "request": {"method": "POST", "path": COMPLETIONS, "body": body, "concurrent": QUEUE_STREAMS},
        "gauges_under_load": observed,
        "metrics_delta_after_close": changed(before, after, WATCHED),
    }


def record_prompt_sizes(server: Server) -> dict[str, Any]:
    """The token counts of the long prompts, so the length cases can be read without a tokenizer."""
    sizes = {}
    for count in (LONG_PROMPT_WORDS, NEAR_FULL_PROMPT_WORDS):
        completion_form = server.call("POST", "/tokenize", {"model": MODEL, "prompt": words(count)}).json()
        chat_form = server.call(
            "POST", "/tokenize", {"model": MODEL, "messages": [{"role": "user", "content": words(count)}]}
        ).json()
        sizes[f"{count} words"] = {"completion": completion_form["count"], "chat": chat_form["count"]}
    return {
        "name": "prompt-sizes",
        "description": "token counts (POST /tokenize) of the long prompts used by the length cases",
        "sizes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:24010")
    parser.add_argument("--out", type=Path, default=Path("tests/inference_node/recorded/vllm-0.32"))
    parser.add_argument("--only", nargs="*", help="record only these case names")
    args = parser.parse_args()
    server = Server(args.base_url.rstrip("/"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def write(entry: dict[str, Any]) -> None:
        if args.only and entry["name"] not in args.only:
            return
        path = out / f"{entry['name']}.json"
        path.write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n")
        status = entry.get("status", "")
        print(f"  {entry['name']:58} {status}")

    def wanted(name: str) -> bool:
        return not args.only or name in args.only

    if wanted("metrics-idle"):
        write(record_metrics_idle(server))
    write(record_prompt_sizes(server))
    for case in SIMPLE_CASES:
        if wanted(case.name):
            write(record_simple(server, case))
    for name, recorder in (("disconnect-mid-stream", record_stream_disconnect),
                           ("disconnect-non-stream", record_nonstream_disconnect),
                           ("queue-gauges", record_queue_gauges),
                           ("metrics-after-cases", record_metrics_after)):  # fmt: skip
        if wanted(name):
            write(recorder(server))


if __name__ == "__main__":
    main()
