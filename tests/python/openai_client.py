"""The official `openai` Python client against `vcos up`, as an app uses it.

Usage: openai_client.py BASE_URL API_KEY. Prints OPENAI CLIENT OK, or fails with the reason.
"""

import sys

import openai
from openai import OpenAI

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)

ids = [m.id for m in client.models.list()]
assert ids == [EMBED, CHAT], ids

# The client asks for base64 by default and decodes it.
embeddings = client.embeddings.create(model=EMBED, input=["a cat sits on the mat", "stocks fell sharply"])
assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 384, embeddings
norm = sum(x * x for x in embeddings.data[0].embedding)
assert abs(norm - 1.0) < 1e-4, norm
assert embeddings.usage.prompt_tokens > 0, embeddings.usage

reply = client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0, max_tokens=16)
text = reply.choices[0].message.content
assert "Paris" in text, reply
assert reply.usage.completion_tokens > 0, reply.usage

stream = client.chat.completions.create(
    model=CHAT, messages=QUESTION, temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}
)
chunks = list(stream)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage.total_tokens == reply.usage.total_tokens, chunks[-1]

try:
    client.chat.completions.create(model=CHAT, messages=QUESTION, temperature=5, max_tokens=4)
    raise SystemExit("a temperature of 5 was accepted")
except openai.BadRequestError as e:
    assert "temperature" in str(e), e

try:
    client.embeddings.create(model="no-such-model", input="x")
    raise SystemExit("an unknown model was served")
except openai.NotFoundError:
    pass

print("OPENAI CLIENT OK")
