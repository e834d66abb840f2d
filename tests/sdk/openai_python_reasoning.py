"""The official `openai` Python SDK reading a harness's reasoning through the Responses adapter
(run by tests/claude_code.rs against a fake model that thinks).

Environment: KARTA_URL, KARTA_KEY, KARTA_PROJECT, KARTA_EXPECT (the answer),
KARTA_EXPECT_REASONING (the reasoning). Prints `ok` when every check passed.
"""

import os

from openai import OpenAI

base = f"{os.environ['KARTA_URL']}/v1/projects/{os.environ['KARTA_PROJECT']}"
client = OpenAI(base_url=base, api_key=os.environ["KARTA_KEY"], max_retries=0)
answer, thought = os.environ["KARTA_EXPECT"], os.environ["KARTA_EXPECT_REASONING"]

# Streamed through the helper: a reasoning item ahead of the message, its summary streamed.
with client.responses.stream(model="default", input="think first", reasoning={"summary": "auto"}) as stream:
    events = list(stream)
    final = stream.get_final_response()
kinds = [ev.type for ev in events]
assert [ev.sequence_number for ev in events] == list(range(len(events))), kinds
assert "response.reasoning_summary_text.delta" in kinds, kinds
assert kinds.index("response.reasoning_summary_text.done") < kinds.index("response.output_text.delta"), kinds
deltas = "".join(ev.delta for ev in events if ev.type == "response.reasoning_summary_text.delta")
assert deltas == thought, deltas
assert [item.type for item in final.output] == ["reasoning", "message"], final.output
assert final.output[0].summary[0].text == thought, final.output[0]
assert final.output_text == answer, final.output_text

# Unary: the same shape.
r = client.responses.create(model="default", input="think again", reasoning={"effort": "low"})
assert [item.type for item in r.output] == ["reasoning", "message"], r.output
assert r.output[0].summary[0].text == thought and r.output_text == answer, r

# Without `reasoning`, no reasoning item.
r = client.responses.create(model="default", input="just answer")
assert [item.type for item in r.output] == ["message"], r.output

print("ok")
