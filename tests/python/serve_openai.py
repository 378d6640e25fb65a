"""grlo serve driven by the official `openai` Python client (run by tests/serve_openai.rs).

    python serve_openai.py BASE_URL MODEL_DIR SCRATCH_DIR

Checks completions, chat completions, streaming, logprobs, n > 1, a stop sequence, a bad
request (400 with an OpenAI-shaped body, raised as openai.BadRequestError) and a reload
through /update_weights_from_disk that changes the answers. Prints one line per check.
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import urllib.request

import openai

base, model_dir, scratch = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
model = client.models.list().data[0].id
print("models:", model)

# Completions: token-id prompt, n = 2, logprobs with alternatives, a seed.
first = client.completions.create(
    model=model, prompt=[1, 2, 3, 4], max_tokens=8, n=2, seed=11, logprobs=2,
    extra_body={"ignore_eos": True},
)
assert len(first.choices) == 2, first
for choice in first.choices:
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8, lp
    assert all(len(top) == 2 for top in lp.top_logprobs), lp.top_logprobs
    assert choice.finish_reason == "length"
again = client.completions.create(
    model=model, prompt=[1, 2, 3, 4], max_tokens=8, n=2, seed=11,
    extra_body={"ignore_eos": True},
)
assert [c.text for c in again.choices] == [c.text for c in first.choices], "same seed, same text"
print("completions: n=2, logprobs=2, seeded: ok")

# Streaming gives the same text as the whole answer.
pieces = ["", ""]
for chunk in client.completions.create(
    model=model, prompt=[1, 2, 3, 4], max_tokens=8, n=2, seed=11, stream=True,
    extra_body={"ignore_eos": True},
):
    for choice in chunk.choices:
        pieces[choice.index] += choice.text
assert pieces == [c.text for c in first.choices], (pieces, first.choices)
print("completions stream: ok")

# A stop sequence taken from the greedy text: the answer ends before it.
greedy = client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=24, temperature=0,
    extra_body={"ignore_eos": True},
).choices[0].text
stop = greedy[6:9]
stopped = client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=24, temperature=0, stop=[stop],
    extra_body={"ignore_eos": True},
).choices[0]
assert stopped.text == greedy[: greedy.index(stop)], (stopped.text, greedy, stop)
assert stopped.finish_reason == "stop"
print("stop sequence: ok")

# Chat, whole and streamed, with logprobs.
chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=6, seed=5,
    n=2, logprobs=True, top_logprobs=2,
)
assert len(chat.choices) == 2
for choice in chat.choices:
    assert choice.message.role == "assistant"
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
streamed = ""
roles = set()
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=6, seed=5,
    n=2, stream=True, stream_options={"include_usage": True},
):
    for choice in chunk.choices:
        if choice.delta.role:
            roles.add(choice.delta.role)
        if choice.index == 0 and choice.delta.content:
            streamed += choice.delta.content
    if chunk.usage is not None:
        assert chunk.usage.completion_tokens == chat.usage.completion_tokens
assert streamed == chat.choices[0].message.content, (streamed, chat.choices[0].message.content)
assert roles == {"assistant"}
print("chat (whole, streamed, logprobs): ok")

# A bad request is a 400 the client raises as BadRequestError.
try:
    client.completions.create(model=model, prompt="x", max_tokens=10**6)
    raise AssertionError("max_tokens over the limit was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert "max_tokens" in e.body["message"], e.body
try:
    client.completions.create(model=model, prompt="x", extra_body={"not_a_field": 1})
    raise AssertionError("an unknown field was accepted")
except openai.BadRequestError as e:
    assert "not_a_field" in e.body["message"], e.body
print("bad requests: ok")

# A reload through SGLang's route changes the answers: the embeddings' signs flipped.
other = scratch / "other"
shutil.copytree(model_dir, other)
path = other / "model.safetensors"
data = bytearray(path.read_bytes())
(length,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8 : 8 + length])
tensor = header["model.embed_tokens.weight"]
width = {"BF16": 2, "F16": 2, "F32": 4}[tensor["dtype"]]
start, end = (8 + length + o for o in tensor["data_offsets"])
for i in range(start + width - 1, end, width):
    data[i] ^= 0x80
path.write_bytes(bytes(data))
ask = dict(model=model, prompt=[1, 2, 3, 4], max_tokens=8, temperature=0,
           extra_body={"ignore_eos": True})
before = client.completions.create(**ask).choices[0].text
request = urllib.request.Request(
    f"{base}/update_weights_from_disk",
    data=json.dumps({"model_path": str(other)}).encode(),
    headers={"content-type": "application/json"},
)
with urllib.request.urlopen(request, timeout=60) as response:
    reply = json.loads(response.read())
assert response.status == 200 and reply["success"], reply
after = client.completions.create(**ask).choices[0].text
assert after != before, (before, after)
print("reload: ok")
print("all checks passed")
