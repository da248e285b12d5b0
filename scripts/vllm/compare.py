"""Compare two sets of recordings (``record.py``) field by field: real vLLM against the simulator, say.

    .venv/bin/python scripts/vllm/record.py --base-url http://127.0.0.1:24020 --out /tmp/sim-recorded
    .venv/bin/python scripts/vllm/compare.py tests/inference_node/recorded/vllm-0.32 /tmp/sim-recorded

For each case both sets have, prints what differs: the status, the content type, keys one side has and
the other lacks (with their order), and values that differ. Volatile values (README.md beside the
recordings: ids, timestamps, ``system_fingerprint``, the model path) are compared by their shape only
(``cmpl-<hex16>``); values that depend on the model and its tokenizer (generated text, token ids and
counts, usage numbers) by type only, unless ``--same-tokenizer`` (both servers tokenize alike, as the
simulator does with the recorded model's ``tokenizer.json``: only generated text is then compared by
type). SSE streams are compared chunk by chunk within each choice (the order in which choices interleave
is volatile), and summarised as each choice's sequence of chunk shapes. The tokens generated before an
abort (``disconnect-*``, ``queue-gauges``) are volatile too. Exits 0 whatever it finds: it reports, it
does not judge (``tests/inference_node/sim/test_fidelity.py`` judges the simulator with it).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

VOLATILE = {"id", "created", "system_fingerprint", "root"}
GENERATED = frozenset({"text", "content", "events_read", "message_text"})
MODEL_DEPENDENT = GENERATED | {"tokens", "token_strs", "count", "prompt_tokens", "completion_tokens", "total_tokens",
                               "prompt"}  # fmt: skip
# Samples of the multi-step cases that count the tokens made before an abort: how many is a matter of timing.
VOLATILE_SAMPLES = ("vllm:generation_tokens_total", "vllm:request_generation_tokens_sum")
_HEX_RUN = re.compile(r"[0-9a-f]{8,}")


def shape_of(value: Any) -> str:
    """A volatile value's shape: its type, and for strings the text with each run of hex digits as <hexN>."""
    if isinstance(value, str):
        return _HEX_RUN.sub(lambda m: f"<hex{len(m.group())}>", value) if not value.startswith("/") else "<path>"
    return f"<{type(value).__name__}>"


def mask(value: Any, *, key: str | None, masked: frozenset[str]) -> Any:
    if key in VOLATILE:
        return shape_of(value)
    if key in masked and not isinstance(value, dict):
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {k: mask(v, key=k, masked=masked) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(item, key=key, masked=masked) for item in value]
    return value


def diff(left: Any, right: Any, path: str, out: list[str]) -> None:
    if isinstance(left, dict) and isinstance(right, dict):
        only_left = [k for k in left if k not in right]
        only_right = [k for k in right if k not in left]
        if only_left:
            out.append(f"{path or '.'}: only in A: {', '.join(only_left)}")
        if only_right:
            out.append(f"{path or '.'}: only in B: {', '.join(only_right)}")
        shared_left = [k for k in left if k in right]
        shared_right = [k for k in right if k in left]
        if shared_left != shared_right:
            out.append(f"{path or '.'}: key order A {shared_left} / B {shared_right}")
        for k in shared_left:
            diff(left[k], right[k], f"{path}.{k}", out)
    elif isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            out.append(f"{path}: {len(left)} items in A, {len(right)} in B")
        for index, (a, b) in enumerate(zip(left, right, strict=False)):
            diff(a, b, f"{path}[{index}]", out)
    elif left != right:
        out.append(f"{path}: A {json.dumps(left)} / B {json.dumps(right)}")


def sse_events(raw: str) -> list[Any]:
    events: list[Any] = []
    for event in raw.split("\n\n"):
        if not event:
            continue
        data = event.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def shape(event: Any) -> str:
    """One line per event: which keys it has, its choices' keys, and whether it carries usage."""
    if not isinstance(event, dict):
        return str(event)
    choices = event.get("choices", [])
    inner = ["+".join(c.get("delta", c).keys()) if isinstance(c, dict) else "?" for c in choices]
    return f"keys={','.join(event)} choices[{len(choices)}]={'|'.join(inner)}"


def run_length(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if out and out[-1].rsplit(" x", 1)[0] == item:
            head, _, count = out[-1].rpartition(" x")
            out[-1] = f"{head} x{int(count) + 1}"
        else:
            out.append(f"{item} x1")
    return out


def by_choice(events: list[Any]) -> dict[tuple[Any, int], Any]:
    """Each chunk keyed by (its choice index, how many chunks of that choice came before); [DONE] as ("done", 0)."""
    keyed: dict[tuple[Any, int], Any] = {}
    seen: dict[Any, int] = {}
    for event in events:
        choices = event.get("choices") if isinstance(event, dict) else None
        index = choices[0].get("index") if choices else ("usage" if isinstance(event, dict) else "done")
        keyed[(index, seen.get(index, 0))] = event
        seen[index] = seen.get(index, 0) + 1
    return keyed


def shapes_by_choice(events: list[Any]) -> dict[Any, list[str]]:
    """Each choice's chunk shapes in order (run-length coded); the usage chunk and [DONE] under their own keys."""
    shapes: dict[Any, list[str]] = {}
    for (index, _), event in by_choice(events).items():
        shapes.setdefault(index, []).append(shape(event))
    return {index: run_length(items) for index, items in shapes.items()}


def compare_families(a: list[dict[str, Any]], b: list[dict[str, Any]], out: list[str]) -> None:
    """Metric families by name: which only one side has, and type or label differences of shared ones."""
    a_by_name = {f["name"]: f for f in a if f["name"].startswith("vllm:")}
    b_by_name = {f["name"]: f for f in b if f["name"].startswith("vllm:")}
    only_a = [name for name in a_by_name if name not in b_by_name]
    only_b = [name for name in b_by_name if name not in a_by_name]
    if only_a:
        out.append(f"vllm families only in A: {', '.join(only_a)}")
    if only_b:
        out.append(f"vllm families only in B: {', '.join(only_b)}")
    for name in sorted(a_by_name.keys() & b_by_name.keys()):
        fa, fb = a_by_name[name], b_by_name[name]
        for key in ("type", "help", "label_names", "label_values", "sample_names", "buckets"):
            if fa.get(key) != fb.get(key):
                out.append(f"{name} {key}: A {json.dumps(fa.get(key))} / B {json.dumps(fb.get(key))}")


def compare_case(a: dict[str, Any], b: dict[str, Any], masked: frozenset[str] = MODEL_DEPENDENT) -> list[str]:
    out: list[str] = []
    if a.get("status") != b.get("status"):
        out.append(f"status: A {a.get('status')} / B {b.get('status')}")
    a_type = a.get("headers", {}).get("content-type")
    b_type = b.get("headers", {}).get("content-type")
    if a_type != b_type:
        out.append(f"content-type: A {a_type!r} / B {b_type!r}")
    if "body" in a or "body" in b:
        diff(mask(a.get("body"), key=None, masked=masked), mask(b.get("body"), key=None, masked=masked), "body", out)
    if ("text" in a or "text" in b) and "families" not in a and a.get("text") != b.get("text"):
        out.append(f"text: A {a.get('text')!r} / B {b.get('text')!r}")
    if "sse" in a and "sse" in b:
        a_events, b_events = sse_events(a["sse"]), sse_events(b["sse"])
        a_shapes, b_shapes = shapes_by_choice(a_events), shapes_by_choice(b_events)
        if a_shapes != b_shapes:
            out.append("sse event shapes differ:")
            out.extend(f"    A {index}: {s}" for index, items in a_shapes.items() for s in items)
            out.extend(f"    B {index}: {s}" for index, items in b_shapes.items() for s in items)
        found: list[str] = []
        # Chunks of different choices interleave differently: compare the n-th chunk of each choice.
        b_keyed = by_choice(b_events)
        for key, ea in by_choice(a_events).items():
            eb = b_keyed.get(key)
            if eb is not None:
                diff(mask(ea, key=None, masked=masked), mask(eb, key=None, masked=masked), "sse[*]", found)
        out.extend(dict.fromkeys(found))  # each difference once, in first-seen order
    elif "sse" in a or "sse" in b:
        out.append(f"only {'A' if 'sse' in a else 'B'} answered with an event stream")
    if "families" in a and "families" in b:
        compare_families(a["families"], b["families"], out)
    if "sizes" in a or "sizes" in b:
        diff(mask(a.get("sizes"), key=None, masked=masked), mask(b.get("sizes"), key=None, masked=masked), "sizes",
             out)  # fmt: skip
    for key in ("metrics_delta", "metrics_delta_after_close", "gauges_under_load", "gauges_while_streaming"):
        if key in a or key in b:
            av, bv = a.get(key, {}), b.get(key, {})
            for sample in sorted(av.keys() | bv.keys()):
                if sample.startswith(VOLATILE_SAMPLES) and sample in av and sample in bv:
                    continue
                if av.get(sample) != bv.get(sample):
                    out.append(f"{key} {sample}: A {av.get(sample)} / B {bv.get(sample)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="recordings A (e.g. real vLLM)")
    parser.add_argument("b", type=Path, help="recordings B (e.g. the simulator)")
    parser.add_argument("--same-tokenizer", action="store_true",
                        help="both tokenize alike: compare token ids and counts exactly, generated text by type")
    parser.add_argument("--only", nargs="*", help="only these case names")
    args = parser.parse_args()
    names = sorted({p.stem for p in args.a.glob("*.json")} | {p.stem for p in args.b.glob("*.json")})
    for name in names:
        if args.only and name not in args.only:
            continue
        a_path, b_path = args.a / f"{name}.json", args.b / f"{name}.json"
        if not a_path.exists() or not b_path.exists():
            print(f"## {name}: only in {'A' if a_path.exists() else 'B'}\n")
            continue
        masked = GENERATED if args.same_tokenizer else MODEL_DEPENDENT
        found = compare_case(json.loads(a_path.read_text()), json.loads(b_path.read_text()), masked)
        print(f"## {name}: {'same' if not found else f'{len(found)} differences'}")
        for line in found:
            print(f"  {line}")
        print()


if __name__ == "__main__":
    main()
