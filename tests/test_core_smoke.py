async def test_chat_roundtrip(openai_client, fake_openai):
    resp = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == fake_openai.reply_text
    assert fake_openai.requests[-1].headers["Authorization"] == "Bearer sk-test-upstream-key"


async def test_stream(openai_client, fake_openai):
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    chunks = 0
    async for chunk in stream:
        chunks += 1
        assert chunk.choices, "usage-only chunk must be dropped when the client did not ask"
        text += chunk.choices[0].delta.content or ""
    assert text == fake_openai.reply_text
