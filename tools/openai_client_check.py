#!/usr/bin/env python3
"""Checks echovlm-server with the official OpenAI Python client: a non-streaming and a
streaming chat completion with an image sent as a base64 data: URI. Prints OK on success."""

import argparse
import base64
import sys

from openai import OpenAI


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--image", required=True)
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    with open(args.image, "rb") as f:
        uri = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the image."},
                {"type": "image_url", "image_url": {"url": uri}},
            ],
        }
    ]
    model = client.models.list().data[0].id

    done = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, seed=1
    )
    text = done.choices[0].message.content
    assert done.object == "chat.completion", done
    assert done.choices[0].finish_reason in ("stop", "length"), done
    assert done.usage.completion_tokens >= 1 and done.usage.prompt_tokens > 0, done.usage
    print("non-streaming:", repr(text), done.usage)

    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    streamed = "".join(pieces)
    print("streaming:", repr(streamed), finish, usage)
    assert streamed == text, (streamed, text)
    assert finish == done.choices[0].finish_reason
    assert usage is not None and usage.total_tokens == done.usage.total_tokens

    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=4)
    except Exception as e:  # openai.BadRequestError
        assert getattr(e, "status_code", None) == 400, e
    else:
        raise AssertionError("an empty conversation was accepted")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
