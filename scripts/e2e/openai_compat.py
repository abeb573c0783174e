"""Runs the official `openai` Python client against a Tessera server.

Usage: python openai_compat.py BASE_URL MODEL
Exits non-zero (with the failing check) on the first mismatch.
"""

import sys

import openai


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-e2e")

    models = client.models.list()
    assert [m.id for m in models.data] == [model], models

    completion = client.completions.create(
        model=model, prompt="Hello", max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert completion.choices[0].finish_reason == "length", completion
    assert completion.usage.completion_tokens == 8, completion.usage

    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        max_tokens=6,
        n=2,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert len(chat.choices) == 2, chat
    assert all(c.message.role == "assistant" for c in chat.choices), chat
    assert chat.usage.completion_tokens == 12, chat.usage

    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert finish == "length", finish
    assert usage is not None and usage.completion_tokens == 10, usage

    try:
        client.completions.create(model=model, prompt="x", top_p=1.5)
        raise AssertionError("top_p=1.5 was accepted")
    except openai.BadRequestError as err:
        assert err.status_code == 400 and "top_p" in str(err), err

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as err:
        assert err.status_code == 404, err

    print(f"openai {openai.__version__}: completions, chat (n=2), streaming chat with usage, errors: ok")


if __name__ == "__main__":
    main()
