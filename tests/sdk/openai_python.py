"""The official `openai` Python SDK against Karta's adapters (run by tests/adapters.rs).

Environment: KARTA_URL, KARTA_KEY, KARTA_PROJECT; optional KARTA_EXPECT (a substring the
answers must contain, for harnesses that do not echo) and KARTA_EXPECT_USAGE ("in,out": the
tokens the fake model reports per turn). Prints `ok` when every check passed.
"""

import os

import openai
from openai import OpenAI

base = f"{os.environ['KARTA_URL']}/v1/projects/{os.environ['KARTA_PROJECT']}"
key = os.environ["KARTA_KEY"]
expect = os.environ.get("KARTA_EXPECT")
expect_usage = tuple(int(n) for n in os.environ["KARTA_EXPECT_USAGE"].split(",")) if os.environ.get("KARTA_EXPECT_USAGE") else None
client = OpenAI(base_url=base, api_key=key, max_retries=0)


def check_text(text, sent):
    assert text, "empty answer"
    if expect is not None:
        assert expect in text, f"{expect!r} not in {text!r}"
    else:
        assert sent in text, f"{sent!r} not echoed in {text!r}"


# Chat, unary.
r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "ping one"}])
assert r.object == "chat.completion", r
assert r.choices[0].finish_reason == "stop"
check_text(r.choices[0].message.content, "ping one")
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
assert r.usage.prompt_tokens > 0
if expect_usage:
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == expect_usage, r.usage

# Chat, streaming with usage: the usage chunk equals the unary accounting of the same turn.
parts, usage, ids = [], None, set()
for ch in client.chat.completions.create(
    model="default",
    stream=True,
    messages=[{"role": "user", "content": "ping two"}],
    stream_options={"include_usage": True},
):
    ids.add(ch.id)
    if ch.choices:
        parts.append(ch.choices[0].delta.content or "")
    if ch.usage:
        usage = ch.usage
check_text("".join(parts), "ping two")
assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
assert len(ids) == 1, ids
if expect_usage:
    assert (usage.prompt_tokens, usage.completion_tokens) == expect_usage, usage

# The stream helper accumulates by choice index.
with client.chat.completions.stream(model="default", messages=[{"role": "user", "content": "ping three"}]) as s:
    for _ in s:
        pass
    final = s.get_final_completion()
check_text(final.choices[0].message.content, "ping three")

# Responses, unary.
first = client.responses.create(model="default", input="remember maple")
assert first.status == "completed", first
check_text(first.output_text, "remember maple")
assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

# Responses, streamed through the helper: order, contiguous numbers, final equals unary shape.
with client.responses.stream(model="default", input="which tree", previous_response_id=first.id) as stream:
    events = list(stream)
    final = stream.get_final_response()
kinds = [ev.type for ev in events]
assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
assert [ev.sequence_number for ev in events] == list(range(len(events))), kinds
assert final.previous_response_id == first.id
check_text(final.output_text, "which tree")
fetched = client.responses.retrieve(final.id)
assert fetched.output_text == final.output_text and fetched.id == final.id
# The stream helper adds its own `parsed` (structured output) to each text part.
a, b = fetched.model_dump(), final.model_dump()
for part in b["output"][0]["content"]:
    part.pop("parsed", None)
assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}

# Gates, as SDK exceptions.
try:
    OpenAI(base_url=base, api_key="kt_live_wrongwrongwrongwrong", max_retries=0).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a bad key was accepted")
except openai.AuthenticationError:
    pass
if os.environ.get("KARTA_OTHER_PROJECT", "theirs"):
    other = f"{os.environ['KARTA_URL']}/v1/projects/{os.environ.get('KARTA_OTHER_PROJECT', 'theirs')}"
    try:
        OpenAI(base_url=other, api_key=key, max_retries=0).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}]
        )
        raise AssertionError("another tenant's project answered")
    except openai.NotFoundError:
        pass
try:
    client.chat.completions.create(model="default", messages=[{"role": "tool", "content": "1", "tool_call_id": "c"}])
    raise AssertionError("a tool message was accepted")
except openai.UnprocessableEntityError:
    pass

print("ok")
