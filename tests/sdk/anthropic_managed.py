"""The official `anthropic` Python SDK's beta sessions client against Karta's Managed Agents
adapter (run by tests/adapters.rs). Environment: KARTA_URL, KARTA_KEY, KARTA_PROJECT.
Prints `ok` when every check passed.
"""

import os

import anthropic

base = f"{os.environ['KARTA_URL']}/v1/projects/{os.environ['KARTA_PROJECT']}/managed-agents"
client = anthropic.Anthropic(base_url=base, api_key=os.environ["KARTA_KEY"], max_retries=0)

session = client.beta.sessions.create(agent="default", environment_id="env_local")
assert session.id.startswith("sess_"), session
assert session.status == "idle", session


def until_idle(stream):
    """Events up to the next `session.status_idle`."""
    seen = []
    for ev in stream:
        seen.append(ev)
        if ev.type == "session.status_idle":
            return seen
    raise AssertionError(f"stream ended: {[e.type for e in seen]}")


with client.beta.sessions.events.stream(session.id) as stream:
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hello there"}]}]
    )
    first = until_idle(stream)
    kinds = [e.type for e in first]
    assert kinds[0] == "user.message" and kinds[1] == "session.status_running", kinds
    text = "".join(b.text for e in first if e.type == "agent.message" for b in e.content)
    assert text == "echo: hello there", text
    assert first[-1].stop_reason.type == "end_turn", first[-1]

    # A tool that needs a confirmation: the session goes idle, requiring action.
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "go [approve]"}]}]
    )
    asked = until_idle(stream)
    idle = asked[-1]
    assert idle.stop_reason.type == "requires_action", idle
    blocking = idle.stop_reason.event_ids[0]
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.tool_confirmation", "tool_use_id": blocking, "result": "allow"}]
    )
    rest = until_idle(stream)
    kinds = [e.type for e in rest]
    assert "user.tool_confirmation" in kinds and rest[-1].stop_reason.type == "end_turn", kinds

got = client.beta.sessions.retrieve(session.id)
assert got.status == "idle", got

try:
    anthropic.Anthropic(base_url=base, api_key="kt_live_wrongwrongwrongwrong", max_retries=0).beta.sessions.retrieve(
        session.id
    )
    raise AssertionError("a bad key was accepted")
except anthropic.AuthenticationError:
    pass

print("ok")
