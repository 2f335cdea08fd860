"""The OpenAI-compatible language-model routes: bodies, streaming, errors, keys and rate limits, disconnects."""

import json
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from bigmodel_course.chat import add_chat_tokens, reply
from bigmodel_course.generation import generate
from bigmodel_course.serving import ModelRegistry, create_app
from bigmodel_course.serving.llm import LLMService
from bigmodel_course.serving.openai_api import RateLimiter
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig

MESSAGES = [{"role": "system", "content": "你好"}, {"role": "user", "content": "今天天气很好吗"}]


@pytest.fixture(scope="module")
def chat_model():
    tok = CharTokenizer.train(["你好世界，今天天气很好。正面负面吗 \n"], min_freq=1)
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=48, d_model=32, n_heads=4, n_layers=2, dropout=0.0,
                         attn_dropout=0.0))
    model, chat_tok = add_chat_tokens(base, tok)
    with torch.no_grad():  # peaked distributions: greedy choices are far from ties
        model.transformer.embeddings.word.weight.mul_(10)
    return model.eval(), chat_tok


@contextmanager
def client_for(chat_model, tmp_path, **kw):
    model, tok = chat_model
    service = LLMService(model, tok, name="tiny", max_batch_size=2)
    app = create_app(ModelRegistry(tmp_path / "registry"), llm=service, **kw)
    with TestClient(app) as client:
        yield client, service


def sse_events(lines):
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_chat_completion_answers_like_the_greedy_reply(chat_model, tmp_path):
    model, tok = chat_model
    expected = reply(model, tok, MESSAGES, max_new_tokens=12)
    with client_for(chat_model, tmp_path) as (client, _):
        r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 12,
                                                      "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == ("stop" if expected.finished else "length")
    assert body["usage"]["completion_tokens"] == expected.n_tokens
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + expected.n_tokens


def test_streamed_chat_gives_the_same_text_in_chunks(chat_model, tmp_path):
    with client_for(chat_model, tmp_path) as (client, _):
        whole = client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 10,
                                                          "temperature": 0}).json()
        with client.stream("POST", "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES,
                                                                 "max_tokens": 10, "temperature": 0,
                                                                 "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            chunks = sse_events(list(r.iter_lines()))
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_completions_continue_text_and_honour_stop_strings(chat_model, tmp_path):
    model, tok = chat_model
    prompt = [tok.sep_id, *tok.encode("今天", add_special=False)]
    ids = generate(model, torch.tensor([prompt]), max_new_tokens=8, stop_ids=(tok.sep_id,))[0, len(prompt):].tolist()
    ids = ids[:ids.index(tok.sep_id)] if tok.sep_id in ids else ids
    full = tok.decode(ids)
    with client_for(chat_model, tmp_path) as (client, _):
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "今天", "max_tokens": 8, "temperature": 0})
        assert r.json()["choices"][0]["text"] == full and r.json()["object"] == "text_completion"
        if len(full) >= 3:
            stop = full[2]
            r = client.post("/v1/completions", json={"model": "tiny", "prompt": "今天", "max_tokens": 8,
                                                     "temperature": 0, "stop": [stop]})
            assert r.json()["choices"][0] == {"index": 0, "text": full[:full.index(stop)], "finish_reason": "stop",
                                              "logprobs": None}


def test_seeded_sampling_repeats(chat_model, tmp_path):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 10, "temperature": 1.0, "seed": 3}
    with client_for(chat_model, tmp_path) as (client, _):
        a, b = (client.post("/v1/chat/completions", json=body).json() for _ in range(2))
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


@pytest.mark.parametrize("body,status,param,code", [
    ({"model": "gpt-4o", "messages": MESSAGES}, 404, "model", "model_not_found"),
    ({"model": "tiny", "messages": MESSAGES, "temperature": 3}, 400, "temperature", None),
    ({"model": "tiny", "messages": MESSAGES, "n": 2}, 400, "n", None),
    ({"model": "tiny", "messages": []}, 400, "messages", None),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", None),
    ({"model": "tiny", "messages": MESSAGES, "logit_bias": {}}, 400, "logit_bias", None),
    ({"model": "tiny", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "你好" * 40}]}, 400, "messages",
     "context_length_exceeded"),
])
def test_bad_requests_get_openai_errors(chat_model, tmp_path, body, status, param, code):
    with client_for(chat_model, tmp_path) as (client, _):
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] is not None and error["param"].startswith(param) and error["code"] == code


def test_malformed_json_is_a_400_in_openai_shape(chat_model, tmp_path):
    with client_for(chat_model, tmp_path) as (client, _):
        r = client.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_api_keys_and_rate_limits(chat_model, tmp_path):
    body = {"model": "tiny", "prompt": "你好", "max_tokens": 2}
    with client_for(chat_model, tmp_path, llm_api_keys={"k-good": 2}) as (client, _):
        assert client.post("/v1/completions", json=body).status_code == 401
        wrong = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        ok = {"Authorization": "Bearer k-good"}
        assert [client.post("/v1/completions", json=body, headers=ok).status_code for _ in range(2)] == [200, 200]
        limited = client.post("/v1/completions", json=body, headers=ok)
        assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(limited.headers["retry-after"]) <= 30


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one a second, bursts of 60
    assert all(limiter.acquire("k") == 0.0 for _ in range(60))
    assert limiter.acquire("k") == pytest.approx(1.0)
    now[0] += 2.5
    assert limiter.acquire("k") == 0.0 and limiter.acquire("k") == 0.0 and limiter.acquire("k") > 0
    assert limiter.acquire("other") == 0.0


def test_metrics_report_generation(chat_model, tmp_path):
    with client_for(chat_model, tmp_path) as (client, _):
        client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 5})
        text = client.get("/metrics").text
    assert 'bigmodel_llm_time_to_first_token_seconds_count{model="tiny"} 1.0' in text
    assert 'bigmodel_llm_generated_tokens_total{model="tiny"}' in text
    assert 'bigmodel_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text


@contextmanager
def live_server(app):
    import uvicorn

    from bigmodel_course.serving.server import _bind

    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(chat_model, tmp_path):
    model, tok = chat_model
    service = LLMService(model, tok, name="tiny", max_batch_size=1)
    app = create_app(ModelRegistry(tmp_path / "registry"), llm=service)
    with live_server(app) as url:
        body = {"model": "tiny", "prompt": "你", "max_tokens": 40, "temperature": 1.0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "text_completion"
        deadline = time.monotonic() + 5
        while service.engine.running or service.engine.waiting:
            assert time.monotonic() < deadline, "the cancelled request still holds its slot"
            time.sleep(0.01)
        assert service.engine.free == [0]
        assert service.engine.finished[-1].finish_reason == "cancelled"
        # the slot serves the next request
        r = httpx.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_official_openai_client_talks_to_our_server(chat_model, tmp_path):
    openai = pytest.importorskip("openai")
    model, tok = chat_model
    expected = reply(model, tok, MESSAGES, max_new_tokens=10).text
    service = LLMService(model, tok, name="tiny", max_batch_size=2)
    app = create_app(ModelRegistry(tmp_path / "registry"), llm=service, llm_api_keys={"sk-test": 100})
    with live_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        done = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
        assert done.choices[0].message.content == expected and done.usage.prompt_tokens > 0
        stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == expected
        text = client.completions.create(model="tiny", prompt="今天", max_tokens=5, temperature=0)
        assert text.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=5)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).completions.create(
                model="tiny", prompt="你", max_tokens=2)


def test_a_failing_engine_iteration_answers_500_and_the_service_recovers(chat_model, tmp_path, monkeypatch):
    body = {"model": "tiny", "prompt": "你好", "max_tokens": 3}
    with client_for(chat_model, tmp_path) as (client, service):
        real_step = service.engine.step
        monkeypatch.setattr(service.engine, "step", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert json.loads(lines[-1][6:])["error"]["message"] == "generation failed: RuntimeError"
        assert not service.engine.running and not service.engine.waiting
        monkeypatch.setattr(service.engine, "step", real_step)
        assert client.post("/v1/completions", json=body).status_code == 200
