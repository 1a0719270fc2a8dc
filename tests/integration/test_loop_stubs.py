"""The loop benchmark's stub services (benchmarks/loop/stubs.py), each in its own process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import httpx
import openai
import pytest

from benchmarks.loop.stubs import dependency_stub, openai_stub, question_set


def _get(url: str, timeout: float = 10) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_dependency_changes_profile_after_a_known_request_count() -> None:
    with dependency_stub(
        {"median_ms": 1, "sigma": 0, "error_rate": 0.0},
        seed=3,
        change_after=20,
        change_to={"error_rate": 1.0},
    ) as dep:
        statuses = [_get(f"{dep.url}/call?i={i}")[0] for i in range(30)]
        stats = dep.stats()
    assert statuses[:20] == [200] * 20
    assert statuses[20:] == [503] * 10
    assert stats["changed_at"] == 20
    assert stats["requests"] == 30 and stats["errors"] == 10 and stats["ok"] == 20


def test_dependency_control_endpoint_hangs_and_kv() -> None:
    with dependency_stub({"median_ms": 1, "sigma": 0}, seed=1) as dep:
        assert _get(f"{dep.url}/x")[0] == 200
        dep.control(profile={"hang_share": 1.0, "hang_s": 5})
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{dep.url}/x", timeout=0.3)
        dep.control(profile={"hang_share": 0.0})
        httpx.put(f"{dep.url}/kv/a", json={"v": 1}, timeout=5).raise_for_status()
        assert httpx.get(f"{dep.url}/kv/a", timeout=5).json()["value"] == {"v": 1}
        assert httpx.get(f"{dep.url}/kv/b", timeout=5).json()["value"] is None
        stats = dep.stats()
        assert stats["hangs"] == 1 and stats["changed_at"] == 2  # the second switch
        bad = httpx.post(f"{dep.url}/_stub/control", json={"profile": {"eror_rate": 1}})
        assert bad.status_code == 400 and "eror_rate" in bad.json()["error"]


def test_openai_stub_per_model_accuracy_cost_and_change() -> None:
    questions = question_set(20)
    models = {
        "big": {
            "median_ms": 1,
            "sigma": 0,
            "completion_tokens": 300,
            "accuracy": {"easy": 1.0, "hard": 1.0},
        },
        "small": {
            "median_ms": 1,
            "sigma": 0,
            "completion_tokens": 10,
            "accuracy": {"easy": 1.0, "hard": 0.0},
        },
    }
    with openai_stub(
        models, seed=5, change_after=40, change_to={"small": {"accuracy": {"easy": 0.0}}}
    ) as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="k", max_retries=0)

        def ask(model: str, prompt: str) -> tuple[str, int]:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}]
            )
            assert answer.usage is not None
            return answer.choices[0].message.content or "", answer.usage.completion_tokens

        big = [ask("big", q.prompt) for q in questions]
        small = [ask("small", q.prompt) for q in questions]
        assert [a for a, _ in big] == [q.answer for q in questions]
        assert {t for _, t in big} == {300} and {t for _, t in small} == {10}
        for (answer, _), q in zip(small, questions, strict=True):
            assert (answer == q.answer) == (q.difficulty == "easy")
        after = [ask("small", q.prompt)[0] for q in questions if q.difficulty == "easy"]
        assert all(
            a != q.answer
            for a, q in zip(after, [q for q in questions if q.difficulty == "easy"], strict=True)
        )
        with pytest.raises(openai.NotFoundError):
            ask("nope", "hi")
        assert ask("big", "hello there")[0] == "echo: hello there"
        as_json = client.chat.completions.create(
            model="big",
            messages=[{"role": "user", "content": questions[0].prompt}],
            response_format={"type": "json_object"},
        )
        assert json.loads(as_json.choices[0].message.content or "") == {
            "answer": questions[0].answer
        }
        stats = llm.stats()
    assert stats["changed_at"] == 40
    assert stats["counts"]["small"]["correct"] == 10
